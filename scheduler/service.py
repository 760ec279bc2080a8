"""The scheduler service: watches KV `bd_batches`, sleeps until the next tick is due,
publishes `bd.{org}.trigger.{batch_id}` to BD_TRIGGERS.

Any number of replicas may run. Each fires every tick with the same `Nats-Msg-Id`
(`{org}.{batch_id}@{scheduled_at}.{digest}`, the digest keyed by the fleet's salt, so
that no org can publish a trigger under another org's next tick id first) and the same
trigger id, so JetStream's de-duplication keeps one message per tick, and should a tick
be re-published after the de-duplication window (a replica catching up), the broker
still finds the one execution derived from the trigger id.

Startup: the replica joins the fleet (`scheduler.fleet`); ticks missed while no
replica ran go through each batch's catch-up policy; on a fresh start of the fleet,
batches with `run_on_startup` run once (one trigger id per fleet epoch).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from broker import codec, ids, streams, subjects
from broker.metrics import Metrics
from broker.tasks import cancel_and_wait
from broker.timestamps import parse_iso, to_iso
from broker.types import Batch, Trigger
from scheduler.fleet import Fleet, Membership, utc_now
from scheduler.publisher import AckedPublisher
from scheduler.timeline import Tick, Timeline

log = logging.getLogger("batchdeck.scheduler")

HEARTBEAT_SECONDS = 1.0
MAX_SLEEP_SECONDS = 30.0
"""The timer sleeps until the next tick, but at most this long: a wall clock that was
set back or forward (NTP step, suspended laptop) is noticed within this time."""
PREPARE_AHEAD_SECONDS = 0.1
"""The triggers of an instant are built this long before it (a batch disabled in that
moment still fires once)."""
ACK_TIMEOUT_SECONDS = 5.0
RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)
MSG_ID = "Nats-Msg-Id"
SERVICE_NAME = "batchdeck-scheduler"
"""The micro service whose stats carry a replica's metrics (`broker.metrics`)."""


@dataclass
class Prepared:
    subject: str
    trigger: Trigger
    headers: dict[str, str]
    schedule: tuple[str, str] | None = None


class SchedulerService:
    def __init__(self, nc: Client, replica_id: str | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.id = replica_id or ids.instance_id()
        self.timeline = Timeline()
        self.fleet = Fleet(self.js, self.id)
        self.publisher = AckedPublisher(nc)
        self._stamp = Stamp()
        self.membership: Membership | None = None
        self.fired = 0
        self.trigger_lag = 0.0
        """Seconds from the last instant fired on time to all of its triggers stored."""
        self.metrics = self._metrics()
        self._wake = asyncio.Event()
        self._fired_through = utc_now()
        """Every tick up to this instant has been stored."""
        self._firing = False
        """Ticks were taken from the timeline and are not all stored yet (stays set when a
        stop cuts the sending short, so the watermark left behind does not cover them)."""
        self._tasks: list[asyncio.Task[Any]] = []
        self._watcher: Any = None

    def _metrics(self) -> Metrics:
        metrics = Metrics("scheduler", self.id)
        metrics.counter("ticks_fired", "triggers this replica published and JetStream stored (catch-up and "
                        "run_on_startup ones included; every replica fires every tick)", lambda: self.fired)
        metrics.gauge("trigger_lag_seconds", "seconds from the scheduled time of the last instant fired to all of "
                      "its triggers stored", lambda: self.trigger_lag)
        metrics.gauge("batches_scheduled", "enabled batches with a schedule this replica follows",
                      lambda: len(self.timeline))
        metrics.connection(self.nc)
        return metrics

    async def start(self) -> None:
        """Join the fleet, load every batch (firing what was missed and, on a fresh
        fleet start, `run_on_startup`), then follow changes and fire on time."""
        await self.metrics.serve(self.nc, SERVICE_NAME, f"batchdeck scheduler replica {self.id}",
                                 {"replica_id": self.id})
        await streams.wait_for_provisioning(self.js, log)
        started = utc_now()
        self.membership = await self.fleet.join(started)
        self._fired_through, self._firing = min(self.membership.missed_since or started, started), True
        await self.publisher.start()
        # Beat from here on: catch-up may take long, and the fleet's lease must not lapse.
        self._tasks = [asyncio.create_task(self._heartbeat_forever(), name="scheduler-heartbeat")]
        self.kv = await self.js.key_value(streams.BATCHES_BUCKET)
        self._watcher = await self.kv.watchall()
        batches = await self._initial_batches()
        catch_up: list[Tick] = []
        for org, batch in batches:
            catch_up += self.timeline.set(org, batch, started, self._missed_since(batch))
        await self._publish(self._prepare(catch_up))
        if self.membership.fresh_start:
            await self._publish([self._startup_trigger(org, b, started) for org, b in batches
                                 if b.run_on_startup and (org, b.id) in self.timeline.entries])
        self._fired_through, self._firing = started, False
        log.info("scheduler %s: epoch %d%s, %d batches scheduled, %d missed ticks fired", self.id,
                 self.membership.epoch, " (fresh start)" if self.membership.fresh_start else "", len(self.timeline),
                 len(catch_up))
        self._tasks += [
            asyncio.create_task(self._follow_changes(), name="scheduler-watch"),
            asyncio.create_task(self._fire_forever(), name="scheduler-timer"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        if self._watcher is not None:
            await self._watcher.stop()
        if self.membership is not None:
            await self.fleet.leave(utc_now(), self._watermark(utc_now()), len(self.timeline))
        await self.publisher.stop()
        await self.metrics.close()

    # ---- batches -----------------------------------------------------------------

    async def _initial_batches(self) -> list[tuple[str, Batch]]:
        batches = []
        async for entry in self._watcher:
            if entry is None:  # the watch's marker: every current value was delivered
                return batches
            change = _decode(entry)
            if change is not None and change[1] is not None:
                batches.append(change)  # type: ignore[arg-type]
        return batches

    async def _follow_changes(self) -> None:
        async for entry in self._watcher:
            change = _decode(entry) if entry is not None else None
            if change is None:
                continue
            org, batch = change
            if batch is None:
                self.timeline.remove((org, entry.key.split(".", 1)[1]))
            else:
                self.timeline.set(org, batch, utc_now())
            self._wake.set()

    def _missed_since(self, batch: Batch) -> datetime | None:
        """Catch-up covers ticks after the fleet's watermark, and only those after the
        batch's last change (a batch created or edited during the downtime has not
        missed its old schedule)."""
        if self.membership is None or self.membership.missed_since is None:
            return None
        changed = batch.updated_at or batch.created_at
        since = self.membership.missed_since
        return max(since, parse_iso(changed)) if changed else since

    # ---- firing ------------------------------------------------------------------

    async def _fire_forever(self) -> None:
        while True:
            self._wake.clear()
            due = self.timeline.next_due()
            now = utc_now()
            if due is None or (due - now).total_seconds() > PREPARE_AHEAD_SECONDS:
                wait = MAX_SLEEP_SECONDS if due is None else (due - now).total_seconds() - PREPARE_AHEAD_SECONDS
                try:
                    await asyncio.wait_for(self._wake.wait(), min(wait, MAX_SLEEP_SECONDS))
                except asyncio.TimeoutError:
                    pass
                continue
            # Build the triggers of the coming instant ahead of it, so that at the instant
            # only stamping `fired_at` and sending are left.
            self._firing = True
            prepared = self._prepare(self.timeline.pop_due(max(due, now)))
            ahead = (due - utc_now()).total_seconds()
            if ahead > 0:
                await asyncio.sleep(ahead)
                # A batch disabled, deleted or rescheduled while we waited does not fire.
                prepared = [p for p in prepared if self._still_due(p)]
            await self._publish(prepared)
            if prepared:
                self.trigger_lag = (utc_now() - due).total_seconds()
            self._fired_through, self._firing = max(due, now), False

    def _prepare(self, ticks: list[Tick]) -> list[Prepared]:
        stamps: dict[datetime, str] = {}
        prepared = []
        for tick in ticks:
            scheduled = stamps.get(tick.scheduled_at) or stamps.setdefault(tick.scheduled_at, to_iso(tick.scheduled_at))
            key = f"{tick.org}.{tick.batch_id}@{scheduled}"
            trigger = Trigger(
                trigger_id=ids.tick_id(key, int(tick.scheduled_at.timestamp() * 1000)), batch_id=tick.batch_id,
                source=tick.source, scheduled_at=scheduled, org=tick.org,
            )
            prepared.append(Prepared(subjects.trigger(tick.org, tick.batch_id), trigger, {MSG_ID: self._msg_id(key)},
                                     tick.schedule))
        return prepared

    def _msg_id(self, key: str) -> str:
        """`key` and a digest of it keyed by the fleet's salt: every replica names a tick
        alike, and nobody without the salt can."""
        salt = self.membership.salt if self.membership is not None else b""
        return f"{key}.{hmac.new(salt, key.encode(), hashlib.sha256).hexdigest()[:16]}"

    def _still_due(self, item: Prepared) -> bool:
        member = self.timeline.entries.get((item.trigger.org, item.trigger.batch_id))
        return member is not None and (item.schedule is None or member.schedule == item.schedule)

    def _startup_trigger(self, org: str, batch: Batch, started: datetime) -> Prepared:
        assert self.membership is not None
        key = f"{org}.{batch.id}@startup.{self.membership.epoch}"
        trigger = Trigger(trigger_id=ids.tick_id(key, int(started.timestamp() * 1000)), batch_id=batch.id,
                          source="startup", scheduled_at=to_iso(started), org=org)
        return Prepared(subjects.trigger(org, batch.id), trigger, {MSG_ID: self._msg_id(key)})

    async def _publish(self, triggers: list[Prepared]) -> None:
        """Publish every trigger, pipelined, retrying failures until they are stored: a
        tick is never dropped because the server was briefly unavailable."""
        pending, attempt = triggers, 0
        while pending:
            failed = await self._publish_once(pending)
            self.fired += len(pending) - len(failed)
            if failed:
                delay = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                log.warning("%d trigger(s) not stored; retrying in %.1f s", len(failed), delay)
                await asyncio.sleep(delay)
                attempt += 1
            pending = failed

    async def _publish_once(self, triggers: list[Prepared]) -> list[Prepared]:
        """Send all, then wait for their acks together; returns the ones not stored."""
        sent: list[tuple[Prepared, asyncio.Future[None]]] = []
        failed = []
        for item in triggers:
            item.trigger.fired_at = self._stamp.now()
            try:
                ack = await self.publisher.send(item.subject, codec.encode(item.trigger), item.headers)
            except Exception as err:  # disconnected: keep it for the retry
                log.debug("trigger %s not sent: %r", item.headers[MSG_ID], err)
                failed.append(item)
                continue
            sent.append((item, ack))
        if sent:
            await asyncio.wait([ack for _, ack in sent], timeout=ACK_TIMEOUT_SECONDS)
        late = [ack for _, ack in sent if not ack.done()]
        if late:
            self.publisher.forget(late)
        failed += [item for item, ack in sent if ack.cancelled() or ack.exception() is not None]
        return failed

    # ---- fleet -------------------------------------------------------------------

    def _watermark(self, now: datetime) -> datetime:
        """Every tick up to the returned instant has been published."""
        if self._firing:
            return self._fired_through
        due = self.timeline.next_due()
        if due is None or due > now:
            return now
        return min(self._fired_through, due - timedelta(milliseconds=1))

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                now = utc_now()
                await self.fleet.beat(now, self._watermark(now), len(self.timeline))
            except Exception as err:  # a missed beat is retried on the next one
                log.warning("scheduler heartbeat failed: %r", err)


class Stamp:
    """`to_iso(utc_now())` at a tenth of its cost: the date and time part is formatted
    once per second (a burst stamps thousands of triggers within one)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        moment = time.time()
        second = int(moment)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return f"{self._prefix}{int((moment - second) * 1000):03d}Z"


def _decode(entry: Any) -> tuple[str, Batch | None] | None:
    """(org, batch) of a KV entry; batch None when the key was deleted or purged.
    None for an entry that is not a batch (logged, skipped)."""
    org, _, batch_id = entry.key.partition(".")
    if entry.operation in ("DEL", "PURGE") or not entry.value:
        return org, None
    try:
        return org, codec.decode(entry.value, Batch)
    except Exception as err:  # one bad record must not stop the schedule of the others
        log.warning("bd_batches key %s is not a batch (%s); ignored", entry.key, err)
        return None
