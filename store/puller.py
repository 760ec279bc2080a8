"""Pull requests answered into one raw subscription: the store's read of BD_EVENTS.

nats-py's `PullSubscription.fetch(n)` waits for each message with `next_msg`, which
costs two tasks, a timer and a uuid per message; even a callback subscription costs a
Msg, a parsed header dict, a queue hop and a coroutine per message. Here the messages
of a pull request arrive as tuples of bytes, every message of a socket read at once
(`store.raw_inbox`). `ahead` requests are kept open while a batch is written: the
server sends the next batches meanwhile instead of waiting for the store's next
request, so reading and writing overlap (the consumer allows 4 waiting requests).

Every request is bounded in bytes as well as in messages (`max_bytes`): a batch of very
long lines must not pile up more than the server lets a client have pending (64 MiB),
or it cuts the connection as a slow consumer. A request the server stops answering (the
connection was cut and came back, the consumer was recreated) fails the pull after
STALL_SECONDS: the ingest then starts over from its committed sequence.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque

from nats.aio.client import Client

from store.raw_inbox import REPLY, RawMessage, RawSubscription, status


ACK_PREFIX = b"$JS.ACK."
MAX_BYTES = 8 * 1024 * 1024
"""Bytes one pull request may bring at most (at least two of the largest messages)."""
STALL_SECONDS = 15.0
"""Seconds without any answer to open pull requests (each expires after `expires`)
after which the pull is given up as lost."""


class PullFailed(Exception):
    """The server ended a pull request with an error status (consumer gone, ...)."""


class Puller:
    def __init__(self, nc: Client, stream: str, consumer: str, batch: int, expires: float = 0.5,
                 ahead: int = 2, max_bytes: int = MAX_BYTES) -> None:
        self.nc = nc
        self.ahead = ahead
        # A request that cannot hold the next message would never bring anything.
        self.max_bytes = max(max_bytes, 2 * (nc.max_payload or 0))
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.batch = batch
        self.expires = expires
        self.inbox = RawSubscription(nc, nc.new_inbox(), self._on_messages)
        self._received: list[RawMessage] = []
        self._open: deque[int] = deque()
        """Messages still due to each request that is not over, oldest first."""
        self._ends: deque[int] = deque()
        """Where each request that is over ends in `_received`, oldest first."""
        self._changed = asyncio.Event()
        self._error: str | None = None

    async def start(self) -> None:
        await self.inbox.start()
        for _ in range(self.ahead):
            await self._request()

    async def stop(self) -> None:
        await self.inbox.stop()

    async def next_batch(self) -> list[RawMessage]:
        """The stream messages of the oldest request (up to `batch`; fewer when it
        expired), asking for the next batch at once. Empty when nothing came."""
        while not self._ends and self._error is None:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), STALL_SECONDS)
            except asyncio.TimeoutError:
                raise PullFailed(f"no answer to the pull requests for {STALL_SECONDS:g} s (the connection was "
                                 "cut, or the consumer is gone)") from None
        if self._error is not None:
            raise PullFailed(self._error)
        end = self._ends.popleft()
        messages = self._received[:end]
        del self._received[:end]
        self._ends = deque(e - end for e in self._ends)
        await self._request()
        return messages

    async def ack(self, message: RawMessage) -> None:
        """Acknowledge `message` and, AckPolicy.ALL, every message before it."""
        await self.nc.publish(message[REPLY].decode())

    async def _request(self) -> None:
        self._open.append(self.batch)
        body = json.dumps({"batch": self.batch, "max_bytes": self.max_bytes,
                           "expires": int(self.expires * 1e9)}).encode()
        await self.nc.publish(self.subject, body, reply=self.inbox.subject)

    def _on_messages(self, messages: list[RawMessage]) -> None:
        for message in messages:
            if message[REPLY].startswith(ACK_PREFIX):  # a stream message; statuses have no ack subject
                self._received.append(message)
                self._count_one()
            else:
                self._on_status(status(message))
        if self._ends or self._error is not None:
            self._changed.set()

    def _count_one(self) -> None:
        if not self._open:
            return  # not asked for (cannot happen): kept, returned with the next request's
        self._open[0] -= 1
        if self._open[0] == 0:
            self._end_request()

    def _on_status(self, code_description: tuple[str, str] | None) -> None:
        code, description = code_description or ("", "not a status")
        # 404/408: no (more) messages before the request expired; 409 "Message Size Exceeds
        # MaxBytes": the next one did not fit in what was left of `max_bytes`. Over, either way.
        if code in ("404", "408") or (code == "409" and "MaxBytes" in description):
            if self._open:
                self._end_request()
        elif code != "100":  # 100: idle heartbeat
            self._error = f"{code} {description}".strip()

    def _end_request(self) -> None:
        self._open.popleft()
        self._ends.append(len(self._received))
