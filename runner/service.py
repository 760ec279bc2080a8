"""The runner process: claims runs of its org's pools from BD_RUNS, executes them up
to its concurrency, answers cancels for what it holds, heartbeats into bd_runners.

Claiming: one durable pull consumer per (org, pool), `runner_{len}_{org}_{pool}`, filtered on
`bd.{org}.run.{pool}` (a WorkQueue stream refuses overlapping consumers, so every runner
of a pool shares the one consumer). A runner serves one org: its commands run on this
machine, and one tenant's runner must never take another tenant's work. It asks
JetStream only what a grant can confine to its org (deploy/nats): the consumer is made
with its filter in the request subject, records are read by direct gets that name their
key, and no stream's info (which lists every org's subjects) is read.

A claimed message is acked only once the execution's final state is stored and
published; `in_progress()` keeps it claimed while actions run. A runner that dies leaves
it unacked: JetStream redelivers it after `ack_wait` to another runner, which runs it
again as the next attempt, or ends it `lost` when the task's retries are spent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError

from broker import __version__, codec, ids, streams, subjects
from broker.buckets import open_buckets
from broker.metrics import Metrics
from broker.refusals import Refusals
from broker.timestamps import now_iso
from broker.types import Execution, RunCommand, Runner
from runner.environment import base_environment
from runner.events import EventStream
from runner.log_limits import Rate
from runner.execution import ActiveRun, FinishedElsewhere, Outcome, RunEnvironment, RunExecutor, deadline_passed
from runner.modules import load_modules
from runner.starts import StartCounter

log = logging.getLogger("batchdeck.runner")

HEARTBEAT_SECONDS = 5.0
DEFAULT_ACK_WAIT = 30.0
DEFAULT_GRACE = 10.0
DEFAULT_DRAIN = 30.0


SERVICE_NAME = "batchdeck-runner"
"""The micro service whose stats carry a runner's metrics (`broker.metrics`)."""


@dataclass
class RunCounters:
    """Since this runner started: runs it took, how the ones it ended ended, log lines."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    """Ended failed, timed_out or lost."""
    canceled: int = 0
    handed_back: int = 0
    log_lines: int = 0
    log_lines_dropped: int = 0


HOLDER_TIMEOUT = 1.0
"""Seconds a runner waits for the runner named on a redelivered `running` execution to
say whether it still runs it, before taking the run over as the next attempt (or `lost`).
A runner that is gone is known at once: the server says nobody listens."""

UNKNOWN_EXECUTION_RETRIES = (0.1, 0.2, 0.4, 0.8, 1.5)
"""Pauses between reads of an execution a run names but bd_execs does not show yet."""
UNKNOWN_EXECUTION_DELIVERIES = 20
UNKNOWN_EXECUTION_PAUSE = 3.0
"""A run whose execution is still unreadable after those reads is delivered again after
this many seconds (to any runner, whose replica may have it), and dropped only at its
20th delivery: about two minutes after it was enqueued (each delivery also reads
for 3 s)."""


STREAM_NOT_FOUND = 10059
"""The JetStream API's error code for "stream not found"."""
PROBE_KEY = "provisioned-probe"
"""A key no record has: a direct get of it tells whether a bucket exists."""


async def _until_answered(ask):
    """`await ask()`, again every second while JetStream does not answer (a server that
    is still starting, a leader being elected, a user the server refuses: said once)."""
    said = False
    while True:
        try:
            return await ask()
        except streams.JETSTREAM_UNAVAILABLE as err:
            if not said:
                log.warning("JetStream does not answer (%s); asking again every second", type(err).__name__)
                said = True
            await asyncio.sleep(1.0)


consumer_name = subjects.runner_consumer


class RunnerService:
    def __init__(
        self,
        nc: Client,
        org: str = subjects.DEFAULT_ORG,
        pools: list[str] | None = None,
        concurrency: int = 4,
        name: str | None = None,
        ack_wait: float = DEFAULT_ACK_WAIT,
        grace: float = DEFAULT_GRACE,
        drain_timeout: float = DEFAULT_DRAIN,
        pass_env: list[str] | None = None,
        log_rate: Rate | None = None,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.org = org
        self.pools = pools or ["default"]
        self.concurrency = concurrency
        self.id = name or ids.instance_id()
        self.ack_wait = ack_wait
        self.grace = grace
        self.drain_timeout = drain_timeout
        self.pass_env = list(pass_env or [])
        self.log_rate = log_rate or Rate()
        """Lines and bytes a second this runner publishes at most, over all its runs."""
        """Names of the runner's variables passed on to every task (besides runner.environment's)."""
        self.active: dict[str, ActiveRun] = {}
        self.started_at = now_iso()
        self._reserved = 0
        self._room = asyncio.Event()
        self._claiming = True
        self._heartbeat_loop: asyncio.Task[None] | None = None
        self._claim_loops: list[asyncio.Task[None]] = []
        self._runs: set[asyncio.Task[None]] = set()
        self._hand_back_now = asyncio.Event()
        self._control_subs: list[Any] = []
        self.counters = RunCounters()
        self.refusals = Refusals(log)
        self.metrics = self._metrics()

    def _metrics(self) -> Metrics:
        counted, metrics = self.counters, Metrics("runner", self.id)
        metrics.counter("runs_claimed", "runs taken from the pools' queues (a redelivered copy of a run "
                        "held here is not counted)", lambda: counted.claimed)
        metrics.counter("runs_succeeded", "runs this runner ended succeeded", lambda: counted.succeeded)
        metrics.counter("runs_failed", "runs this runner ended failed, timed_out or lost", lambda: counted.failed)
        metrics.counter("runs_canceled", "runs this runner ended canceled", lambda: counted.canceled)
        metrics.counter("runs_handed_back", "runs handed back to the queue at shutdown", lambda: counted.handed_back)
        metrics.gauge("runs_running", "runs held now", lambda: len(self.active))
        metrics.counter("log_lines_published", "log lines of runs published to BD_EVENTS", lambda: counted.log_lines)
        metrics.counter("log_lines_dropped", "lines of output past their action's log quota: counted, not published",
                        lambda: counted.log_lines_dropped)
        metrics.counter("messages_refused", "run commands of another org and control requests without an inbox "
                        "to answer on, dropped", self.refusals.total)
        metrics.connection(self.nc)
        return metrics

    # ---- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        await self.metrics.serve(self.nc, SERVICE_NAME, f"batchdeck runner {self.id}",
                                 {"runner_id": self.id, "org": self.org, "pools": ",".join(self.pools)})
        self.js = await _until_answered(lambda: streams.jetstream_of(self.nc))
        await self._wait_for_provisioning()
        self.buckets = await open_buckets(self.js, look=False)
        self.modules = load_modules()
        self.env = RunEnvironment(self.js, self.buckets, self.id, self.modules, self.grace,
                                  StartCounter(self.buckets.task_starts, self.id),
                                  base_environment(os.environ, self.pass_env))
        self._control_subs = [
            await self.nc.subscribe(subjects.exec_cancel(self.org, "*"), cb=self._on_cancel),
            await self.nc.subscribe(subjects.runner_holds(self.org, self.id), cb=self._on_holds),
        ]
        await self._heartbeat()
        self._heartbeat_loop = asyncio.create_task(self._heartbeat_forever(), name="runner-heartbeat")
        self._claim_loops = [
            asyncio.create_task(self._claim_forever(pool), name=f"runner-claim-{pool}") for pool in self.pools
        ]
        log.info("runner %s serving org %s pools %s (concurrency %d, modules %s)", self.id, self.org,
                 ",".join(self.pools), self.concurrency, ",".join(sorted(self.modules)) or "none")

    async def stop(self) -> None:
        """Stop claiming; let running work finish within the drain timeout; hand the rest
        back so another runner takes it."""
        self._claiming = False
        # Claim loops end on their own within a fetch timeout (handing back whatever a
        # last fetch brought); cancelling one mid-fetch would strand what the server
        # sends it until ack_wait runs out.
        await asyncio.gather(*self._claim_loops, return_exceptions=True)
        if self._runs:
            log.info("runner %s draining %d run(s) for up to %g s", self.id, len(self._runs), self.drain_timeout)
            still_running = await self._drain()
            for run in self.active.values():
                run.handback = True
                run.cancel.set()
            if still_running:
                await asyncio.wait(still_running)
        if self._heartbeat_loop is not None:
            self._heartbeat_loop.cancel()
            await asyncio.gather(self._heartbeat_loop, return_exceptions=True)
        for sub in self._control_subs:
            await sub.unsubscribe()
        await self.metrics.close()
        try:  # acks and naks are buffered publishes: send them before the connection goes
            await self.nc.flush(timeout=5)
        except Exception as err:
            log.warning("could not flush the last acks: %s", err)
        if not hasattr(self, "buckets"):
            return  # stopped before the streams were there
        try:
            await self.buckets.runners.kv.delete(subjects.kv_key(self.org, self.id))
        except Exception as err:  # the heartbeat TTL removes it anyway
            log.debug("could not remove the heartbeat: %s", err)

    def hand_back_now(self) -> None:
        """End the drain of `stop()` at once: what still runs is handed back (a second
        Ctrl-C or SIGTERM)."""
        self._hand_back_now.set()

    async def _drain(self) -> set[asyncio.Task[None]]:
        """Wait for the running work until it ends, the drain timeout passes or
        hand_back_now() is called; what still runs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        cut = asyncio.create_task(self._hand_back_now.wait())
        pending = set(self._runs)
        try:
            while pending and not self._hand_back_now.is_set() and loop.time() < deadline:
                _, pending = await asyncio.wait({*pending, cut}, timeout=deadline - loop.time(),
                                                return_when=asyncio.FIRST_COMPLETED)
                pending.discard(cut)
        finally:
            cut.cancel()
        if pending and self._hand_back_now.is_set():
            log.info("runner %s handing back %d run(s) now", self.id, len(pending))
        return pending

    async def _wait_for_provisioning(self) -> None:
        """Wait until a broker has provisioned the streams and buckets, asking only what a
        runner may ask: its pools' consumers and its org's keys."""
        said = False
        while not await self._provisioned():
            if not said:
                log.warning("streams and buckets are not provisioned yet; waiting for a broker to start")
                said = True
            await asyncio.sleep(1.0)

    async def _provisioned(self) -> bool:
        try:
            for pool in self.pools:
                try:
                    await self.js.consumer_info(streams.RUNS, consumer_name(self.org, pool))
                except NotFoundError as err:
                    if err.err_code == STREAM_NOT_FOUND:
                        return False  # else the stream is there and the consumer not yet: made when claiming
            for bucket in (streams.EXECS_BUCKET, streams.RUNNERS_BUCKET, streams.TASK_STATE_BUCKET,
                           streams.TASK_STARTS_BUCKET):
                try:
                    await self.js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{self.org}.{PROBE_KEY}", direct=True)
                except NotFoundError:
                    pass  # the bucket answers: it is there (the key never is)
        except (*streams.JETSTREAM_UNAVAILABLE, APIError):
            return False
        return True

    # ---- claiming ----------------------------------------------------------------

    async def _subscription(self, pool: str) -> Any:
        """Bind to the pool's consumer, creating it if it is missing. An existing one is
        never changed (an update would re-point or re-time it under other runners); its
        `ack_wait` sets how often this runner renews its claims."""
        name = consumer_name(self.org, pool)
        wanted = subjects.run(self.org, pool)
        try:
            info = await self.js.consumer_info(streams.RUNS, name)
        except NotFoundError:
            # `name` set: nats-py creates it on $JS.API.CONSUMER.CREATE.BD_RUNS.{name}.{filter},
            # the form whose grant pins the filter to this org's pool.
            config = ConsumerConfig(
                name=name, durable_name=name, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait, max_deliver=-1,
                filter_subject=wanted, max_ack_pending=10_000,
            )
            try:
                info = await self.js.add_consumer(streams.RUNS, config)
            except BadRequestError:
                info = await self.js.consumer_info(streams.RUNS, name)  # another runner created it first
        if info.config.filter_subject != wanted:
            raise RuntimeError(f"consumer {name} filters {info.config.filter_subject}, not {wanted}")
        if info.config.ack_wait and info.config.ack_wait < self.ack_wait:
            log.info("pool %s: the consumer's ack_wait is %g s; renewing claims at that pace", pool,
                     info.config.ack_wait)
            self.ack_wait = info.config.ack_wait
        return await self.js.pull_subscribe_bind(durable=name, stream=streams.RUNS)

    async def _claim_forever(self, pool: str) -> None:
        while self._claiming:
            sub = None
            try:
                sub = await self._subscription(pool)
                while self._claiming:
                    free = self.concurrency - len(self._runs) - self._reserved
                    if free <= 0:
                        self._room.clear()
                        try:  # bounded, so a stop is noticed even while every slot is busy
                            await asyncio.wait_for(self._room.wait(), 1.0)
                        except asyncio.TimeoutError:
                            pass
                        continue
                    # Pools share the concurrency: claim no more than fits, and leave the
                    # other pools their share while this fetch waits for work.
                    free = max(1, free // len(self.pools))
                    self._reserved += free
                    try:
                        messages = await sub.fetch(free, timeout=1.0)
                    except (NatsTimeout, asyncio.TimeoutError):
                        messages = []
                    finally:
                        self._reserved -= free
                    if not self._claiming:
                        for msg in messages:
                            await msg.nak()  # fetched as we stopped: another runner takes it now
                        break
                    for msg in messages:
                        task = asyncio.create_task(self._handle(msg))
                        self._runs.add(task)
                        task.add_done_callback(self._run_done)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # server restart, consumer gone: re-create it
                log.warning("claiming on pool %s: %r; retrying", pool, err)
                await asyncio.sleep(1.0)
            finally:
                if sub is not None:  # each attempt binds anew: drop this one's inbox
                    await _quietly(sub.unsubscribe())

    def _run_done(self, task: asyncio.Task[None]) -> None:
        self._runs.discard(task)
        self._room.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("run crashed: %r", task.exception())

    # ---- one run -----------------------------------------------------------------

    async def _execution_of(self, command: RunCommand) -> Execution | None:
        """The run's execution in bd_execs. A replicated bucket answers reads from any
        replica (direct get), and a follower may not have the broker's write yet: a
        missing one is asked for again for a few seconds before the run is dropped."""
        for pause in UNKNOWN_EXECUTION_RETRIES:
            execution = await self.buckets.execs.get(command.org, command.execution_id)
            if execution is not None:
                return execution
            await asyncio.sleep(pause)
        return await self.buckets.execs.get(command.org, command.execution_id)

    async def _unknown_execution(self, msg: Msg, command: RunCommand) -> None:
        """A run of an execution bd_execs does not show: one a lagging replica has not got
        yet comes back later; one expired from bd_execs (7 days) is dropped in the end."""
        if _deliveries(msg) < UNKNOWN_EXECUTION_DELIVERIES:
            log.warning("run of %s: the execution is not readable yet; delivered again in %g s",
                        command.execution_id, UNKNOWN_EXECUTION_PAUSE)
            await msg.nak(delay=UNKNOWN_EXECUTION_PAUSE)
            return
        log.warning("run of unknown execution %s (expired from bd_execs?); dropped", command.execution_id)
        await msg.ack()

    async def _handle(self, msg: Msg) -> None:
        try:
            command = codec.decode(msg.data, RunCommand)
        except Exception as err:  # a body no runner can read: drop it for good
            log.error("unreadable run command on %s: %s", msg.subject, err)
            await msg.term()
            return
        if command.org != self.org or subjects.org_of(msg.subject) != self.org:
            # Only this org's consumer feeds this runner; a command naming another org is
            # nothing it may run (its events would go to that org's subjects).
            self.refusals.refuse("run_org", "run command on %s names org %r; this runner serves %s: dropped",
                                 msg.subject, command.org, self.org)
            await msg.term()
            return
        if command.execution_id in self.active:
            # Redelivered to the runner that runs it (its claim renewal came late): the
            # run goes on here and acks when it ends; this copy is left alone.
            log.warning("run of %s redelivered while this runner runs it; ignoring the copy", command.execution_id)
            return
        execution = await self._execution_of(command)
        if execution is None:
            await self._unknown_execution(msg, command)
            return
        if execution.status == "running" and await self._still_run_by_its_runner(execution):
            # Its runner lives and runs it: the claim renewals it sent were lost (a consumer
            # leader moving forgets them) or came late. Come back to the copy after a
            # whole ack_wait, in case that runner dies meanwhile; its ack ends both.
            log.warning("run of %s redelivered while runner %s still runs it; left to it", execution.id,
                        execution.runner_id)
            await msg.nak(delay=self.ack_wait)
            return
        run = ActiveRun(command, execution)
        events = _CountedEvents(self.counters, self.js, command.org, execution.id, execution.trace, rate=self.log_rate)
        executor = RunExecutor(self.env, run, events)
        keepalive = asyncio.create_task(self._keep_claimed(msg))
        self.active[execution.id] = run
        self.counters.claimed += 1
        ended_before = execution.is_final  # a copy whose ack a crash lost: its runner counted it
        try:
            await events.start()
            if await self._ends_before_start(executor, command):
                await msg.ack()
                return
            try:
                await executor.execute()
            except FinishedElsewhere as err:
                log.warning("execution %s was ended elsewhere (%s) while this runner held it", execution.id, err)
            if run.handback:
                await msg.nak()
                log.info("handed back %s (nak sent)", execution.id)
            else:
                await msg.ack()
        finally:
            self.active.pop(execution.id, None)
            keepalive.cancel()
            await events.close()
            if not ended_before:
                self._count_end(run)

    def _count_end(self, run: ActiveRun) -> None:
        status = run.execution.status
        if status == "succeeded":
            self.counters.succeeded += 1
        elif status in ("failed", "timed_out", "lost"):
            self.counters.failed += 1
        elif status == "canceled":
            self.counters.canceled += 1
        elif run.handback:
            self.counters.handed_back += 1

    async def _ends_before_start(self, executor: RunExecutor, command: RunCommand) -> bool:
        """Settle runs that must not start: already final, cancelled while queued, past
        their deadline, or redelivered after their runner died with no retries left."""
        execution = executor.execution
        if execution.is_final:
            return True  # finished before a crash lost its ack, or cancelled while queued
        if execution.cancel_requested:
            reason = "canceled; its runner stopped before it finished" if execution.status == "running" \
                else "canceled before it started"
            await self._end(executor, "canceled", reason)
            return True
        if deadline_passed(command.deadline):
            await self._end(executor, "timed_out", f"its deadline {command.deadline} passed before it started")
            return True
        if execution.status == "running":
            # Redelivered while marked running: the runner that held it stopped answering.
            allowed = 1 + max(task.retries for task in command.tasks)
            previous = execution.runner_id
            if execution.attempt >= allowed:
                await self._end(executor, "lost", f"runner {previous} stopped during attempt {execution.attempt}; "
                                                  "no retries left")
                return True
            execution.attempt += 1
            await executor._runner_line(f"runner {previous} stopped during attempt {execution.attempt - 1}; "
                                        f"running attempt {execution.attempt}", "warning")
        return False

    async def _end(self, executor: RunExecutor, status: str, error: str) -> None:
        execution = executor.execution
        for action in execution.actions:
            if action.status in ("queued", "running"):
                action.status = "canceled" if status == "canceled" else status  # type: ignore[assignment]
        await executor._finish(Outcome(status, error=error))

    async def _keep_claimed(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(max(self.ack_wait / 3, 0.2))
            try:
                await msg.in_progress()
            except Exception as err:  # a lost connection: redelivery is the fallback
                log.warning("could not extend the claim on %s: %s", msg.subject, err)

    # ---- cancel ------------------------------------------------------------------

    def _answerable(self, msg: Msg, subject: str) -> bool:
        """A control request on this runner's own subject with an inbox to answer on;
        anything else (a push-delivered copy, a reply subject naming a KV key or another
        org's subject) is dropped and counted."""
        if not subjects.is_inbox_reply(self.org, msg.reply or ""):
            self.refusals.refuse("reply_not_inbox", "%s: dropped a request whose reply subject %r is not an inbox "
                                 "of org %s", msg.subject, (msg.reply or "")[:200], self.org)
            return False
        return msg.subject == subject

    async def _on_cancel(self, msg: Msg) -> None:
        execution_id = msg.subject.split(".")[-2]
        if not self._answerable(msg, subjects.exec_cancel(self.org, execution_id)):
            return
        run = self.active.get(execution_id)
        if run is None:
            return  # not ours: the runner holding it answers
        if not run.execution.cancellable:
            error = {"error": {"code": 409, "message": f"execution {execution_id!r} runs a task that is not cancellable",
                               "details": {"cancellable": False}}}
            await msg.respond(codec.encode(error), headers={"Nats-Service-Error-Code": "409",
                                                             "Nats-Service-Error": "not cancellable"})
            return
        run.execution.cancel_requested = True
        run.cancel.set()
        await msg.respond(codec.encode({"acknowledged": "ok", "runner_id": self.id}))

    async def _still_run_by_its_runner(self, execution: Execution) -> bool:
        """Whether the runner the execution names says it runs it now (within
        HOLDER_TIMEOUT). A runner restarted under the same name says no."""
        if execution.runner_id is None:
            return False
        if execution.runner_id == self.id:
            return execution.id in self.active
        body = codec.encode({"execution_id": execution.id})
        try:
            reply = await self.nc.request(subjects.runner_holds(self.org, execution.runner_id), body,
                                          timeout=HOLDER_TIMEOUT)
        except NoRespondersError:
            return False  # that runner is gone
        except (NatsTimeout, asyncio.TimeoutError):
            log.warning("runner %s did not say within %g s whether it runs %s; taking it for gone",
                        execution.runner_id, HOLDER_TIMEOUT, execution.id)
            return False
        try:
            return codec.decode(reply.data)["held"] is True
        except Exception as err:
            log.warning("unreadable answer of runner %s about %s: %s", execution.runner_id, execution.id, err)
            return False

    async def _on_holds(self, msg: Msg) -> None:
        if not self._answerable(msg, subjects.runner_holds(self.org, self.id)):
            return
        try:
            execution_id = str(codec.decode(msg.data)["execution_id"])
        except Exception:
            return  # not a question this runner can answer
        run = self.active.get(execution_id)
        await msg.respond(codec.encode({"runner_id": self.id, "execution_id": execution_id, "held": run is not None,
                                        "attempt": run.execution.attempt if run is not None else None}))

    # ---- registry ----------------------------------------------------------------

    def describe(self) -> Runner:
        return Runner(
            id=self.id, org=self.org, host=socket.gethostname(), pid=os.getpid(), pools=self.pools,
            concurrency=self.concurrency, running=sorted(self.active), modules=[m.info() for m in self.modules.values()],
            version=__version__, started_at=self.started_at, heartbeat_at=now_iso(),
        )

    async def _heartbeat(self) -> None:
        await self.buckets.runners.put(self.org, self.id, self.describe())

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._heartbeat()
            except Exception as err:
                log.warning("heartbeat failed: %s", err)


class _CountedEvents(EventStream):
    """An execution's events, counting its log lines for the runner's metrics: those
    published, and those past their action's quota."""

    def __init__(self, counters: RunCounters, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counters = counters

    async def log(self, *args: Any, **kwargs: Any) -> bool:
        kept = await super().log(*args, **kwargs)
        if kept:
            self._counters.log_lines += 1
        else:
            self._counters.log_lines_dropped += 1
        return kept

    def dropped(self) -> None:
        self._counters.log_lines_dropped += 1


def _deliveries(msg: Msg) -> int:
    """How many times JetStream has delivered this message, this time included."""
    try:
        return msg.metadata.num_delivered
    except Exception:  # not a JetStream message: nothing will redeliver it
        return UNKNOWN_EXECUTION_DELIVERIES


async def _quietly(awaitable) -> None:
    try:
        await awaitable
    except Exception as err:  # the connection may be gone already
        log.debug("ignored while cleaning up: %r", err)
