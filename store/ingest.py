"""BD_EVENTS -> DuckDB, exactly once.

One durable pull consumer, `store_history`, read strictly in order: fetch a batch,
write it in one transaction that also records the sequence of its last event, then ack
(AckPolicy.ALL: one ack covers the batch). On every start the consumer is re-created to
begin right after the committed sequence, so events that were written but not acked
(a crash between commit and ack) are not read again, and events that were read but
not written (a crash before the commit) are.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from broker import streams, subjects
from broker.timestamps import parse_iso
from broker.types import DefinitionEvent, Execution, LogLine
from store.history import Batch, History

log = logging.getLogger("batchdeck.store")

CONSUMER = "store_history"
FETCH = 5000
ACK_WAIT = 300.0
TRACE_OFF = "false"


# Events are decoded into the contract's types: anything that reaches the database has
# the types its columns expect, so no event can make a batch's transaction fail.
_decode_line = msgspec.json.Decoder(LogLine).decode
_decode_state = msgspec.json.Decoder(Execution).decode
_decode_definition = msgspec.json.Decoder(DefinitionEvent).decode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode


class Ingest:
    def __init__(self, js: JetStreamContext, history: History, fetch: int = FETCH) -> None:
        self.js = js
        self.history = history
        self.fetch = fetch
        self.committed = 0
        self.events = 0
        self.skipped = 0

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
        self.committed = await asyncio.to_thread(self.history.committed_seq)
        await self._reset_consumer(self.committed + 1)
        sub = await self.js.pull_subscribe_bind(durable=CONSUMER, stream=streams.EVENTS)
        try:
            while True:
                try:
                    messages = await sub.fetch(self.fetch, timeout=1.0)
                except (NatsTimeout, asyncio.TimeoutError):
                    continue
                if not messages:
                    continue
                batch = self._batch(messages)
                if batch.last_seq > self.committed:
                    await asyncio.to_thread(self.history.write, batch)
                    self.committed = batch.last_seq
                    self.events += batch.events
                await messages[-1].ack()
        finally:
            await sub.unsubscribe()

    async def _reset_consumer(self, start: int) -> None:
        info = await self.js.stream_info(streams.EVENTS)
        if start > info.state.last_seq + 1:
            log.warning("%s ends at event %d but the history holds events up to %d: the stream was "
                        "re-created; reading it from its start", streams.EVENTS, info.state.last_seq, start - 1)
            self.committed = 0
            start = info.state.first_seq
        if start < info.state.first_seq:
            if self.committed:
                log.warning("events %d-%d expired from %s before the store read them", start,
                            info.state.first_seq - 1, streams.EVENTS)
            start = info.state.first_seq
        try:
            await self.js.delete_consumer(streams.EVENTS, CONSUMER)
        except NotFoundError:
            pass
        await self.js.add_consumer(streams.EVENTS, ConsumerConfig(
            durable_name=CONSUMER, filter_subject=subjects.EVENTS_SUBJECTS[0], ack_policy=AckPolicy.ALL,
            ack_wait=ACK_WAIT, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(start, 1),
            max_ack_pending=-1, max_waiting=4,
        ))

    def _batch(self, messages: list[Any]) -> Batch:
        batch = Batch()
        first, last = messages[0].metadata.sequence.stream, messages[-1].metadata.sequence.stream
        # Read in order from the committed sequence on, a batch holds no replay unless it
        # starts at or before it (a redelivery after ack_wait): only then look at each.
        replayed = first <= self.committed
        for msg in messages:
            if replayed and msg.metadata.sequence.stream <= self.committed:
                continue
            self._add(batch, msg)
        batch.last_seq = last
        return batch

    def _add(self, batch: Batch, msg: Any) -> None:
        headers = msg.headers
        if headers and headers.get(subjects.TRACE_HEADER) == TRACE_OFF:
            self.skipped += 1
            return
        tokens = msg.subject.split(".")
        org, kind = tokens[1], tokens[3]
        try:
            if kind == "exec" and len(tokens) == 6:
                self._add_exec_event(batch, org, tokens[4], tokens[5], msg.data)
            elif kind == "trigger":
                batch.triggers.append(_trigger_row(org, _decode_object(msg.data)))
            elif kind == "def":
                batch.definitions.append({**msgspec.structs.asdict(_decode_definition(msg.data)), "org": org})
            else:
                return
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("event on %s is not what it should be (%s); not stored", msg.subject, err)
            return
        batch.events += 1

    def _add_exec_event(self, batch: Batch, org: str, execution_id: str, what: str, data: bytes) -> None:
        if what == "log":
            line = _decode_line(data)
            logs = batch.logs
            logs["org"].append(org)
            logs["execution_id"].append(execution_id)
            logs["idx"].append(line.idx)
            logs["ts"].append(line.ts)
            logs["level"].append(line.level)
            logs["stream"].append(line.stream)
            logs["action_index"].append(line.action_index)
            logs["msg"].append(line.msg)
        elif what == "state":
            batch.add_execution(org, msgspec.to_builtins(_decode_state(data)))
        # progress events are kept on the execution's state (progress_percent/text)


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


def _time(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        parse_iso(value)
    except ValueError:
        return None
    return value
