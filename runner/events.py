"""The live events of one execution on BD_EVENTS: log lines, progress, state.

Log lines get `idx` from 1, gap-free per execution (a later attempt continues after the
last line stored). Each action's output is kept up to its quota, and all runs of a runner
share one rate (runner.log_limits): a line past the quota gets no idx and is only
counted. Kept lines go through a bounded queue to one flusher that pipelines publishes
in chunks and awaits their acks together, so a chatty task costs few round trips; when
the queue is full or the rate spent, `log()` waits, the pipe fills and the task's writes
block: memory stays bounded and no kept line is dropped. Every log message carries
`Nats-Msg-Id: {org}.{execution_id}.{nonce}.log.{idx}`, so a retried publish is never
stored twice. The nonce is random per attempt: BD_EVENTS de-duplicates by id across
every subject, and a runner of another org, which publishes into the same stream, must
not be able to name this line's id in advance and have it dropped as a duplicate.
State events wait for the lines before them, so a reader never sees `succeeded`
before the last line.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from broker import codec, streams, subjects
from broker.timestamps import now_iso
from broker.types import Execution, LogLine, Progress
from runner.log_limits import Quota, Rate

log = logging.getLogger("batchdeck.runner")

MAX_LINE_CHARS = 16 * 1024
QUEUE_LINES = 4096
CHUNK_LINES = 512

_LEVEL_WORD = re.compile(r"\b(debug|info|warn|warning|error|err|fatal|critical)\b", re.IGNORECASE)
_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning", "error": "error",
           "err": "error", "fatal": "error", "critical": "error"}


def level_of(text: str, stream: str) -> str:
    """The level a line says it has in its first 40 characters, else stdout `info`,
    stderr `warning`."""
    match = _LEVEL_WORD.search(text[:40])
    if match:
        return _LEVELS[match.group(1).lower()]
    return "warning" if stream == "stderr" else "info"


def cut(text: str) -> str:
    if len(text) <= MAX_LINE_CHARS:
        return text
    return text[:MAX_LINE_CHARS] + f" … [line cut: {len(text) - MAX_LINE_CHARS} more characters]"


class EventStream:
    """Publishes the events of one execution; `await close()` flushes everything."""

    def __init__(self, js: JetStreamContext, org: str, execution_id: str, trace: bool,
                 rate: Rate | None = None) -> None:
        self.js = js
        self.quota = Quota()
        """The current action's allowance (set by the executor when an action begins)."""
        self.rate = rate
        self.org = org
        self.execution_id = execution_id
        self.headers = None if trace else {subjects.TRACE_HEADER: "false"}
        self._msg_id_prefix = f"{org}.{execution_id}.{secrets.token_hex(8)}.log."
        self.next_idx: int | None = None  # known once the first line is logged
        self._idx_lock = asyncio.Lock()
        self._queue: asyncio.Queue[LogLine | None] = asyncio.Queue(QUEUE_LINES)
        self._flusher: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name=f"events-{self.execution_id}")

    async def _last_idx(self) -> int:
        # A direct get names the subject it reads: a runner's grant confines it to its org.
        subject = subjects.exec_event(self.org, self.execution_id, "log")
        try:
            msg = await self.js.get_msg(streams.EVENTS, subject=subject, direct=True)
        except NotFoundError:
            return 0
        return int(codec.decode(msg.data, dict[str, Any]).get("idx", 0))

    async def log(self, text: str, stream: str = "stdout", action_index: int | None = None,
                  level: str | None = None) -> bool:
        """Queue one line (waits while the queue is full, or the runner's rate is spent);
        False when the action's quota dropped it instead. The runner's own lines are not
        counted against the quota."""
        msg = cut(text)
        if stream != "runner":
            size = len(msg.encode())
            if not self.quota.admit(size):
                return False
            if self.rate is not None:
                await self.rate.take(size)
        if self.next_idx is None:
            # Continue after the last line this execution already has (an earlier
            # attempt's); asked only by runs that log at all, once (stdout and stderr
            # may both get here first).
            async with self._idx_lock:
                if self.next_idx is None:
                    self.next_idx = await self._last_idx() + 1
        line = LogLine(
            idx=self.next_idx, ts=now_iso(), level=level or level_of(text, stream), stream=stream,  # type: ignore[arg-type]
            action_index=action_index, msg=msg, execution_id=self.execution_id,
        )
        self.next_idx += 1
        self._drained.clear()
        await self._queue.put(line)
        return True

    def past_quota(self, raw: bytes | bytearray, cut: int) -> bool:
        """True, and the line counted as dropped, when the action's quota is spent already
        (a control line, `::…`, is always read: it may carry the result)."""
        if not self.quota.dropped_lines or raw.startswith(b"::"):
            return False
        self.quota.dropped_lines += 1
        self.quota.dropped_bytes += len(raw) + cut
        self.dropped()
        return True

    def dropped(self) -> None:
        """A line was dropped (for counting by a subclass)."""

    async def progress(self, percent: float | None, text: str | None) -> None:
        event = Progress(execution_id=self.execution_id, percent=percent, text=text, ts=now_iso())
        await self._publish(subjects.exec_event(self.org, self.execution_id, "progress"), codec.encode(event))

    async def state(self, execution: Execution) -> None:
        """Publish the whole execution after every line queued before it."""
        await self.flush()
        await self._publish(subjects.exec_event(self.org, self.execution_id, "state"), codec.encode(execution))

    async def flush(self) -> None:
        if self._queue.empty() and self._drained.is_set():
            return
        await self._drained.wait()

    async def close(self) -> None:
        await self.flush()
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        merged = {**(self.headers or {}), **(headers or {})} or None
        await _retrying(lambda: self.js.publish(subject, data, headers=merged))

    async def _flush_forever(self) -> None:
        subject = subjects.exec_event(self.org, self.execution_id, "log")
        while True:
            first = await self._queue.get()
            chunk = [first]
            while len(chunk) < CHUNK_LINES and not self._queue.empty():
                chunk.append(self._queue.get_nowait())
            await self._publish_chunk(subject, chunk)
            if self._queue.empty():
                self._drained.set()

    async def _publish_chunk(self, subject: str, lines: list[LogLine]) -> None:
        pending = lines
        delay = 0.1
        while pending:
            futures = []
            for line in pending:
                headers = {**(self.headers or {}), "Nats-Msg-Id": f"{self._msg_id_prefix}{line.idx}"}
                futures.append(await self.js.publish_async(subject, codec.encode(line), headers=headers))
            results = await asyncio.gather(*futures, return_exceptions=True)
            pending = [line for line, result in zip(pending, results, strict=True) if isinstance(result, BaseException)]
            if pending:
                log.warning("%d log lines of %s not stored yet; retrying", len(pending), self.execution_id)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


async def _retrying(publish) -> None:
    """Publish until JetStream takes it: events are never dropped for a hiccup."""
    delay = 0.1
    while True:
        try:
            await publish()
            return
        except Exception as err:  # noqa: BLE001 - any NATS trouble (a cancel is not an Exception)
            log.warning("event publish failed (%s); retrying", err)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
