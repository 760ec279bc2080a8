"""JetStream publishes pipelined over core NATS, for bursts of triggers.

nats-py's `publish_async` costs about twice the CPU of a core publish per message
(a semaphore, a reply inbox and a future per call), and at a round minute thousands of
triggers are due at once, so every microsecond per message shows as fire lag. Here a
single wildcard subscription receives the acks of every publish, matched by a counter
token in the reply subject.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg



class NotStored(Exception):
    """JetStream refused the message or did not answer."""


class AckedPublisher:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._prefix = f"{nc.new_inbox()}."
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self._prefix + "*", cb=self._on_ack)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    async def send(self, subject: str, payload: bytes, headers: dict[str, str]) -> asyncio.Future[None]:
        """Publish; the returned future completes when JetStream has stored the message
        (or fails with NotStored). Raises at once if the message could not be sent."""
        token = str(next(self._tokens))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        try:
            await self.nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            del self._waiting[token]
            raise
        return future

    def forget(self, futures: list[asyncio.Future[None]]) -> None:
        """Stop waiting for these acks (after a timeout)."""
        dropped = set(futures)
        for future in dropped:
            future.cancel()
        self._waiting = {token: f for token, f in self._waiting.items() if f not in dropped}

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix):], None)
        if future is None or future.done():
            return
        if not msg.data:  # a status message, e.g. 503 no responders: no stream took it
            future.set_exception(NotStored(f"no stream stored it ({(msg.headers or {}).get('Status', 'no ack')})"))
            return
        try:
            ack = json.loads(msg.data)
        except ValueError:
            ack = {"error": {"description": msg.data[:200].decode(errors="replace")}}
        if "error" in ack:
            future.set_exception(NotStored(str(ack["error"].get("description", ack["error"]))))
        else:
            future.set_result(None)
