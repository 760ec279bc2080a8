"""JetStream calls a runner makes while its run goes on: a leader change or a server
restart makes them fail for a few seconds, which must never end a run or lose a write."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from broker.streams import JETSTREAM_UNAVAILABLE

log = logging.getLogger("batchdeck.runner")

T = TypeVar("T")

RETRY_LIMIT = 30.0
"""A call is tried again with doubling pauses while the next pause is at most this
(about a minute in all); then its error is raised."""


async def through_leader_changes(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """`await call()`, tried again while JetStream does not answer. A write that did land
    before its answer was lost is written again: callers use compare-and-set where that
    matters (a second put of the same value is harmless)."""
    pause = 0.1
    while True:
        try:
            return await call()
        except JETSTREAM_UNAVAILABLE as err:
            if pause > RETRY_LIMIT:
                raise
            log.warning("%s: %r; retrying", what, err)
            await asyncio.sleep(pause)
            pause *= 2
