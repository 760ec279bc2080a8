"""The org's live state as the dashboard sees it, kept current from NATS alone.

Definitions and runners come from KV watches (`bd_batches`, `bd_tasks`, `bd_runners`):
a watch delivers every current value, then each change. Executions are too many to
watch whole (7 days of them), so the newest page comes from `exec.list` and every
change after that from the state events on `bd.{org}.evt.exec.*.state`, which carry
the whole Execution; the subscription starts before the request, and a record only
replaces one of a lower version, so nothing between the two is lost. Progress between
states comes from `bd.{org}.evt.exec.*.progress` and moves the bar of a known run.

After a reconnect everything is loaded again (`resync`): the server may have lost the
watches' consumers, and a fresh load also drops what was deleted meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from broker import codec, streams, subjects
from broker.client import ApiClient
from broker.connect import denials_of
from broker.errors import ApiError
from broker.tasks import cancel_and_wait
from broker.types import Batch, DefinitionEvent, Execution, Progress, Runner, Task

log = logging.getLogger("batchdeck.tui")

EXECUTIONS_LOADED = 1000
"""Executions read at start (the newest; `exec.list` pages hold at most 1000)."""
EXECUTIONS_KEPT = 5000
"""Executions kept in memory; the oldest finished go first, then the oldest queued (running ones stay)."""
FORGET_SLACK = 500
"""How far past EXECUTIONS_KEPT the set may grow before it is trimmed back."""
EXECUTIONS_LOAD_TIMEOUT = 60.0
"""Seconds the first listing of executions may take: the broker reads every live one of
the org (about 6 s for 100 000 on 2 cores), and the table fills when it answers."""

Kind = str
"""Which collection changed: "batches", "tasks", "runners" or "executions"."""

_VERSIONED_BY_REVISION = (Batch, Task)
"""Records whose `version` is their KV revision, as the broker reads them (a runner's
`version` is its software's)."""

_WATCHED: dict[Kind, tuple[str, type[msgspec.Struct]]] = {
    "batches": (streams.BATCHES_BUCKET, Batch),
    "tasks": (streams.TASKS_BUCKET, Task),
    "runners": (streams.RUNNERS_BUCKET, Runner),
}


class LiveState:
    """Batches, tasks, runners and recent executions of one org, by id.

    `on_change(kind)` is called (on the event loop) after each change; callers coalesce.
    `on_warning(text)` hears what cannot be shown (a watch or the listing that failed).
    """

    def __init__(self, api: ApiClient, on_change: Callable[[Kind], None],
                 on_warning: Callable[[str], None] | None = None) -> None:
        self.api = api
        self.on_change = on_change
        self.on_warning = on_warning
        self.batches: dict[str, Batch] = {}
        self.tasks: dict[str, Task] = {}
        self.runners: dict[str, Runner] = {}
        self.executions: dict[str, Execution] = {}
        self.loaded = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: list[Any] = []
        self._runners_via_api = False
        """Runners come from `runner.list` (the watch was refused): reloaded when a run names a new one."""
        self._reloading_runners = False

    @property
    def nc(self) -> Client:
        return self.api.nc

    async def start(self) -> None:
        """Load everything and follow changes; returns once the first load is done."""
        self.loaded.clear()
        js = self.nc.jetstream()
        ready = [asyncio.Event() for _ in _WATCHED]
        # A user of an org's account has no JetStream (deploy/nats): no watch to try.
        watching = await streams.has_jetstream(self.nc)
        for (kind, (bucket, type_)), event in zip(_WATCHED.items(), ready, strict=True):
            follow = self._watch(js, kind, bucket, type_, event) if watching else self._by_api(kind, type_, event)
            self._tasks.append(asyncio.create_task(follow, name=f"tui-{kind}"))
        self._subscriptions += [  # a watch refused meanwhile may have added its own
            await self.nc.subscribe(subjects.exec_event(self.api.org, "*", "state"), cb=self._on_state),
            await self.nc.subscribe(subjects.exec_event(self.api.org, "*", "progress"), cb=self._on_progress),
        ]
        await self._load_executions()
        await asyncio.gather(*(event.wait() for event in ready))
        self.loaded.set()

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        for subscription in self._subscriptions:
            try:
                await subscription.unsubscribe()
            except NatsError:
                pass  # the connection is gone; so is the subscription
        self._subscriptions = []

    async def resync(self) -> None:
        """Start over after a reconnect: fresh watches, a fresh page of executions (the
        old ones dropped: runs that ended while the connection was gone would otherwise
        stay `running` here)."""
        await self.stop()
        self.executions = {}
        await self.start()

    # ---- definitions and runners: KV watches -----------------------------------------

    async def _watch(self, js: Any, kind: Kind, bucket: str, type_: type[msgspec.Struct],
                     ready: asyncio.Event) -> None:
        started = time.monotonic()
        try:
            kv = await js.key_value(bucket)
            watcher = await kv.watch(f"{self.api.org}.*")
        except (JetStreamError, NatsError, asyncio.TimeoutError) as err:
            denials = denials_of(self.nc)
            refused = denials.latest(lambda d: bucket in d.subject, started) if denials is not None else None
            reason = refused.describe() if refused is not None else str(err) or type(err).__name__
            no_jetstream = getattr(err, "err_code", None) == streams.JETSTREAM_NOT_ENABLED
            if refused is not None or no_jetstream:
                # A confined user may not watch (an org's account has no JetStream at all,
                # deploy/nats): the API's lists and the org's definition events serve instead.
                log.info("cannot watch %s (%s): following %s through the API", bucket, reason, kind)
                await self._follow_by_api(kind, type_)
                ready.set()
                return
            log.warning("cannot watch %s: %s", bucket, reason)
            if self.on_warning is not None:  # the user sees an empty pane: say why
                self.on_warning(f"cannot watch {bucket} ({kind} are not shown or kept current): {reason}")
            ready.set()  # show what there is; a reconnect tries again
            return
        fresh: dict[str, Any] = {}
        loading = True
        try:
            async for entry in watcher:
                if entry is None:  # the current values are all in: show them at once
                    loading = False
                    setattr(self, kind, fresh)
                    ready.set()
                    self.on_change(kind)
                    continue
                records = fresh if loading else getattr(self, kind)
                key = entry.key.split(".", 1)[1]
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    records.pop(key, None)
                else:
                    try:
                        record = codec.decode(entry.value, type_)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue  # not ours to judge; the API refuses to write such records
                    if isinstance(record, _VERSIONED_BY_REVISION):
                        record.version = entry.revision
                    records[key] = record
                if not loading:
                    self.on_change(kind)
        finally:
            ready.set()
            try:
                await watcher.stop()
            except (NatsError, AttributeError):
                pass

    async def _by_api(self, kind: Kind, type_: type[msgspec.Struct], ready: asyncio.Event) -> None:
        try:
            await self._follow_by_api(kind, type_)
        finally:
            ready.set()

    async def _follow_by_api(self, kind: Kind, type_: type[msgspec.Struct]) -> None:
        """`kind` from the API's list, kept current by the definition events of the org
        (batches, tasks) or reloaded when a run names a runner not known yet (runners)."""
        resource = {"batches": "batch", "tasks": "task", "runners": "runner"}[kind]
        if kind == "runners":
            self._runners_via_api = True
        else:
            subject = subjects.definition_event(self.api.org, resource, "*")
            self._subscriptions.append(await self.nc.subscribe(
                subject, cb=functools.partial(self._on_definition, kind, type_)))
        try:
            items = await self._list_all(resource)
        except ApiError as err:
            if self.on_warning is not None:
                self.on_warning(f"cannot list {kind}: {err.message}")
            return
        records: dict[str, Any] = {}
        for item in items:
            try:
                record = msgspec.convert(item, type_)
            except msgspec.ValidationError:
                continue
            records[record.id] = record
        setattr(self, kind, records)
        self.on_change(kind)

    async def _list_all(self, resource: str) -> list[dict[str, Any]]:
        if resource == "runner":
            return (await self.api.call("runner", "list", {}))["items"]
        items, page = [], 1
        while True:
            reply = await self.api.call(resource, "list", {"page": page, "per_page": 1000})
            items += reply["items"]
            if page >= reply["pages"]:
                return items
            page += 1

    async def _on_definition(self, kind: Kind, type_: type[msgspec.Struct], msg: Any) -> None:
        try:
            event = codec.decode(msg.data, DefinitionEvent)
            record = msgspec.convert(event.definition, type_)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        records = getattr(self, kind)
        known = records.get(event.id)
        if event.change == "deleted":
            records.pop(event.id, None)
        elif known is None or known.version <= record.version:
            records[event.id] = record
        self.on_change(kind)

    # ---- executions: a page, then state events --------------------------------------

    async def _load_executions(self) -> None:
        try:
            page = await self.api.call("exec", "list", {"per_page": EXECUTIONS_LOADED, "sort": "-queued_at"},
                                       timeout=EXECUTIONS_LOAD_TIMEOUT)
        except ApiError as err:
            log.warning("cannot list executions: %s", err.message)
            if self.on_warning is not None:
                self.on_warning(f"cannot list executions: {err.message}")
            return
        for item in page["items"]:
            self._keep(msgspec.convert(item, Execution))
        self.on_change("executions")

    async def _on_state(self, msg: Any) -> None:
        try:
            execution = codec.decode(msg.data, Execution)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if self._keep(execution):
            self.on_change("executions")
        if (self._runners_via_api and not self._reloading_runners and execution.runner_id
                and execution.runner_id not in self.runners):
            self._reloading_runners = True
            try:
                await self._follow_by_api("runners", Runner)
            finally:
                self._reloading_runners = False

    async def _on_progress(self, msg: Any) -> None:
        try:
            progress = codec.decode(msg.data, Progress)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        execution = self.executions.get(progress.execution_id)
        if execution is None or execution.is_final:
            return  # a late event must not move the bar of a finished run
        execution.progress_percent, execution.progress_text = progress.percent, progress.text
        self.on_change("executions")

    def _keep(self, execution: Execution) -> bool:
        known = self.executions.get(execution.id)
        if known is not None and known.version >= execution.version:
            return False
        self.executions[execution.id] = execution
        if len(self.executions) > EXECUTIONS_KEPT + FORGET_SLACK:
            self._forget_oldest()
        return True

    def _forget_oldest(self) -> None:
        """Back to EXECUTIONS_KEPT: the oldest finished go first, then the oldest queued
        (a burst of starts must not grow the set without bound); running ones stay. Done
        FORGET_SLACK changes at a time, so its sort is not paid on every event."""
        excess = len(self.executions) - EXECUTIONS_KEPT
        by_age = sorted(self.executions.values(), key=lambda e: e.queued_at or "")
        for wanted in (lambda e: e.is_final, lambda e: e.status == "queued"):
            for execution in by_age:
                if excess <= 0:
                    return
                if execution.id in self.executions and wanted(execution):
                    del self.executions[execution.id]
                    excess -= 1

    # ---- views -------------------------------------------------------------------------

    def runs_by_batch(self) -> dict[str, list[Execution]]:
        """Each batch's known executions, oldest first."""
        runs: dict[str, list[Execution]] = {}
        for execution in sorted(self.executions.values(), key=lambda e: e.queued_at or ""):
            if execution.batch_id is not None:
                runs.setdefault(execution.batch_id, []).append(execution)
        return runs
