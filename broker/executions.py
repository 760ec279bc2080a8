"""Executions: starting tasks and batches (manual, API and triggers share one path),
reading live state, cancelling.

A start writes the Execution (status `queued`) to KV `bd_execs`, enqueues a RunCommand
with snapshots of the task definitions on `bd.{org}.run.{pool}` (BD_RUNS, de-duplicated
by `Nats-Msg-Id: {org}.{execution_id}.{attempt}`) and publishes the state event. A
trigger's execution id is derived from its org and trigger id, so a redelivered trigger
finds the execution it already made instead of making a second one, and no org can take
another's id by publishing a trigger with that org's (predictable) tick id; a start with
an `idempotency_key` derives its execution (or trigger) id from org, definition and key
the same way.

A start that finds its execution already written, still `queued` and written within
BD_RUNS' de-duplication window, publishes the run again: when the first try died between
writing the execution and enqueueing its run, this enqueues it, and otherwise the stream
drops the copy as a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import APIError

from broker import codec, ids, overrides, stream_tail, streams, subjects
from broker.buckets import Buckets
from broker.client import reply_error
from broker.definitions import Definitions
from broker.errors import Busy, Conflict, NotFound, Unavailable
from broker.query import field_names, page_of
from broker.records import VersionConflict
from broker.timestamps import now_iso, parse_iso, request_time
from broker.types import (
    RUNNER_ALIVE_SECONDS,
    ActionState,
    Batch,
    BatchRun,
    BatchStartRequest,
    BatchTriggersRequest,
    EmptyRequest,
    ExecCancelRequest,
    ExecListRequest,
    Execution,
    GetRequest,
    ModuleInfo,
    Page,
    RunCommand,
    Runner,
    Task,
    TaskStartRequest,
    Trigger,
)

log = logging.getLogger("batchdeck.broker")

EXECUTION_FIELDS = field_names(Execution)
CANCEL_FORWARD_TIMEOUT = 3.0
"""Seconds the broker waits for the runner holding an execution to answer a cancel."""
HISTORY_TIMEOUT = 2.0
"""Seconds `batch.devices` waits for the store's answer before it replies without it."""
ADMIT_ATTEMPTS = 20
ADMIT_WAITS = 10
ADMIT_WAIT_SECONDS = 0.05
ENQUEUE_TRY_TIMEOUT = 2.0
ENQUEUE_PAUSES = (0.25, 0.5, 1.0, 2.0, 2.0, 2.0)
"""A run's publish that JetStream does not acknowledge (a leader election on a cluster
takes a few seconds) is tried again after these pauses, ENQUEUE_TRY_TIMEOUT each: about
20 s in all before the execution is recorded `lost`. Safe, as BD_RUNS drops a copy."""
RESEND_MARGIN = 20.0
"""Seconds short of BD_RUNS' de-duplication window past which a start no longer sends
the run of a `queued` execution again (clocks of broker and server may differ)."""


class QueueFull(Exception):
    """BD_RUNS refused the run: its org's pool has as many runs waiting as it may."""


class EnqueueFailed(Unavailable):
    """The run command could not be published; the execution was recorded `lost`."""

    def __init__(self, message: str, execution: Execution) -> None:
        super().__init__(message)
        self.execution = execution


class Executions:
    def __init__(self, nc: Client, js: JetStreamContext, buckets: Buckets, definitions: Definitions) -> None:
        self.nc = nc
        self.js = js
        self.buckets = buckets
        self.definitions = definitions

    # ---- starting ----------------------------------------------------------------

    async def start_task(self, org: str, body: bytes) -> dict[str, Any]:
        request = codec.decode_request(body, TaskStartRequest)
        key = request.idempotency_key
        execution_id = ids.new_id() if key is None else ids.derived_id(f"{org}/task/{request.id}/{key}", "start")
        if key is not None and (done := await self._started_before(org, execution_id)) is not None:
            return {"execution_id": done.id, "duplicate": True}
        task = await self.definitions.load_task(org, request.id)
        params = overrides.start_params(task, request.params)
        snapshot = self._snapshot(task, {**task.params, **params})
        overrides.check_program(snapshot)
        await self.definitions.check_module_params(org, snapshot)
        execution = Execution(
            id=execution_id,
            org=org,
            task_id=task.id,
            name=task.name,
            source=request.source,
            pool=request.pool or task.pool,
            queued_at=now_iso(),
            actions=[ActionState(index=0, task_id=task.id)],
            context=request.context,
            cancellable=task.cancellable,
            trace=task.trace,
            deadline=request.deadline,
        )
        execution, created = await self._enqueue(execution, RunCommand(
            execution_id=execution.id, org=org, tasks=[snapshot], context=request.context, deadline=request.deadline))
        return {"execution_id": execution.id} if key is None else {"execution_id": execution.id, "duplicate": not created}

    async def start_batch(self, org: str, body: bytes) -> dict[str, Any]:
        request = codec.decode_request(body, BatchStartRequest)
        key = request.idempotency_key
        trigger = Trigger(
            trigger_id=ids.new_id() if key is None else ids.derived_id(f"{org}/batch/{request.id}/{key}", "start"),
            batch_id=request.id, source=request.source, fired_at=now_iso(), context=request.context, org=org,
        )
        execution, created = await self.run_trigger(org, trigger, deadline=request.deadline, manual=True)
        reply = {"execution_id": execution.id, "trigger_id": trigger.trigger_id}
        return reply if key is None else {**reply, "duplicate": not created}

    def _snapshot(self, task: Task, params: dict[str, Any]) -> Task:
        """The task as a run takes it: these params, no runtime state, its log quota resolved
        (the runner keeps what the control plane decided, whatever its own defaults)."""
        limits = self.definitions.log_limits
        return msgspec.structs.replace(task, params=params, state={}, log_max_lines=limits.lines(task),
                                       log_max_bytes=limits.bytes(task))

    async def _started_before(self, org: str, execution_id: str) -> Execution | None:
        """The execution a start made before, unless its run may still need enqueueing
        (then the start goes through again, to its `_enqueue`)."""
        # A replica that misses it is no harm: the create that follows finds it.
        existing = await self.buckets.execs.get_any_replica(org, execution_id)
        return existing if existing is not None and not _may_be_unenqueued(existing) else None

    async def run_trigger(
        self, org: str, trigger: Trigger, deadline: str | None = None, manual: bool = False
    ) -> tuple[Execution, bool]:
        """Turn a trigger into exactly one execution of its batch and publish the
        trigger event; with whether this call made it. Idempotent: the same trigger
        again returns the same execution. Only a `manual` start (batch.start) runs a
        disabled batch. The batch's `concurrency` policy decides what happens while an
        earlier run is active."""
        execution_id = ids.derived_id(trigger.trigger_id, f"exec:{org}")
        if (existing := await self._started_before(org, execution_id)) is not None:
            return existing, False
        batch = await self.definitions.load_batch(org, trigger.batch_id)
        if not batch.is_enabled and not manual:
            raise Conflict(f"batch {batch.id!r} is disabled; triggers are ignored until it is enabled")
        tasks = await asyncio.gather(*(self.definitions.load_task(org, a.task_id) for a in batch.actions))
        snapshots = [self._snapshot(task, {**task.params, **action.params})
                     for task, action in zip(tasks, batch.actions, strict=True)]
        for snapshot in snapshots:
            overrides.check_program(snapshot)
        if manual:  # a tick was checked when its batch was saved; a start's params are checked now
            await asyncio.gather(*(self.definitions.check_module_params(org, s) for s in snapshots))
        execution = Execution(
            id=execution_id,
            org=org,
            batch_id=batch.id,
            name=batch.name,
            trigger_id=trigger.trigger_id,
            source=trigger.source,
            pool=batch.pool or tasks[0].pool,
            queued_at=now_iso(),
            actions=[ActionState(index=i, task_id=a.task_id) for i, a in enumerate(batch.actions)],
            context=trigger.context,
            cancellable=all(t.cancellable for t in tasks),
            trace=all(t.trace for t in tasks),
            deadline=deadline,
        )
        active = await self._admit(batch, execution, manual)
        if execution.status == "skipped":
            execution, created = await self._record_skipped(execution)
        else:
            command = RunCommand(execution_id=execution.id, org=org, batch=_snapshot_batch(batch), tasks=snapshots,
                                 context=trigger.context, deadline=deadline)
            try:
                execution, created = await self._enqueue(execution, command)
            except EnqueueFailed as err:  # the execution is recorded `lost`: say so on the trigger too
                await self._publish_trigger_event(org, trigger, err.execution)
                raise
            if active is not None and created:
                await self._replace(active, execution)
        if created:
            await self._publish_trigger_event(org, trigger, execution)
        return execution, created

    async def _publish_trigger_event(self, org: str, trigger: Trigger, execution: Execution) -> None:
        trigger.execution_id, trigger.status, trigger.org = execution.id, execution.status, org
        if execution.status in ("skipped", "lost"):
            trigger.error = trigger.error or execution.error
        trigger.fired_at = trigger.fired_at or execution.queued_at
        await self.js.publish(subjects.trigger_event(org, trigger.batch_id), codec.encode(trigger))

    async def _admit(self, batch: Batch, execution: Execution, manual: bool) -> Execution | None:
        """Apply the batch's concurrency policy to a new execution. Marks it `skipped`
        (`forbid`, scheduled) or raises Conflict (`forbid`, manual); returns the active
        run that `replace` must cancel once the new one is queued, else None.

        The batch's slot in `bd_batch_runs` is claimed by compare-and-set, so two
        triggers of one batch handled at the same moment cannot both see it idle."""
        if batch.concurrency == "allow":
            return None
        org = execution.org
        waited = 0
        for _ in range(ADMIT_ATTEMPTS):
            slot = await self.buckets.batch_runs.get(org, batch.id)
            active = await self.buckets.execs.get(org, slot.execution_id) if slot is not None else None
            if slot is not None and active is None and waited < ADMIT_WAITS:
                # Claimed by a start that has not written its execution yet (one KV
                # write away), or by one that died in between: wait a moment, then move on.
                waited += 1
                await asyncio.sleep(ADMIT_WAIT_SECONDS)
                continue
            if active is not None and (active.is_final or active.id == execution.id):
                active = None
            if active is not None and batch.concurrency == "forbid":
                reason = (f"batch {batch.id!r} is still running execution {active.id} ({active.status}); "
                          "its concurrency policy is forbid")
                if manual:
                    raise Conflict(reason, {"execution_id": active.id, "concurrency": "forbid"})
                execution.status, execution.error = "skipped", reason
                return None
            claim = BatchRun(execution_id=execution.id, trigger_id=execution.trigger_id)
            try:
                if slot is None:
                    await self.buckets.batch_runs.create(org, batch.id, claim)
                else:
                    await self.buckets.batch_runs.update(org, batch.id, claim, slot.version)
            except VersionConflict:
                continue  # another trigger of this batch got there first: look again
            return active
        # Transient: a trigger from BD_TRIGGERS is redelivered, a manual start may retry.
        raise Unavailable(f"batch {batch.id!r} is being triggered too often at once; try again")

    async def _record_skipped(self, execution: Execution) -> tuple[Execution, bool]:
        execution.finished_at = execution.queued_at
        for action in execution.actions:
            action.status = "skipped"
        try:
            execution = await self.buckets.execs.create(execution.org, execution.id, execution)
        except VersionConflict:
            return await self.buckets.execs.get(execution.org, execution.id) or execution, False
        await self._publish_state(execution)
        return execution, True

    async def _replace(self, active: Execution, successor: Execution) -> None:
        """`replace`: cancel the run the new one replaces. One that cannot be cancelled
        (not cancellable, finished meanwhile) is left to end on its own."""
        try:
            await self.cancel_execution(active.org, active.id, f"replaced by execution {successor.id}")
        except (Conflict, NotFound) as err:
            log.info("batch %s: execution %s not replaced: %s", active.batch_id, active.id, err.message)

    async def _enqueue(self, execution: Execution, command: RunCommand) -> tuple[Execution, bool]:
        """Write the execution and enqueue its run: the execution as stored, and whether
        this call wrote it (False: the same trigger or idempotency key was there first)."""
        org = execution.org
        try:
            execution = await self.buckets.execs.create(org, execution.id, execution)
        except VersionConflict:
            existing = await self.buckets.execs.get(org, execution.id) or execution
            if _may_be_unenqueued(existing):
                try:  # the first try may have died before it enqueued the run
                    await self._publish_run(existing, command)
                except Exception as err:
                    raise Unavailable(f"could not enqueue the run of {existing.id}: {err}; try again") from err
            return existing, False
        # The run and the `queued` event go out together (one round trip, not two);
        # readers order state events by `version`, so a runner's later event wins.
        enqueued, announced = await asyncio.gather(
            self._publish_run(execution, command),
            self._publish_state(execution),
            return_exceptions=True,
        )
        if isinstance(enqueued, QueueFull):
            execution.status, execution.error, execution.finished_at = "lost", str(enqueued), now_iso()
            execution = await self.buckets.execs.put(org, execution.id, execution)
            await self._publish_state(execution)
            raise Busy(f"{enqueued}; try again when its runners have taken some", {"pool": execution.pool}) \
                from enqueued
        if isinstance(enqueued, BaseException):
            execution.status, execution.error, execution.finished_at = "lost", f"could not enqueue: {enqueued}", now_iso()
            execution = await self.buckets.execs.put(org, execution.id, execution)
            await self._publish_state(execution)
            raise EnqueueFailed(f"could not enqueue the run: {enqueued}", execution) from enqueued
        if isinstance(announced, BaseException):
            log.warning("execution %s queued, but its state event was not published: %s", execution.id, announced)
        return execution, True

    async def _publish_run(self, execution: Execution, command: RunCommand) -> None:
        """Enqueue the run, trying again while JetStream does not answer; the same run
        again within BD_RUNS' de-duplication window (same execution and attempt) is
        dropped by the stream."""
        subject, data = subjects.run(execution.org, execution.pool), codec.encode(command)
        headers = {"Nats-Msg-Id": run_msg_id(execution)}
        for pause in (*ENQUEUE_PAUSES, None):
            try:
                await self.js.publish(subject, data, headers=headers, timeout=ENQUEUE_TRY_TIMEOUT)
                return
            except APIError as err:
                if getattr(err, "err_code", None) == streams.QUEUE_FULL:  # not a passing trouble: say so now
                    raise QueueFull(f"pool {execution.pool!r} of org {execution.org!r} has as many runs waiting as "
                                    "it may (BD_RUNS' limit per pool)") from err
                if not isinstance(err, streams.JETSTREAM_UNAVAILABLE) or pause is None:
                    raise
                log.warning("run of %s not enqueued yet (%r); trying again in %g s", execution.id, err, pause)
                await asyncio.sleep(pause)
            except streams.JETSTREAM_UNAVAILABLE as err:
                if pause is None:
                    raise
                log.warning("run of %s not enqueued yet (%r); trying again in %g s", execution.id, err, pause)
                await asyncio.sleep(pause)

    async def _publish_state(self, execution: Execution) -> None:
        headers = None if execution.trace else {subjects.TRACE_HEADER: "false"}
        await self.js.publish(subjects.exec_event(execution.org, execution.id, "state"), codec.encode(execution),
                              headers=headers)

    # ---- reading -----------------------------------------------------------------

    async def triggers(self, org: str, body: bytes) -> Page:
        """A batch's triggers, newest first, from the trigger events on BD_EVENTS."""
        request = codec.decode_request(body, BatchTriggersRequest)
        await self.definitions.load_batch(org, request.id, live=False)
        tail = await stream_tail.tail_page(self.js, streams.EVENTS, subjects.trigger_event(org, request.id),
                                           request.page, request.per_page)
        # As stored: a refused trigger's event echoes whatever body was published.
        items = [_lenient(data) for data in tail.items]
        return Page(items=items, page=request.page, per_page=request.per_page, total=tail.total,
                    pages=-(-tail.total // request.per_page))

    async def load(self, org: str, execution_id: str) -> Execution:
        execution = await self.buckets.execs.get(org, execution_id)
        if execution is None:
            raise NotFound(f"execution {execution_id!r} does not exist (or has expired from live state)",
                           {"kind": "execution", "id": execution_id})
        return execution

    async def get(self, org: str, body: bytes) -> Execution:
        request = codec.decode_request(body, GetRequest)
        return await self.load(org, request.id)

    async def list(self, org: str, body: bytes) -> Any:
        request = codec.decode_request(body, ExecListRequest)
        if request.history:
            return await self._history_list(org, request)
        since, until = (request_time(t, n) if t is not None else None
                        for t, n in ((request.since, "since"), (request.until, "until")))
        records = [e for e in await self.buckets.execs.scan(org)
                   if _queued_within(e, since, until)] if since or until else await self.buckets.execs.scan(org)
        return page_of(records, request, EXECUTION_FIELDS, default_sort="-queued_at")

    async def _history_list(self, org: str, request: ExecListRequest) -> Any:
        """The stored executions, paged by the store (`exec.history`); relayed as it answers."""
        forwarded = msgspec.structs.asdict(request)
        del forwarded["history"], forwarded["include_deleted"]
        try:
            reply = await self.nc.request(subjects.api(org, "exec", "history"), codec.encode(forwarded),
                                          timeout=HISTORY_TIMEOUT)
        except (NoRespondersError, NatsTimeout, asyncio.TimeoutError):
            raise Unavailable("no store answered: the history needs a running `batchdeck store`") from None
        error = reply_error(reply)
        if error is not None:
            raise error
        return codec.decode(reply.data, dict[str, Any])

    # ---- cancelling --------------------------------------------------------------

    async def cancel(self, org: str, body: bytes) -> dict[str, Any]:
        request = codec.decode_request(body, ExecCancelRequest)
        return await self.cancel_execution(org, request.id)

    async def cancel_execution(self, org: str, execution_id: str, reason: str = "canceled before it started"
                               ) -> dict[str, Any]:
        """Cancel an execution: a queued one ends `canceled` at once; for a running one the
        flag is set and the request forwarded to the runner holding it."""
        for _ in range(10):
            execution = await self.load(org, execution_id)
            _check_cancellable(execution)
            queued = execution.status == "queued"
            execution.cancel_requested = True
            if queued:
                execution.status, execution.finished_at = "canceled", now_iso()
                execution.error = reason
                for action in execution.actions:
                    action.status = "canceled"
            try:
                execution = await self.buckets.execs.update(org, execution.id, execution, execution.version)
            except VersionConflict:
                continue  # a runner moved it meanwhile: look again
            await self._publish_state(execution)  # watchers see the request at once
            if queued:
                return {"acknowledged": "ok"}
            return await self._forward_cancel(org, execution.id)
        raise Conflict(f"execution {execution_id!r} keeps changing; try again")

    async def _forward_cancel(self, org: str, execution_id: str) -> dict[str, Any]:
        try:
            reply = await self.nc.request(subjects.exec_cancel(org, execution_id), b"{}", timeout=CANCEL_FORWARD_TIMEOUT)
        except (NoRespondersError, NatsTimeout, asyncio.TimeoutError):
            # The flag is set: the runner acts on it when it next looks (or the run is
            # declared lost when its runner is gone).
            return {"acknowledged": "pending"}
        error = reply_error(reply)
        if error is not None:
            raise error
        return codec.decode(reply.data or b"{}", dict[str, Any]) or {"acknowledged": "ok"}

    # ---- runners and modules -----------------------------------------------------

    async def live_runners(self, org: str) -> list[Runner]:
        """Every runner of the org with `alive` computed from its last heartbeat."""
        now = datetime.now(timezone.utc)
        runners = await self.buckets.runners.scan(org)
        for runner in runners:
            beat = parse_iso(runner.heartbeat_at) if runner.heartbeat_at else None
            runner.alive = beat is not None and (now - beat).total_seconds() <= RUNNER_ALIVE_SECONDS
        return runners

    async def runners(self, org: str, body: bytes) -> dict[str, Any]:
        codec.decode_request(body, EmptyRequest)
        return {"items": sorted(await self.live_runners(org), key=lambda r: r.id)}

    async def modules(self, org: str, body: bytes) -> dict[str, Any]:
        """The modules that live runners of this org advertise (union by name)."""
        codec.decode_request(body, EmptyRequest)
        return {"modules": await self.module_catalog(org)}

    async def module_catalog(self, org: str) -> list[ModuleInfo]:
        by_name: dict[str, ModuleInfo] = {}
        for runner in await self.live_runners(org):
            if runner.alive:
                for module in runner.modules:
                    by_name.setdefault(module.name, module)
        return [by_name[name] for name in sorted(by_name)]

    async def devices(self, org: str, body: bytes) -> dict[str, Any]:
        """Runners that ran the batch (the store's history, when a store answers) or
        are eligible to run it now: alive and serving its pool."""
        request = codec.decode_request(body, GetRequest)
        batch = await self.definitions.load_batch(org, request.id, live=False)
        pool = batch.pool or (await self.definitions.load_task(org, batch.actions[0].task_id, live=False)).pool
        eligible = [r.id for r in await self.live_runners(org) if r.alive and pool in r.pools]
        ran = await self._runners_that_ran(org, batch.id)
        return {"items": sorted(set(eligible) | set(ran or [])), "pool": pool, "eligible": sorted(eligible),
                "ran": ran}

    async def _runners_that_ran(self, org: str, batch_id: str) -> list[str] | None:
        """From the store (`history.sql`); None when no store answers in time."""
        query = {"sql": "SELECT DISTINCT runner_id FROM executions WHERE batch_id = ? AND runner_id IS NOT NULL "
                        "ORDER BY runner_id", "params": [batch_id]}
        try:
            reply = await self.nc.request(subjects.api(org, "history", "sql"), codec.encode(query),
                                          timeout=HISTORY_TIMEOUT)
        except (NoRespondersError, NatsTimeout, asyncio.TimeoutError):
            return None
        if reply_error(reply) is not None:
            return None
        return [row[0] for row in codec.decode(reply.data, dict[str, Any]).get("rows", [])]


def run_msg_id(execution: Execution) -> str:
    """The de-duplication key of a run on BD_RUNS: org, execution and attempt."""
    return f"{execution.org}.{execution.id}.{execution.attempt}"


def _may_be_unenqueued(execution: Execution) -> bool:
    """Queued, untouched by any runner, and young enough that BD_RUNS still remembers
    whether its run was published (so publishing it again cannot make a second copy)."""
    if execution.status != "queued" or execution.runner_id is not None or execution.queued_at is None:
        return False
    age = (datetime.now(timezone.utc) - parse_iso(execution.queued_at)).total_seconds()
    return age < streams.RUNS_DEDUP_WINDOW - RESEND_MARGIN


def _queued_within(execution: Execution, since: datetime | None, until: datetime | None) -> bool:
    queued = parse_iso(execution.queued_at)
    return (since is None or queued >= since) and (until is None or queued < until)


def _check_cancellable(execution: Execution) -> None:
    if execution.is_final:
        raise Conflict(f"execution {execution.id!r} already finished ({execution.status})",
                       {"status": execution.status})
    if not execution.cancellable:
        raise Conflict(f"execution {execution.id!r} runs a task that is not cancellable", {"cancellable": False})


def _snapshot_batch(batch: Batch) -> Batch:
    return msgspec.structs.replace(batch, next_run_at=None)



def _lenient(data: bytes) -> dict[str, Any]:
    try:
        return codec.decode(data, dict[str, Any])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {"error": "an undecodable trigger event", "size": len(data)}
