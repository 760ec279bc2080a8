"""One execution's log, "history then live": the lines the store keeps (`exec.logs`,
paged by idx), then the BD_EVENTS stream from its start, skipping every line whose idx
was already yielded — no gap, no duplicate. `batchdeck logs` and the dashboard's log
pane both read it.

The stream is read with callback subscriptions that fill a buffer, handed out every
FLUSH_SECONDS or every FLUSH_LINES lines: a reader that awaited each message would not
keep up with a task printing 10 000 lines a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from broker import codec, ids, streams, subjects
from broker.client import ApiClient
from broker.errors import Unavailable
from broker.types import FINAL_STATUSES

LOG_PAGE = 2000
"""Lines asked of the store per `exec.logs` request (a reply may hold fewer)."""
FLUSH_SECONDS = 0.05
"""Longest wait before buffered stream lines are yielded (seconds)."""
FLUSH_LINES = 5000
"""Buffered stream lines that are yielded without waiting for FLUSH_SECONDS."""
QUIET_SECONDS = 0.5
"""A log stream with no message for this long has delivered what it holds (seconds)."""

LogLineDict = dict[str, Any]
"""A LogLine (broker.types) as decoded JSON: idx, ts, level, stream, action_index, msg, execution_id."""


async def log_batches(api: ApiClient, execution_id: str, follow: bool,
                      after_idx: int = 0) -> AsyncIterator[list[LogLineDict]]:
    """Yield the lines of `execution_id` with idx > `after_idx`, in idx order, in
    non-empty batches: the stored history first (skipped when no store runs), then the
    stream. Without `follow`, ends once the stream has been quiet for QUIET_SECONDS;
    with it, once the execution reached a final state and its log stream is quiet.
    Stopping the iteration (or `aclose()`) releases the subscriptions."""
    last_idx = after_idx
    async for page in _stored_pages(api, execution_id, after_idx):
        last_idx = page[-1]["idx"]
        yield page
    live = _LiveLines(last_idx)
    js = api.nc.jetstream()
    subscriptions = [await js.subscribe(subjects.exec_event(api.org, execution_id, "log"), cb=live.on_log,
                                        stream=streams.EVENTS, ordered_consumer=True, config=_named())]
    try:
        if follow:
            subscriptions.append(await js.subscribe(
                subjects.exec_event(api.org, execution_id, "state"), cb=live.on_state, stream=streams.EVENTS,
                ordered_consumer=True, deliver_policy=DeliverPolicy.LAST, config=_named()))
        while True:
            await live.wait_for_lines(FLUSH_SECONDS)
            batch = live.take()
            if batch:
                yield batch
            elif live.quiet_for() >= QUIET_SECONDS and (not follow or live.ended.is_set()):
                return
    finally:
        for subscription in subscriptions:
            # The connection may be closing already (the app quits): then nothing is left to release.
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()


def _named() -> ConsumerConfig:
    """A consumer config with a fresh name: nats-py then creates the consumer with its
    filter in the request subject (`$JS.API.CONSUMER.CREATE.{stream}.{name}.{filter}`),
    the one form a NATS server can confine to an org's subjects (deploy/nats/auth.conf)."""
    return ConsumerConfig(name=f"logs_{ids.new_id().lower()}")


async def _stored_pages(api: ApiClient, execution_id: str, after_idx: int) -> AsyncIterator[list[LogLineDict]]:
    """The store's lines after `after_idx`, a page at a time; nothing when no store runs."""
    offset = after_idx
    while True:
        try:
            page = await api.call("exec", "logs", {"id": execution_id, "offset": offset, "limit": LOG_PAGE})
        except Unavailable:
            return  # no store running: the stream alone has what it still holds (7 days)
        lines = [line for line in page["items"] if _idx(line) > offset]
        if not lines:
            return
        yield lines
        offset = _idx(lines[-1])  # a page may hold fewer lines than asked (the reply size limit)


class _LiveLines:
    """What the stream subscriptions deliver: new lines (by idx), the time of the last
    log message, whether a final state was seen."""

    def __init__(self, last_idx: int) -> None:
        self.last_idx = last_idx
        self.lines: list[LogLineDict] = []
        self.ended = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._last_message_at = self._loop.time()
        self._full = asyncio.Event()

    async def on_log(self, msg: Any) -> None:
        self._last_message_at = self._loop.time()  # a duplicate still shows the stream is not quiet
        line = codec.decode(msg.data, LogLineDict)
        idx = _idx(line)
        if idx <= self.last_idx:
            return  # yielded already (from the store, or published twice)
        self.last_idx = idx
        self.lines.append(line)
        if len(self.lines) >= FLUSH_LINES:
            self._full.set()

    async def on_state(self, msg: Any) -> None:
        if codec.decode(msg.data, dict[str, Any]).get("status") in FINAL_STATUSES:
            self.ended.set()

    async def wait_for_lines(self, timeout: float) -> None:
        """Return after `timeout` seconds, or sooner when FLUSH_LINES lines are waiting."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), timeout)

    def take(self) -> list[LogLineDict]:
        """The lines buffered since the last take."""
        lines, self.lines = self.lines, []
        self._full.clear()
        return lines

    def quiet_for(self) -> float:
        """Seconds since the last log message (or since the subscription began)."""
        return self._loop.time() - self._last_message_at


def _idx(line: LogLineDict) -> int:
    return line.get("idx") or 0
