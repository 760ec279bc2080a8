"""The control-plane service: a NATS micro service named `batchdeck` answering
`bd.{org}.api.{resource}.{verb}`, plus the consumer that turns BD_TRIGGERS messages
into executions. Any number of instances may run: requests are shared through the
micro queue group, triggers through one durable pull consumer."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from broker import codec, streams, subjects
from broker.buckets import open_buckets
from broker.definitions import Definitions
from broker.endpoints import Endpoints, Handler
from broker.errors import ApiError, BadRequest, Forbidden, InternalError, Unavailable
from broker.executions import Executions
from broker.metrics import Metrics
from broker.refusals import Refusals
from broker.tasks import cancel_and_wait
from broker.types import LogLimits, Trigger

log = logging.getLogger("batchdeck.broker")

TRIGGER_CONSUMER = "broker_triggers"
TRIGGER_MAX_DELIVER = 10


@dataclass
class TriggerCounters:
    """Since this instance started: what became of the triggers it read, and the
    executions it queued."""

    handled: int = 0
    refused: int = 0
    retried: int = 0
    executions: int = 0


class ControlPlane:
    """The API endpoints of one broker instance."""

    def __init__(self, nc: Client, js: JetStreamContext, log_limits: LogLimits = LogLimits(),
                 stream_limits: streams.StreamLimits = streams.StreamLimits()) -> None:
        self.nc = nc
        self.js = js
        self.log_limits = log_limits
        self.stream_limits = stream_limits
        self.api = Endpoints(nc)
        self._trigger_loop: asyncio.Task[None] | None = None
        self._trigger_sub: Any = None
        self.counters = TriggerCounters()
        self.refusals = Refusals(log)
        self.metrics = self._metrics()

    def _metrics(self) -> Metrics:
        counted, metrics = self.counters, Metrics("broker")
        metrics.counter("triggers_handled", "triggers from BD_TRIGGERS turned into an execution (or found to "
                        "have one) and acked", lambda: counted.handled)
        metrics.counter("triggers_refused", "triggers dropped for good: refused (unknown or disabled batch, bad "
                        "body) or given up after their last delivery", lambda: counted.refused)
        metrics.counter("triggers_retried", "trigger deliveries left to be redelivered", lambda: counted.retried)
        metrics.counter("executions_started", "executions queued by task.start, batch.start or a trigger",
                        lambda: counted.executions)
        metrics.counter("requests_refused", "API requests dropped unanswered: their reply subject was not an inbox "
                        "of their org", self.api.refusals.total)
        metrics.counter("triggers_refused_org", "triggers whose body named another org than their subject",
                        lambda: self.refusals.count("trigger_org"))
        metrics.connection(self.nc)
        return metrics

    async def start(self, replicas: int = 1) -> list[str]:
        """Provision streams and buckets, register the endpoints, start consuming
        triggers. Returns the provisioning drift report."""
        drift = await streams.provision(self.js, replicas=replicas, limits=self.stream_limits)
        buckets = await open_buckets(self.js, leader_on_miss=True)  # the API finds what it has just written
        self.definitions = Definitions(self.js, buckets, self.log_limits)
        self.executions = Executions(self.nc, self.js, buckets, self.definitions)
        self.definitions.module_catalog = self.executions.module_catalog
        await self.api.start(subjects.SERVICE_NAME, "batchdeck control plane: tasks, batches, executions",
                             self.endpoints(), stats_handler=self.metrics.stats_data)
        self.metrics.attach(self.api.service)
        self._trigger_loop = asyncio.create_task(self._consume_triggers(), name="broker-triggers")
        return drift

    @property
    def service(self):
        """The micro service instance (its id, stats)."""
        return self.api.service

    def endpoints(self) -> dict[tuple[str, str], Handler]:
        d, e = self.definitions, self.executions
        return {
            ("task", "create"): d.create_task,
            ("task", "get"): d.get_task,
            ("task", "list"): d.list_tasks,
            ("task", "update"): d.update_task,
            ("task", "delete"): d.delete_task,
            ("task", "start"): self._counting_starts(e.start_task),
            ("task", "modules"): e.modules,
            ("batch", "create"): d.create_batch,
            ("batch", "get"): d.get_batch,
            ("batch", "list"): d.list_batches,
            ("batch", "update"): d.update_batch,
            ("batch", "delete"): d.delete_batch,
            ("batch", "status"): d.set_batch_status,
            ("batch", "start"): self._counting_starts(e.start_batch),
            ("batch", "devices"): e.devices,
            ("batch", "next"): d.next_fires,
            ("batch", "triggers"): e.triggers,
            ("exec", "get"): e.get,
            ("exec", "list"): e.list,
            ("exec", "cancel"): e.cancel,
            ("runner", "list"): e.runners,
        }

    def _counting_starts(self, handler: Handler) -> Handler:
        """`handler`, counting the executions it queues (one per answer that is not an error)."""
        async def start(org: str, body: bytes) -> Any:
            reply = await handler(org, body)
            self.counters.executions += 1
            return reply

        return start

    async def stop(self) -> None:
        if self._trigger_loop is not None:
            await cancel_and_wait(self._trigger_loop)
        if self._trigger_sub is not None:
            # A pull subscription left open keeps a later drain() waiting for its timeout.
            await self._trigger_sub.unsubscribe()
        await self.api.stop()

    # ---- triggers ----------------------------------------------------------------

    async def _consume_triggers(self) -> None:
        config = ConsumerConfig(
            durable_name=TRIGGER_CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_deliver=TRIGGER_MAX_DELIVER,
            filter_subject=subjects.TRIGGERS_SUBJECTS[0],
        )
        while True:
            try:
                self._trigger_sub = await self.js.pull_subscribe(
                    subjects.TRIGGERS_SUBJECTS[0], durable=TRIGGER_CONSUMER, stream=streams.TRIGGERS, config=config
                )
                while True:
                    try:
                        messages = await self._trigger_sub.fetch(64, timeout=1.0)
                    except (NatsTimeout, asyncio.TimeoutError):
                        continue
                    await asyncio.gather(*(self._handle_in_order(batch) for batch in _by_subject(messages)))
            except asyncio.CancelledError:
                raise
            except Exception as err:  # server restart, consumer gone: re-create it
                log.warning("trigger consumer: %r; retrying", err)
                await asyncio.sleep(1.0)

    async def _handle_in_order(self, messages: list[Any]) -> None:
        """One batch's triggers one after another, in the order they were fired (the
        ticks a catch-up fires run in order); other batches' meanwhile."""
        for msg in messages:
            await self._handle_trigger(msg)

    async def _handle_trigger(self, msg: Any) -> None:
        org = subjects.org_of(msg.subject)
        try:
            trigger = codec.decode_request(msg.data, Trigger)
            if trigger.org is not None and trigger.org != org:
                self.refusals.refuse("trigger_org", "trigger on %s names org %r: refused", msg.subject, trigger.org)
                raise Forbidden(f"the trigger names org {trigger.org!r} but was published on {msg.subject}: "
                                "a trigger's org is its subject's")
            if trigger.batch_id != msg.subject.rsplit(".", 1)[-1]:
                raise BadRequest(f"trigger for batch {trigger.batch_id!r} published on {msg.subject}")
            execution, created = await self.executions.run_trigger(org, trigger)
        except Unavailable as err:
            # Transient (the batch's concurrency slot was contended), or the run could
            # not be enqueued, which recorded a `lost` execution a redelivery finds.
            await self._retry_trigger(org, msg, err, 0.5)
            return
        except ApiError as err:
            # A trigger that cannot run (unknown or disabled batch, bad body) is final:
            # record why on the trigger event and drop it.
            log.warning("trigger on %s refused: %s", msg.subject, err.message)
            await self._publish_refused_trigger(org, msg, err)
            await msg.term()
            self.counters.refused += 1
            return
        except Exception as err:
            await self._retry_trigger(org, msg, InternalError(f"{type(err).__name__}: {err}"), 2.0)
            return
        await msg.ack()
        self.counters.handled += 1
        if created and execution.status == "queued":  # not skipped, and not one a redelivery found made
            self.counters.executions += 1

    async def _retry_trigger(self, org: str, msg: Any, err: ApiError, delay: float) -> None:
        """Redeliver a trigger that failed for a passing reason; at its last delivery,
        record why it gave up on the trigger event instead of letting it vanish."""
        if msg.metadata.num_delivered >= TRIGGER_MAX_DELIVER:
            log.error("trigger on %s given up after %d deliveries: %s", msg.subject, TRIGGER_MAX_DELIVER, err.message)
            await self._publish_refused_trigger(
                org, msg, InternalError(f"given up after {TRIGGER_MAX_DELIVER} deliveries: {err.message}"))
            await msg.term()
            self.counters.refused += 1
            return
        log.warning("trigger on %s not run yet, will be redelivered: %s", msg.subject, err.message)
        await msg.nak(delay=delay)
        self.counters.retried += 1

    async def _publish_refused_trigger(self, org: str, msg: Any, err: ApiError) -> None:
        batch_id = msg.subject.rsplit(".", 1)[-1]
        try:
            body = codec.decode(msg.data, dict[str, Any])
        except (msgspec.DecodeError, msgspec.ValidationError):
            body = {}
        event = {**body, "org": org, "batch_id": batch_id, "execution_id": None, "error": err.message}
        try:
            await self.js.publish(subjects.trigger_event(org, batch_id), codec.encode(event))
        except Exception:
            log.exception("could not publish the refused trigger event")


def _by_subject(messages: list[Any]) -> list[list[Any]]:
    """Messages grouped by subject (a trigger subject names one batch), each group in
    stream order."""
    groups: dict[str, list[Any]] = {}
    for msg in messages:
        groups.setdefault(msg.subject, []).append(msg)
    return list(groups.values())
