"""The scheduler fleet: which replicas are alive, where catch-up starts, and the fleet
epoch that makes `run_on_startup` fire once per start of the fleet, not per replica.

State lives in KV `bd_scheduler`: `replica.{id}` is each replica's heartbeat with its
`fired_through` watermark; `epoch` is bumped (compare-and-set) by a replica that starts
while no other is alive. Replicas never coordinate ticks: every replica fires every
tick and JetStream de-duplication keeps one; the fleet state only answers "what was
missed while nobody was running" and "is this a fresh start".
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from broker import codec, streams
from broker.timestamps import parse_iso, to_iso
from broker.types import SchedulerEpoch, SchedulerReplica

log = logging.getLogger("batchdeck.scheduler")

ALIVE_SECONDS = 10.0
"""A replica whose heartbeat is older than this is not alive (it beats every second)."""
FORGET_AFTER = timedelta(days=7)
"""Heartbeats of replicas stopped longer ago than this are removed."""
EPOCH_KEY = "epoch"


@dataclass(frozen=True)
class Membership:
    epoch: int
    fresh_start: bool
    """No other replica was alive: this start began epoch `epoch`."""
    missed_since: datetime | None
    """Every tick up to this instant was fired by some replica; None when no replica ever ran."""


class Fleet:
    def __init__(self, js: JetStreamContext, replica_id: str) -> None:
        self.js = js
        self.replica = SchedulerReplica(id=replica_id, host=socket.gethostname(), pid=os.getpid())

    async def join(self, now: datetime) -> Membership:
        self.kv = await self.js.key_value(streams.SCHEDULER_BUCKET)
        replicas = await self._replicas()
        alive = [r for r in replicas if _alive(r, now) and r.id != self.replica.id]
        marks = [parse_iso(r.fired_through) for r in replicas if r.fired_through]
        missed_since = max(marks) if marks else None
        epoch, fresh = await self._epoch(now, bump=not alive)
        self.replica.epoch, self.replica.started_at = epoch, to_iso(now)
        await self.beat(now, now if missed_since is None else min(missed_since, now), batches=0)
        await self._forget([r for r in replicas if not _alive(r, now)], now)
        return Membership(epoch, fresh, missed_since)

    async def beat(self, now: datetime, fired_through: datetime, batches: int) -> None:
        self.replica.heartbeat_at = to_iso(now)
        self.replica.fired_through = to_iso(fired_through)
        self.replica.batches = batches
        await self.kv.put(f"replica.{self.replica.id}", codec.encode(self.replica))

    async def leave(self, now: datetime, fired_through: datetime, batches: int) -> None:
        """A last heartbeat dated long ago: the replica no longer counts as alive, its
        watermark still counts for catch-up."""
        await self.beat(now - timedelta(seconds=ALIVE_SECONDS * 2), fired_through, batches)

    async def _replicas(self) -> list[SchedulerReplica]:
        # A watch delivers each key's last value, then a None marker. (KeyValue.keys()
        # with filters finds nothing on nats-py 2.16.)
        watcher = await self.kv.watch("replica.*", ignore_deletes=True)
        replicas = []
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.value:
                    replicas.append(codec.decode(entry.value, SchedulerReplica))
        finally:
            await watcher.stop()
        return replicas

    async def _epoch(self, now: datetime, bump: bool) -> tuple[int, bool]:
        """The current epoch; with `bump`, a new one if no other replica got there first."""
        for _ in range(10):
            try:
                entry = await self.kv.get(EPOCH_KEY)
                current, revision = codec.decode(entry.value, SchedulerEpoch), entry.revision
            except KeyNotFoundError:
                current, revision = None, None
            if not bump and current is not None:
                return current.epoch, False
            new = SchedulerEpoch(epoch=(current.epoch + 1) if current else 1, started_at=to_iso(now),
                                 by=self.replica.id)
            try:
                if revision is None:
                    await self.kv.create(EPOCH_KEY, codec.encode(new))
                else:
                    await self.kv.update(EPOCH_KEY, codec.encode(new), last=revision)
                return new.epoch, True
            except KeyWrongLastSequenceError:
                bump = False  # a replica starting with us began the epoch: join it
        raise RuntimeError("could not read the scheduler epoch")

    async def _forget(self, dead: list[SchedulerReplica], now: datetime) -> None:
        for replica in dead:
            if replica.heartbeat_at and now - parse_iso(replica.heartbeat_at) > FORGET_AFTER:
                await self.kv.delete(f"replica.{replica.id}")


def _alive(replica: SchedulerReplica, now: datetime) -> bool:
    if not replica.heartbeat_at:
        return False
    return (now - parse_iso(replica.heartbeat_at)).total_seconds() <= ALIVE_SECONDS


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
