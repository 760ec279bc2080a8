"""Pull requests answered into one callback subscription: the store's read of BD_EVENTS.

nats-py's `PullSubscription.fetch(n)` waits for each message with `next_msg`, which
costs two tasks, a timer and a uuid per message: about 50 us of CPU a line, most of
the store's time. Here the messages of a pull request land in a callback that only
appends them to a list, and the next request is sent before the current batch is
written, so reading and writing overlap.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg


class PullFailed(Exception):
    """The server ended a pull request with an error status (consumer gone, ...)."""


class Puller:
    def __init__(self, nc: Client, stream: str, consumer: str, batch: int, expires: float = 1.0) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.batch = batch
        self.expires = expires
        self._inbox = nc.new_inbox()
        self._sub: Any = None
        self._received: list[Msg] = []
        self._requests: list[int] = []
        """Messages still due to each request sent, oldest first."""
        self._changed = asyncio.Event()
        self._error: str | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_message, pending_msgs_limit=-1,
                                            pending_bytes_limit=-1)
        await self._request()

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def next_batch(self) -> list[Msg]:
        """The messages of the oldest request (up to `batch`; fewer when it expired),
        asking for the next batch at once. Empty when nothing came."""
        while self._requests and self._requests[0] > 0 and self._error is None:
            self._changed.clear()
            await self._changed.wait()
        if self._error is not None:
            raise PullFailed(self._error)
        self._requests.pop(0)
        messages, self._received = self._received, []
        await self._request()
        return messages

    async def _request(self) -> None:
        self._requests.append(self.batch)
        body = json.dumps({"batch": self.batch, "expires": int(self.expires * 1e9)}).encode()
        await self.nc.publish(self.subject, body, reply=self._inbox)

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers and not msg.data else None
        if status is None:
            self._received.append(msg)
            self._requests[0] -= 1
        elif status in ("404", "408"):  # no (more) messages before the request expired: it is over
            self._requests[0] = 0
        elif status != "100":  # 100: idle heartbeat
            self._error = f"{status} {msg.headers.get('Description', '')}".strip()
        if self._requests[0] <= 0 or self._error is not None:
            self._changed.set()
