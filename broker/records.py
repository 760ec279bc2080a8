"""Typed records in a JetStream KV bucket, key `{org}.{id}`, with the KV revision as the
record's `version` (optimistic concurrency)."""

from __future__ import annotations

import asyncio
import logging
from typing import Generic, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from broker import codec, ids
from broker.refusals import Refusals
from broker.subjects import kv_key

log = logging.getLogger("batchdeck.records")
T = TypeVar("T", bound=msgspec.Struct)

SCAN_BATCH = 1000
SCAN_FETCH_TIMEOUT = 5.0
SCAN_IDLE_SECONDS = 5.0
SCAN_UNANSWERED_TRIES = 40
"""Pull requests of a scan that may find no responder (50 ms apart) before it fails."""


class VersionConflict(Exception):
    """The record changed since the revision the writer read (or exists, on create)."""


class Records(Generic[T]):
    """With `versioned`, `T` has a `version` field: it is filled from the KV revision on
    read and write, and never stored (the revision is the truth)."""

    def __init__(self, kv: KeyValue, type_: type[T], versioned: bool = True, leader_on_miss: bool = False) -> None:
        self.kv = kv
        self.js = kv._js  # noqa: SLF001
        self.type = type_
        self.versioned = versioned
        self.leader_on_miss = leader_on_miss
        self.stream = f"KV_{kv._name}"  # noqa: SLF001 - nats-py keeps the bucket name private
        self.prefix = f"$KV.{kv._name}."  # noqa: SLF001
        self.unreadable = Refusals(log)
        """Records a scan skipped because they do not decode as `T`."""

    def _decode(self, value: bytes, revision: int) -> T:
        return self._versioned(codec.decode(value, self.type), revision)

    def _versioned(self, record: T, revision: int) -> T:
        if self.versioned:
            record.version = revision  # type: ignore[attr-defined]
        return record

    async def get(self, org: str, record_id: str) -> T | None:
        """The record, or None. With `leader_on_miss`, a record a direct get did not find
        is asked of the stream's leader before it is called missing."""
        record = await self.get_any_replica(org, record_id)
        if record is None and self.leader_on_miss:
            return await self._get_from_leader(kv_key(org, record_id))
        return record

    async def get_any_replica(self, org: str, record_id: str) -> T | None:
        """A direct get only: it may miss a record written a moment ago. For a check that
        a compare-and-set write follows (which would find the record)."""
        try:
            entry = await self.kv.get(kv_key(org, record_id))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return self._decode(entry.value, entry.revision)

    async def _get_from_leader(self, key: str) -> T | None:
        """A direct get is answered by any replica of the bucket, and a follower may not
        have applied a write the caller has just been told about (a create, then a start
        of what it created). The stream's own message get is answered by its leader."""
        try:
            msg = await self.js.get_msg(self.stream, subject=f"{self.prefix}{key}")
        except NotFoundError:
            return None
        if not msg.data or (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            return None
        return self._decode(msg.data, msg.seq)

    async def create(self, org: str, record_id: str, record: T) -> T:
        """Store a new record; VersionConflict if the key exists."""
        try:
            revision = await self.kv.create(kv_key(org, record_id), self._encode(record))
        except KeyWrongLastSequenceError:
            raise VersionConflict(record_id) from None
        return self._versioned(record, revision)

    async def update(self, org: str, record_id: str, record: T, expected_version: int) -> T:
        """Compare-and-set; VersionConflict if the stored revision is not `expected_version`."""
        try:
            revision = await self.kv.update(kv_key(org, record_id), self._encode(record), last=expected_version)
        except KeyWrongLastSequenceError:
            raise VersionConflict(record_id) from None
        return self._versioned(record, revision)

    async def put(self, org: str, record_id: str, record: T) -> T:
        """Unconditional write (last writer wins)."""
        revision = await self.kv.put(kv_key(org, record_id), self._encode(record))
        return self._versioned(record, revision)

    async def scan(self, org: str) -> list[T]:
        """Every record of an org."""
        return [record for _, record in await self.scan_items(org)]

    async def scan_items(self, org: str, pattern: str = "*") -> list[tuple[str, T]]:
        """Every record of an org (whose id matches `pattern`, a KV key pattern) with its
        id, as of the call: a throw-away consumer delivers the last value of each key.

        The consumer is named here and deleted right after, so a busy API leaves no
        consumers behind (a KV watch's would linger for minutes, and a stream takes
        only so many); `inactive_threshold` is the backstop should the delete be lost.
        """
        stream, prefix = self.stream, self.prefix
        name = f"scan_{ids.new_id().lower()}"
        info = await self.js.add_consumer(stream, ConsumerConfig(
            name=name, filter_subject=f"{prefix}{org}.{pattern}", deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE, inactive_threshold=SCAN_IDLE_SECONDS, mem_storage=True, num_replicas=1,
        ))
        try:
            return await self._pull_all(stream, name, info.num_pending) if info.num_pending else []
        finally:
            # Fire and forget: the reply would only cost a round trip.
            await self.js._nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b"")  # noqa: SLF001

    async def _pull_all(self, stream: str, consumer: str, count: int) -> list[tuple[str, T]]:
        """The `count` messages a scan consumer holds, decoded, with their ids: pulled
        SCAN_BATCH at a time into one callback subscription (nats-py's `fetch` spends a
        task and a timer on every message: 140 us a record, 18 s for 100 000 executions).
        A batch that ends short (keys removed since the consumer counted them) ends it."""
        nc = self.js._nc  # noqa: SLF001
        inbox = nc.new_inbox()
        items: list[tuple[str, T]] = []
        failure: list[BaseException] = []
        received, wanted, ended_short, unanswered = 0, 0, False, 0
        batch_done = asyncio.Event()

        async def on_msg(msg: Msg) -> None:
            nonlocal received, ended_short, unanswered
            status = msg.headers.get("Status") if msg.headers and not msg.data else None
            if status is not None:
                if status in ("404", "408"):  # no more messages now, or the request expired
                    ended_short = True
                elif status == "503" and unanswered < SCAN_UNANSWERED_TRIES:
                    unanswered += 1  # no responders: on a cluster, a consumer just made may not listen yet
                else:
                    failure.append(RuntimeError(f"reading {stream}: {status} {msg.headers.get('Description', '')}"))
                batch_done.set()
                return
            received += 1
            if not (msg.headers and msg.headers.get("KV-Operation") in ("DEL", "PURGE")):
                key = msg.subject[len(self.prefix):]
                try:
                    items.append((key.split(".", 1)[1], self._decode(msg.data, msg.metadata.sequence.stream)))
                except (msgspec.DecodeError, msgspec.ValidationError) as err:
                    # One bad record (a runner of the org wrote junk into its own key) must
                    # not make the whole list fail: it is left out, and said.
                    self.unreadable.refuse("record", "%s: record %s does not read as %s (%s); left out", self.stream,
                                           key, self.type.__name__, err)
            if received >= wanted:
                batch_done.set()

        sub = await nc.subscribe(inbox, cb=on_msg)
        try:
            while received < count and not ended_short and not failure:
                wanted, tries = min(count, received + SCAN_BATCH), unanswered
                batch_done.clear()
                request = {"batch": wanted - received, "expires": int(SCAN_FETCH_TIMEOUT * 1e9)}
                await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", codec.encode(request), reply=inbox)
                await asyncio.wait_for(batch_done.wait(), SCAN_FETCH_TIMEOUT + 1)
                if unanswered > tries:
                    await asyncio.sleep(0.05)  # then ask again
        finally:
            await sub.unsubscribe()
        if failure:
            raise failure[0]
        return items

    def _encode(self, record: T) -> bytes:
        if self.versioned:
            record = msgspec.structs.replace(record, version=0)  # type: ignore[call-arg]
        return codec.encode(record)
