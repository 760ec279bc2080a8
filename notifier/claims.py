"""One delivery per (execution, recipient), whatever the number of notifier instances
and restarts: each delivery is a record in KV `bd_notifications`, created by the first
instance to get there and then changed only by compare-and-set.

A record is `sending` while its holder works on it (renewed before every attempt),
then `sent` or `failed` for good. An instance that finds a settled record does nothing;
one that finds a `sending` record left alone for longer than the lease takes it over:
its holder stopped mid-delivery. The one window that can repeat a message is a holder
killed after the receiver took the message and before the record said `sent`; the
message then carries the same Message-ID or delivery id, so receivers can tell.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import msgspec
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker import codec
from broker.timestamps import now_iso, seconds_since
from broker.types import Notification

ClaimState = Literal["claimed", "settled", "busy"]


class ClaimLost(Exception):
    """The record changed under its holder: another instance took the delivery over."""


def target_key(target: str) -> str:
    """A recipient as one KV key token (addresses and URLs hold dots and slashes)."""
    return hashlib.sha256(target.encode()).hexdigest()[:24]


def delivery_key(record: Notification) -> str:
    return f"{record.org}.{record.execution_id}.{target_key(record.target)}"


@dataclass
class Claim:
    state: ClaimState
    record: Notification
    revision: int


class Claims:
    def __init__(self, kv: KeyValue, holder: str, lease: float) -> None:
        self.kv = kv
        self.holder = holder
        self.lease = lease

    async def claim(self, fresh: Notification) -> Claim:
        """Take the delivery `fresh` describes, or say why not: it is settled, or another
        instance holds it (`busy`, ask again after the lease)."""
        key = delivery_key(fresh)
        try:
            return Claim("claimed", fresh, await self.kv.create(key, codec.encode(fresh)))
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self.kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return Claim("busy", fresh, 0)  # removed between the two calls: try again later
        try:
            current = codec.decode(entry.value, Notification)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return Claim("settled", fresh, entry.revision)  # not ours to overwrite
        if current.status != "sending":
            return Claim("settled", current, entry.revision)
        if _age(current.updated_at) < self.lease:
            return Claim("busy", current, entry.revision)
        current.notifier, current.updated_at = self.holder, now_iso()
        try:
            return Claim("claimed", current, await self.kv.update(key, codec.encode(current), last=entry.revision))
        except KeyWrongLastSequenceError:
            return Claim("busy", current, entry.revision)  # another instance took it over first

    async def save(self, claim: Claim) -> None:
        """Write the claim's record if it is still ours (its revision); ClaimLost if not."""
        claim.record.updated_at = now_iso()
        try:
            claim.revision = await self.kv.update(delivery_key(claim.record), codec.encode(claim.record),
                                                  last=claim.revision)
        except KeyWrongLastSequenceError:
            raise ClaimLost(delivery_key(claim.record)) from None


def _age(moment: str) -> float:
    try:
        return seconds_since(moment)
    except ValueError:
        return float("inf")
