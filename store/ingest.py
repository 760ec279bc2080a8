"""BD_EVENTS -> DuckDB, exactly once.

One durable pull consumer, `store_history`, read strictly in order (`store.puller`):
take a batch, write it in one transaction that also records the sequence of its last event, then ack
(AckPolicy.ALL: one ack covers the batch). On every start the consumer is re-created to
begin right after the committed sequence, so events that were written but not acked
(a crash between commit and ack) are not read again, and events that were read but
not written (a crash before the commit) are.

The read is the costly half: the messages arrive as raw bytes (`store.raw_inbox`), the
stream sequence is read from the ack subject of the first and last message of a batch
only, and the log lines of a batch, most of its events, are decoded in one msgspec
call; the org and execution of lines come from their subjects, kept as runs.

The org of every row is its subject's: a runner of one org may publish only on its org's
subjects, but it writes the body. An event whose body names another org (or, for an
execution's events, another execution) than its subject is not stored: it is counted
(`events_refused`) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from concurrent.futures import Executor
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from broker import streams, subjects
from broker.refusals import Refusals
from broker.timestamps import parse_iso
from broker.types import DefinitionEvent, Execution, LogLine, Notification
from store.history import Batch, History
from store.puller import Puller
from store.raw_inbox import DATA, HEADERS, REPLY, SUBJECT, RawMessage, header

log = logging.getLogger("batchdeck.store")

CONSUMER = "store_history"
FETCH = 20000
ACK_WAIT = 300.0
TRACE_OFF = "false"
TRACE_HEADER = subjects.TRACE_HEADER.encode()
ACK_V1_TOKENS = 9
ACK_V2_MIN_TOKENS = 11
ACK_V1_PENDING = 8
ACK_V2_PENDING = 10


# Events are decoded into the contract's types: anything that reaches the database has
# the types its columns expect, so no event can make a batch's transaction fail.
_decode_line = msgspec.json.Decoder(LogLine).decode
_decode_lines = msgspec.json.Decoder(list[LogLine]).decode
_decode_state = msgspec.json.Decoder(Execution).decode
_decode_definition = msgspec.json.Decoder(DefinitionEvent).decode
_decode_notification = msgspec.json.Decoder(Notification).decode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode


class Ingest:
    def __init__(self, nc: Client, history: History, fetch: int = FETCH, writer: Executor | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream() if nc is not None else None
        self.history = history
        self.fetch = fetch
        self.writer = writer
        """Where the history's writes run (a thread of their own: queries never wait for one, nor delay one)."""
        self.lost = 0
        """Events that left BD_EVENTS (its size or age limit, a purge) before the store read them."""
        self.committed = 0
        self.taken = 0
        """The last sequence handed to a write: committed, or being written."""
        self.events = 0
        self.skipped = 0
        self.stream_last_seq = 0
        """BD_EVENTS' last sequence as last seen: at each (re)start, and with each batch
        read (its last message's sequence plus the messages pending after it)."""
        self._unreadable_through = 0
        """Events up to here expired before the store read them: they count as no lag."""
        self._behind_since: float | None = None
        self.puller: Puller | None = None
        self.refusals = Refusals(log)

    @property
    def lag_events(self) -> int:
        """Events in BD_EVENTS the history does not hold yet (as of the last batch read)."""
        return max(0, self.stream_last_seq - max(self.committed, self._unreadable_through))

    def lag_seconds(self) -> float:
        """How long the history has been behind BD_EVENTS; 0 while it holds every event."""
        since = self._behind_since
        return 0.0 if since is None else time.monotonic() - since

    def _note_lag(self) -> None:
        if self.lag_events == 0:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = time.monotonic()

    async def run(self) -> None:
        """Ingest until cancelled; NATS trouble is retried."""
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # server restart, consumer gone: start over from the committed sequence
                log.warning("ingest: %r; resuming from the last committed event", err)
                await asyncio.sleep(1.0)

    async def _consume(self) -> None:
        self.committed = self.taken = await self._in_writer(self.history.committed_seq)
        await self._reset_consumer(self.committed + 1)
        puller = self.puller = Puller(self.nc, streams.EVENTS, CONSUMER, self.fetch)
        await puller.start()
        # One batch is written (in a thread, DuckDB runs without the GIL) while the next is
        # read and decoded here; the writes, and the acks after them, stay one at a time and
        # in order.
        writing: asyncio.Task[None] | None = None
        try:
            while True:
                messages = await _next_batch(puller, writing)  # the next batch is requested meanwhile
                if not messages:
                    continue
                batch = self._batch(messages)
                if writing is not None:
                    await writing  # a failed write raises here: start over from the committed sequence
                fresh = batch.last_seq > self.taken  # else all replay: only acked
                if fresh:
                    self.taken = batch.last_seq
                writing = asyncio.ensure_future(self._write(batch if fresh else None, messages[-1]))
        finally:
            try:
                if writing is not None and not writing.cancelled():
                    # Settled before anything else: a restart reads the committed sequence.
                    with contextlib.suppress(Exception):  # this exit's own error is the one reported
                        await writing
            finally:
                await puller.stop()

    async def _write(self, batch: Batch | None, last: RawMessage) -> None:
        """Commit the batch, if any, then ack up to its last message."""
        if batch is not None:
            await self._in_writer(self.history.write, batch)
            self.committed = batch.last_seq
            self.events += batch.events
            self._note_lag()
        await self.puller.ack(last)

    async def _in_writer(self, work: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.writer, work, *args)

    def _missed(self, first: int, last: int, why: str) -> None:
        """Events `first`..`last` will never be in the history: said, and counted."""
        count = last - first + 1
        self.lost += count
        log.warning("events %d-%d (%d) left %s before the store read them (%s): the history lacks them",
                    first, last, count, streams.EVENTS, why)

    async def _reset_consumer(self, start: int) -> None:
        info = await self.js.stream_info(streams.EVENTS)
        self.stream_last_seq = info.state.last_seq
        if start > info.state.last_seq + 1:
            log.warning("%s ends at event %d but the history holds events up to %d: the stream was "
                        "re-created; reading it from its start", streams.EVENTS, info.state.last_seq, start - 1)
            self.committed = self.taken = 0
            start = info.state.first_seq
        if start < info.state.first_seq:
            if self.committed:
                self._missed(start, info.state.first_seq - 1, "its size or age limit")
            start = info.state.first_seq
        self._unreadable_through = start - 1
        self.taken = max(self.taken, start - 1)  # what is before `start` is written, or reported missing
        self._note_lag()
        try:
            await self.js.delete_consumer(streams.EVENTS, CONSUMER)
        except NotFoundError:
            pass
        await self.js.add_consumer(streams.EVENTS, ConsumerConfig(
            durable_name=CONSUMER, filter_subject=subjects.EVENTS_SUBJECTS[0], ack_policy=AckPolicy.ALL,
            ack_wait=ACK_WAIT, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(start, 1),
            max_ack_pending=-1, max_waiting=4,
        ))

    def _batch(self, messages: list[RawMessage]) -> Batch:
        batch = Batch()
        first, last = _stream_seq(messages[0]), _stream_seq(messages[-1])
        # Read in order from the committed sequence on, a batch holds no replay unless it
        # starts at or before the last one written (a redelivery after ack_wait): only then
        # look at each.
        if first <= self.taken:
            messages = [m for m in messages if _stream_seq(m) > self.taken]
        elif first > self.taken + 1 and self.taken:
            # The consumer reads every subject of the stream: a jump in sequence is events
            # that were removed before they were read (the stream's bytes limit let the
            # oldest go while the store was behind).
            self._missed(self.taken + 1, first - 1, "its size or age limit, or a purge")
        lines = _Lines()
        for message in messages:
            if TRACE_HEADER in message[HEADERS] and header(message, TRACE_HEADER) == TRACE_OFF:
                self.skipped += 1
                continue
            route = _route(message[SUBJECT])
            if route[1] == "exec" and route[3] == "log":
                lines.add(route, message[DATA])  # decoded together below: most events are log lines
            else:
                self._add(batch, message[SUBJECT].decode(errors="replace"), route, message[DATA])
        batch.events += lines.into(batch.logs, self.refusals)
        batch.last_seq = last
        self.stream_last_seq = max(self.stream_last_seq, last + _pending_after(messages[-1]))
        self._note_lag()
        return batch

    def _add(self, batch: Batch, subject: str, route: tuple[str, str, str | None, str | None], data: bytes) -> None:
        org, kind, execution_id, what = route
        try:
            if kind == "exec" and what == "state":
                execution = _decode_state(data)
                if not self._subjects_own(subject, org, execution.org, execution_id, execution.id):
                    return
                batch.add_execution(org, msgspec.to_builtins(execution))
            elif kind == "trigger":
                trigger = _decode_object(data)
                if not self._subjects_own(subject, org, trigger.get("org") or org):
                    return
                batch.triggers.append(_trigger_row(org, trigger))
            elif kind == "def":
                definition = _decode_definition(data)
                if not self._subjects_own(subject, org, definition.org):
                    return
                batch.definitions.append({**msgspec.structs.asdict(definition), "org": org})
            elif kind == "notify":
                notification = _decode_notification(data)
                if not self._subjects_own(subject, org, notification.org):
                    return
                batch.add_notification(org, _notification_row(notification))
            else:
                return  # progress events are kept on the execution's state (progress_percent/text)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("event on %s is not what it should be (%s); not stored", subject, err)
            return
        batch.events += 1

    def _subjects_own(self, subject: str, org: str, body_org: Any, execution_id: str | None = None,
                      body_execution_id: str | None = None) -> bool:
        """Whether the body names the subject's org (and execution); else refused and counted."""
        if body_org != org:
            self.refusals.refuse("org", "event on %s names org %r: not stored (an event's org is its subject's)",
                                 subject, body_org)
            return False
        if execution_id is not None and body_execution_id != execution_id:
            self.refusals.refuse("execution", "event on %s names execution %r: not stored", subject,
                                 body_execution_id)
            return False
        return True


async def _next_batch(puller: Puller, writing: asyncio.Task[None] | None) -> list[RawMessage]:
    """The puller's next batch; should the write in flight fail meanwhile, its error at
    once (not with the next batch, which may be long in coming)."""
    if writing is None or writing.done():
        return await puller.next_batch()
    reading = asyncio.ensure_future(puller.next_batch())
    try:
        await asyncio.wait((reading, writing), return_when=asyncio.FIRST_COMPLETED)
        if not reading.done() and writing.exception() is not None:
            writing.result()
        return await reading
    finally:
        reading.cancel()  # when not done: this consume is over


def _stream_seq(message: RawMessage) -> int:
    """The stream sequence in a JetStream reply subject: `$JS.ACK.<stream>.<consumer>.
    <delivered>.<stream seq>.<consumer seq>.<time>.<pending>`, or from nats-server 2.10
    on possibly `$JS.ACK.<domain>.<account hash>.<stream>...<pending>.<token>` (two
    tokens more in front, one or more behind)."""
    tokens = message[REPLY].split(b".")
    if len(tokens) == ACK_V1_TOKENS:
        return int(tokens[5])
    if len(tokens) >= ACK_V2_MIN_TOKENS and tokens[:2] == [b"$JS", b"ACK"]:
        return int(tokens[7])
    raise ValueError(f"not a JetStream message: reply subject {message[REPLY]!r}")


def _pending_after(message: RawMessage) -> int:
    """The messages the consumer had left after this one, from its reply subject (0 when
    the subject does not say)."""
    tokens = message[REPLY].split(b".")
    index = ACK_V1_PENDING if len(tokens) == ACK_V1_TOKENS else ACK_V2_PENDING
    try:
        return int(tokens[index])
    except (IndexError, ValueError):
        return 0


@functools.lru_cache(maxsize=65536)
def _route(subject: bytes) -> tuple[str, str, str | None, str | None]:
    """(org, kind, execution id, what) of `bd.{org}.evt.{kind}...`; cached, since a
    batch holds many lines of few executions."""
    tokens = subject.decode(errors="replace").split(".")
    if tokens[3] == "exec" and len(tokens) == 6:
        return tokens[1], "exec", tokens[4], tokens[5]
    return tokens[1], tokens[3], None, None


class _Lines:
    """Log events of a batch, decoded in one call (one JSON array) instead of one each.
    A runner sends the lines of an execution in chunks, so the org and execution of
    consecutive lines are kept as runs: (route, count)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.routes: list[tuple[str, str, str | None, str | None]] = []
        self.counts: list[int] = []

    def add(self, route: tuple[str, str, str | None, str | None], data: bytes) -> None:
        self.bodies.append(data)
        if self.routes and self.routes[-1] is route:  # _route is cached: one tuple per subject
            self.counts[-1] += 1
        else:
            self.routes.append(route)
            self.counts.append(1)

    def into(self, logs: dict[str, list[Any]], refusals: Refusals) -> int:
        if not self.bodies:
            return 0
        try:
            lines: list[LogLine | None] = _decode_lines(b"[" + b",".join(self.bodies) + b"]")
        except (msgspec.DecodeError, msgspec.ValidationError):
            lines = [_line_or_none(body) for body in self.bodies]  # find the bad one(s), keep the rest
        orgs: list[str] = []
        executions: list[str] = []
        for (org, _, execution_id, _), count in zip(self.routes, self.counts, strict=True):
            orgs += [org] * count
            executions += [execution_id] * count
        for i, line in enumerate(lines):
            if line is not None and line.execution_id is not None and line.execution_id != executions[i]:
                refusals.refuse("execution", "a log line of execution %r on the subject of %s: not stored",
                                line.execution_id, executions[i])
                lines[i] = None
        if None in lines:
            kept = [i for i, line in enumerate(lines) if line is not None]
            orgs, executions, lines = [orgs[i] for i in kept], [executions[i] for i in kept], [lines[i] for i in kept]
        logs["org"] += orgs
        logs["execution_id"] += executions
        logs["idx"] += [line.idx for line in lines]
        logs["ts"] += [line.ts for line in lines]
        logs["level"] += [line.level for line in lines]
        logs["stream"] += [line.stream for line in lines]
        logs["action_index"] += [line.action_index for line in lines]
        logs["msg"] += [line.msg for line in lines]
        return len(lines)


def _line_or_none(body: bytes) -> LogLine | None:
    try:
        return _decode_line(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        log.warning("a log event is not a log line (%s); not stored", err)
        return None


TRIGGER_TEXT = ("trigger_id", "batch_id", "source", "execution_id", "status", "error")


def _trigger_row(org: str, trigger: dict[str, Any]) -> dict[str, Any]:
    """A trigger event as a row. A refused trigger's event echoes whatever body was
    published, so every field is checked: a wrong type becomes null (text: its JSON)."""
    row: dict[str, Any] = {"org": org}
    for name in TRIGGER_TEXT:
        value = trigger.get(name)
        row[name] = value if value is None or isinstance(value, str) else msgspec.json.encode(value).decode()
    times = {name: _time(trigger.get(name)) for name in ("scheduled_at", "fired_at")}
    row.update(times)
    context = trigger.get("context")
    row["context"] = context if isinstance(context, dict) else None
    if times["scheduled_at"] and times["fired_at"]:
        delta = parse_iso(times["fired_at"]) - parse_iso(times["scheduled_at"])
        row["lag_ms"] = int(delta.total_seconds() * 1000)
    return row


INTEGER_RANGE = range(-(2 ** 31), 2 ** 31)


def _notification_row(notification: Notification) -> dict[str, Any]:
    """A notify event as a row (its org is the subject's, set by the batch). `attempts`
    has no bound on the type: a count no INTEGER column holds becomes null."""
    row = msgspec.structs.asdict(notification)
    if row["attempts"] not in INTEGER_RANGE:
        row["attempts"] = None
    return row


def _time(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        parse_iso(value)
    except ValueError:
        return None
    return value
