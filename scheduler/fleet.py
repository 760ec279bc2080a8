"""The scheduler fleet: where catch-up starts, and the fleet epoch that makes
`run_on_startup` fire once per start of the fleet, not once per replica.

State lives in KV `bd_scheduler`:
- `epoch` is the fleet's lease: every live replica renews it each second. A replica
  that finds it lapsed (or missing) begins the next epoch by compare-and-set, so of
  replicas starting together exactly one begins it and the others join.
- `replica.{id}` is each replica's heartbeat with its `fired_through` watermark: every
  tick up to that instant was published. The newest watermark of all replicas is where
  catch-up starts after the whole fleet was down.
- `msg-id-salt`: a random value made once by the first replica ever, part of every
  tick's `Nats-Msg-Id` (`scheduler.service`): BD_TRIGGERS de-duplicates by id across all
  subjects, and an org that may publish its own triggers must not be able to name
  another org's next tick id and have that tick dropped as a duplicate.

Replicas never coordinate ticks: every replica fires every tick and JetStream
de-duplication keeps one.
"""

from __future__ import annotations

import logging
import os
import secrets
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
"""A heartbeat or lease older than this is lapsed (they are renewed every second)."""
FORGET_AFTER = timedelta(days=7)
"""Heartbeats of replicas stopped longer ago than this are removed."""
EPOCH_KEY = "epoch"
SALT_KEY = "msg-id-salt"


@dataclass(frozen=True)
class Membership:
    epoch: int
    fresh_start: bool
    """The fleet's lease had lapsed: this start began epoch `epoch`."""
    missed_since: datetime | None
    """Every tick up to this instant was fired by some replica; None when no replica ever ran."""
    salt: bytes = b""
    """The fleet's `msg-id-salt`, the same for every replica."""


class Fleet:
    def __init__(self, js: JetStreamContext, replica_id: str) -> None:
        self.js = js
        self.replica = SchedulerReplica(id=replica_id, host=socket.gethostname(), pid=os.getpid())

    async def join(self, now: datetime) -> Membership:
        self.kv = await self.js.key_value(streams.SCHEDULER_BUCKET)
        replicas = await self._replicas()
        marks = [parse_iso(r.fired_through) for r in replicas if r.fired_through]
        missed_since = max(marks) if marks else None
        epoch, fresh = await self._claim_epoch(now)
        self.replica.epoch, self.replica.started_at = epoch, to_iso(now)
        await self.beat(now, now if missed_since is None else min(missed_since, now), batches=0)
        await self._forget([r for r in replicas if r.id != self.replica.id], now)
        return Membership(epoch, fresh, missed_since, await self._salt())

    async def _salt(self) -> bytes:
        """The fleet's salt: read, or made by whichever replica gets there first."""
        try:
            return (await self.kv.get(SALT_KEY)).value
        except KeyNotFoundError:
            pass
        made = secrets.token_hex(16).encode()
        try:
            await self.kv.create(SALT_KEY, made)
            return made
        except KeyWrongLastSequenceError:
            return (await self.kv.get(SALT_KEY)).value  # another replica made it first

    async def beat(self, now: datetime, fired_through: datetime, batches: int) -> None:
        self.replica.heartbeat_at = to_iso(now)
        self.replica.fired_through = to_iso(fired_through)
        self.replica.batches = batches
        await self.kv.put(f"replica.{self.replica.id}", codec.encode(self.replica))
        await self._renew(now)

    async def leave(self, now: datetime, fired_through: datetime, batches: int) -> None:
        """A last heartbeat dated in the past: the replica no longer counts as alive, its
        watermark still counts for catch-up. The last replica to leave lets the lease
        lapse, so the next start is a fresh start of the fleet."""
        gone = now - timedelta(seconds=ALIVE_SECONDS * 2)
        self.replica.heartbeat_at = to_iso(gone)
        self.replica.fired_through = to_iso(fired_through)
        self.replica.batches = batches
        await self.kv.put(f"replica.{self.replica.id}", codec.encode(self.replica))
        others = [r for r in await self._replicas() if r.id != self.replica.id and _alive(r.heartbeat_at, now)]
        if not others:
            await self._renew(gone)

    async def _claim_epoch(self, now: datetime) -> tuple[int, bool]:
        """The current epoch, or the next one when the lease has lapsed."""
        for _ in range(10):
            current, revision = await self._epoch()
            if current is not None and _alive(current.renewed_at, now):
                return current.epoch, False
            new = SchedulerEpoch(epoch=current.epoch + 1 if current else 1, started_at=to_iso(now),
                                 by=self.replica.id, renewed_at=to_iso(now))
            try:
                if revision is None:
                    await self.kv.create(EPOCH_KEY, codec.encode(new))
                else:
                    await self.kv.update(EPOCH_KEY, codec.encode(new), last=revision)
                return new.epoch, True
            except KeyWrongLastSequenceError:
                continue  # a replica starting with us began it: look again, and join
        raise RuntimeError("could not claim the scheduler epoch: it keeps changing")

    async def _renew(self, at: datetime) -> None:
        current, revision = await self._epoch()
        if current is None or revision is None:
            return
        current.renewed_at = to_iso(at)
        try:
            await self.kv.update(EPOCH_KEY, codec.encode(current), last=revision)
        except KeyWrongLastSequenceError:
            pass  # another replica renewed it in the same instant

    async def _epoch(self) -> tuple[SchedulerEpoch | None, int | None]:
        try:
            entry = await self.kv.get(EPOCH_KEY)
        except KeyNotFoundError:
            return None, None
        return codec.decode(entry.value, SchedulerEpoch), entry.revision

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

    async def _forget(self, others: list[SchedulerReplica], now: datetime) -> None:
        for replica in others:
            if replica.heartbeat_at and now - parse_iso(replica.heartbeat_at) > FORGET_AFTER:
                await self.kv.delete(f"replica.{replica.id}")


def _alive(beat: str | None, now: datetime) -> bool:
    return beat is not None and (now - parse_iso(beat)).total_seconds() <= ALIVE_SECONDS


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
