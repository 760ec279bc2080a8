"""The last lines of an execution's log, for an email.

The store answers `exec.logs` newest first; it may not have ingested the run's last
lines yet when the final state arrives (they are published just before it), so the
answer is awaited until it reaches the last line BD_EVENTS holds for the run. Without a
store (or for a `trace: false` run, which the store never keeps) the lines are read
from BD_EVENTS itself, for logs short enough to read whole.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import msgspec
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from broker import codec, streams, subjects
from broker.client import ApiClient
from broker.errors import ApiError
from broker.types import Execution, LogLine

log = logging.getLogger("batchdeck.notifier")

STORE_WAIT = 5.0
"""Seconds to wait for the store to reach the run's last line."""
STREAM_READ_LIMIT = 10_000
"""Longest log read whole from BD_EVENTS when the store cannot answer."""


async def last_lines(nc: Client, execution: Execution, count: int) -> list[LogLine]:
    """Up to `count` of the run's last lines, oldest first."""
    newest = await _newest_in_stream(nc, execution)
    if newest is None:
        return []
    lines = await _from_store(nc, execution, count, newest.idx)
    if lines is not None:
        return lines
    if newest.idx > STREAM_READ_LIMIT:
        return [newest]
    return await _from_stream(nc, execution, count, newest.idx)


async def _newest_in_stream(nc: Client, execution: Execution) -> LogLine | None:
    subject = subjects.exec_event(execution.org, execution.id, "log")
    try:
        msg = await nc.jetstream().get_last_msg(streams.EVENTS, subject)
        return codec.decode(msg.data, LogLine)
    except NotFoundError:
        return None
    except (NatsError, asyncio.TimeoutError, msgspec.DecodeError, msgspec.ValidationError) as err:
        log.warning("cannot read the last log line of %s: %r", execution.id, err)
        return None


async def _from_store(nc: Client, execution: Execution, count: int, newest_idx: int) -> list[LogLine] | None:
    """The store's newest lines once they reach `newest_idx`; None when it cannot say."""
    api = ApiClient(nc, execution.org, timeout=STORE_WAIT)
    deadline = time.monotonic() + STORE_WAIT
    while True:
        try:
            reply = await api.call("exec", "logs", {"id": execution.id, "order": "desc", "limit": count})
            lines = [msgspec.convert(item, LogLine) for item in reply["items"]]
        except (ApiError, msgspec.ValidationError, KeyError, TypeError):
            return None
        if lines and lines[0].idx >= newest_idx:
            return lines[::-1]
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.25)


async def _from_stream(nc: Client, execution: Execution, count: int, newest_idx: int) -> list[LogLine]:
    subject = subjects.exec_event(execution.org, execution.id, "log")
    kept: collections.deque[LogLine] = collections.deque(maxlen=count)
    js = nc.jetstream()
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        while True:
            msg = await sub.next_msg(timeout=STORE_WAIT)
            try:
                line = codec.decode(msg.data, LogLine)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            kept.append(line)
            if line.idx >= newest_idx:
                return list(kept)
    except (NatsError, asyncio.TimeoutError) as err:
        log.warning("reading the log of %s from %s: %r", execution.id, streams.EVENTS, err)
        return list(kept)
    finally:
        try:
            await sub.unsubscribe()
        except NatsError:
            pass
