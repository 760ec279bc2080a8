"""One execution's log, "history then live": the lines the store keeps (`exec.logs`,
paged by idx), then the live lines, skipping every line whose idx was already yielded —
no gap, no duplicate. `batchdeck logs` and the dashboard's log pane both read it.

Live lines come one of two ways, by what the connection's account may do:
- with JetStream (a service user, any user of an open server): the BD_EVENTS stream
  of the execution from its start, through an ordered consumer — it also holds what
  the store has not ingested yet;
- without (a user of an org's account, deploy/nats: no JetStream there): the org's
  events as they are published, subscribed to before the history is read; a line
  that was published before the subscription but is not in the history yet (the store
  a moment behind) is asked of the store again until it has it.

Lines are collected by callbacks into a buffer, handed out every FLUSH_SECONDS or
every FLUSH_LINES lines: a reader that awaited each message would not keep up with a
task printing 10 000 lines a second.
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
from broker.errors import NotFound, Unavailable
from broker.types import FINAL_STATUSES

LOG_PAGE = 2000
"""Lines asked of the store per `exec.logs` request (a reply may hold fewer)."""
FLUSH_SECONDS = 0.05
"""Longest wait before buffered live lines are yielded (seconds)."""
FLUSH_LINES = 5000
"""Buffered live lines that are yielded without waiting for FLUSH_SECONDS."""
QUIET_SECONDS = 0.5
"""A log with no message for this long has delivered what it holds (seconds)."""
GAP_PATIENCE = 10.0
"""Seconds the store is given to ingest lines that were published before the live
subscription began (it is usually milliseconds behind); then they are reported missing."""

LogLineDict = dict[str, Any]
"""A LogLine (broker.types) as decoded JSON: idx, ts, level, stream, action_index, msg, execution_id."""


async def log_batches(api: ApiClient, execution_id: str, follow: bool,
                      after_idx: int = 0) -> AsyncIterator[list[LogLineDict]]:
    """Yield the lines of `execution_id` with idx > `after_idx`, in idx order, in
    non-empty batches: the stored history first (skipped when no store runs), then the
    live lines. Without `follow`, ends once the log has been quiet for QUIET_SECONDS;
    with it, once the execution reached a final state and its log is quiet.
    Stopping the iteration (or `aclose()`) releases the subscriptions."""
    if await streams.has_jetstream(api.nc):
        feed = _stream_feed(api, execution_id, follow, after_idx)
    else:
        feed = _subscribed_feed(api, execution_id, follow, after_idx)
    async with contextlib.aclosing(feed) as batches:
        async for batch in batches:
            yield batch


# ---- with JetStream: the stream ------------------------------------------------------------


async def _stream_feed(api: ApiClient, execution_id: str, follow: bool,
                       after_idx: int) -> AsyncIterator[list[LogLineDict]]:
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
        await _release(subscriptions)


def _named() -> ConsumerConfig:
    """A consumer config with a fresh name: nats-py then creates the consumer with its
    filter in the request subject (`$JS.API.CONSUMER.CREATE.{stream}.{name}.{filter}`)."""
    return ConsumerConfig(name=f"logs_{ids.new_id().lower()}")


# ---- without: the live events and the store ------------------------------------------------


async def _subscribed_feed(api: ApiClient, execution_id: str, follow: bool,
                           after_idx: int) -> AsyncIterator[list[LogLineDict]]:
    live = _LiveLines(after_idx, keep_order=False)
    nc = api.nc
    subscriptions = [await nc.subscribe(subjects.exec_event(api.org, execution_id, "log"), cb=live.on_log)]
    try:
        if follow:
            subscriptions.append(await nc.subscribe(subjects.exec_event(api.org, execution_id, "state"),
                                                    cb=live.on_state))
        await nc.flush()  # subscribed before the history is read: nothing published after falls between
        if follow:
            try:
                if (await api.call("exec", "get", {"id": execution_id}))["status"] in FINAL_STATUSES:
                    live.ended.set()
            except NotFound:
                pass  # older than the live state (7 days): the history has it all
        last_idx = after_idx
        async for page in _stored_pages(api, execution_id, after_idx):
            last_idx = page[-1]["idx"]
            yield page
        live.skip_through(last_idx)
        while True:
            await live.wait_for_lines(FLUSH_SECONDS)
            batch = live.take()
            if batch and batch[0]["idx"] > last_idx + 1:
                # Published before the subscription, not in the history yet: the store has them in a moment.
                async for page in _gap(api, execution_id, last_idx, batch[0]["idx"]):
                    yield page
            if batch:
                last_idx = batch[-1]["idx"]
                yield batch
            elif live.quiet_for() >= QUIET_SECONDS and (not follow or live.ended.is_set()):
                return
    finally:
        await _release(subscriptions)


async def _gap(api: ApiClient, execution_id: str, after: int, before: int) -> AsyncIterator[list[LogLineDict]]:
    """The lines after `after` and before `before`, from the store, asked again while it
    has not ingested them yet (for GAP_PATIENCE seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GAP_PATIENCE
    while after + 1 < before:
        got = False
        async for page in _stored_pages(api, execution_id, after):
            page = [line for line in page if line["idx"] < before]
            if page:
                got = True
                after = page[-1]["idx"]
                yield page
            if after + 1 >= before:
                return
        if not got and loop.time() > deadline:
            return  # the store never got them (no store, or the lines expired): the log goes on after the gap
        if not got:
            await asyncio.sleep(0.2)


async def _release(subscriptions: list[Any]) -> None:
    for subscription in subscriptions:
        # The connection may be closing already (the app quits): then nothing is left to release.
        with contextlib.suppress(nats.errors.Error):
            await subscription.unsubscribe()


# ---- shared ----------------------------------------------------------------------------------


async def _stored_pages(api: ApiClient, execution_id: str, after_idx: int) -> AsyncIterator[list[LogLineDict]]:
    """The store's lines after `after_idx`, a page at a time; nothing when no store runs."""
    offset = after_idx
    while True:
        try:
            page = await api.call("exec", "logs", {"id": execution_id, "offset": offset, "limit": LOG_PAGE})
        except Unavailable:
            return  # no store running: the stream alone has what it still holds (7 days)
        except NotFound:
            return  # the store has not seen the run yet: the live lines will have it all
        lines = [line for line in page["items"] if _idx(line) > offset]
        if not lines:
            return
        yield lines
        offset = _idx(lines[-1])  # a page may hold fewer lines than asked (the reply size limit)


class _LiveLines:
    """What the subscriptions deliver: new lines (by idx), the time of the last log
    message, whether a final state was seen. A stream delivers in idx order; core
    subscriptions from several publishes may not (`keep_order=False` sorts each take)."""

    def __init__(self, last_idx: int, keep_order: bool = True) -> None:
        self.last_idx = last_idx
        self.keep_order = keep_order
        self.lines: list[LogLineDict] = []
        self._seen: set[int] = set()
        self.ended = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._last_message_at = self._loop.time()
        self._full = asyncio.Event()

    async def on_log(self, msg: Any) -> None:
        self._last_message_at = self._loop.time()  # a duplicate still shows the log is not quiet
        line = codec.decode(msg.data, LogLineDict)
        idx = _idx(line)
        if idx <= self.last_idx or (not self.keep_order and idx in self._seen):
            return  # yielded already (from the store, or published twice)
        if self.keep_order:
            self.last_idx = idx
        else:
            self._seen.add(idx)
        self.lines.append(line)
        if len(self.lines) >= FLUSH_LINES:
            self._full.set()

    async def on_state(self, msg: Any) -> None:
        if codec.decode(msg.data, dict[str, Any]).get("status") in FINAL_STATUSES:
            self.ended.set()

    def skip_through(self, idx: int) -> None:
        """Drop what the history already yielded (up to `idx`), and anything older later."""
        self.last_idx = max(self.last_idx, idx)
        self.lines = [line for line in self.lines if _idx(line) > self.last_idx]

    async def wait_for_lines(self, timeout: float) -> None:
        """Return after `timeout` seconds, or sooner when FLUSH_LINES lines are waiting."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), timeout)

    def take(self) -> list[LogLineDict]:
        """The lines buffered since the last take (in idx order, none yielded before)."""
        lines, self.lines = self.lines, []
        self._full.clear()
        if not self.keep_order:
            lines = sorted((line for line in lines if _idx(line) > self.last_idx), key=_idx)
            if lines:
                self.last_idx = _idx(lines[-1])
                self._seen = {i for i in self._seen if i > self.last_idx}
        return lines

    def quiet_for(self) -> float:
        """Seconds since the last log message (or since the subscription began)."""
        return self._loop.time() - self._last_message_at


def _idx(line: LogLineDict) -> int:
    return line.get("idx") or 0
