"""Typed records in a JetStream KV bucket, key `{org}.{id}`, with the KV revision as the
record's `version` (optimistic concurrency)."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker import codec
from broker.subjects import kv_key

T = TypeVar("T", bound=msgspec.Struct)


class VersionConflict(Exception):
    """The record changed since the revision the writer read (or exists, on create)."""


class Records(Generic[T]):
    """With `versioned`, `T` has a `version` field: it is filled from the KV revision on
    read and write, and never stored (the revision is the truth)."""

    def __init__(self, kv: KeyValue, type_: type[T], versioned: bool = True) -> None:
        self.kv = kv
        self.type = type_
        self.versioned = versioned

    def _decode(self, value: bytes, revision: int) -> T:
        return self._versioned(codec.decode(value, self.type), revision)

    def _versioned(self, record: T, revision: int) -> T:
        if self.versioned:
            record.version = revision  # type: ignore[attr-defined]
        return record

    async def get(self, org: str, record_id: str) -> T | None:
        try:
            entry = await self.kv.get(kv_key(org, record_id))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return self._decode(entry.value, entry.revision)

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
        id, read through a watch (one consumer, streamed), so it sees every write
        acknowledged before the call."""
        watcher = await self.kv.watch(f"{org}.{pattern}", ignore_deletes=True)
        items: list[tuple[str, T]] = []
        try:
            async for entry in watcher:
                if entry is None:
                    break
                items.append((entry.key.split(".", 1)[1], self._decode(entry.value, entry.revision)))
                if entry.delta == 0:
                    break
        finally:
            await watcher.stop()
        return items

    def _encode(self, record: T) -> bytes:
        if self.versioned:
            record = msgspec.structs.replace(record, version=0)  # type: ignore[call-arg]
        return codec.encode(record)
