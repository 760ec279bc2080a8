"""Identifiers: ULIDs (26 characters of Crockford base32, sortable by creation time)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(now_ms: int | None = None) -> str:
    """A new ULID: 48 bits of milliseconds since the epoch, 80 random bits."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return _base32(ms, 10) + _base32(int.from_bytes(os.urandom(10), "big"), 16)


def derived_id(source_id: str, salt: str) -> str:
    """A ULID-shaped id that is a pure function of another id.

    It keeps the time prefix of `source_id` when that is a ULID, so derived ids still
    sort by time; the rest (all of it for other ids) comes from a hash of `salt` and
    `source_id`. Used to make one trigger produce exactly one execution, however often the
    trigger message is redelivered; the salt names the org, so two orgs' equal trigger ids
    derive different executions.
    """
    digest = hashlib.sha256(f"{salt}:{source_id}".encode()).digest()
    head = source_id[:10].upper() if _is_ulid(source_id) else _base32(int.from_bytes(digest[10:16], "big"), 10)
    return head + _base32(int.from_bytes(digest[:10], "big"), 16)


def _is_ulid(text: str) -> bool:
    return len(text) == 26 and all(c in _ALPHABET for c in text.upper())


def tick_id(key: str, at_ms: int) -> str:
    """A ULID-shaped id that is a pure function of `key`, with `at_ms` as its time part:
    every scheduler replica names the same tick the same, so the execution derived from
    it is one even when the tick is re-published after the de-duplication window."""
    digest = hashlib.sha256(f"tick:{key}".encode()).digest()
    return _base32(at_ms, 10) + _base32(int.from_bytes(digest[:10], "big"), 16)


def instance_id() -> str:
    """A service instance's default id, `{host}-{pid}-{random}`, usable as one KV key
    token: the host name's dots and other characters are made dashes."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40].strip("-") or "instance"
    return f"{host}-{os.getpid()}-{new_id()[-4:].lower()}"
