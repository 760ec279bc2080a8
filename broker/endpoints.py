"""Serving `bd.{org}.api.{resource}.{verb}` as a NATS micro service: the broker's
control plane and the store's history API share this.

A subscription runs its callbacks one at a time, so each request gets a task of its
own (at most MAX_IN_FLIGHT at once; more wait in the subscription): a slow request
does not hold up the rest. Errors become micro error replies; whatever a handler
raises, the service keeps serving.

A request is answered only on an inbox of its org (`subjects.is_inbox_reply`); one whose
reply subject names anything else is dropped unread, counted and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service

from broker import __version__, codec, subjects
from broker.streams import JETSTREAM_UNAVAILABLE
from broker.client import ERROR_CODE_HEADER, ERROR_HEADER
from broker.errors import ApiError, BadRequest, InternalError, Unavailable
from broker.refusals import Refusals


log = logging.getLogger("batchdeck.api")

Handler = Callable[[str, bytes], Awaitable[Any]]
"""(org, request body) -> reply object."""

MAX_IN_FLIGHT = 256
"""Requests one instance handles at once; more wait in the subscription."""


class Endpoints:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.service: Service | None = None
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self.refusals = Refusals(log)
        """Requests dropped unanswered (kind `reply_not_inbox`)."""

    async def start(self, name: str, description: str, handlers: dict[tuple[str, str], Handler],
                    stats_handler: Callable[[EndpointStats], Any] | None = None) -> None:
        """Register the micro service `name`; `stats_handler` gives each endpoint's stats `data`."""
        self.service = await add_service(self.nc, name=name, version=__version__, description=description,
                                         stats_handler=stats_handler)
        for (resource, verb), handler in handlers.items():
            await self.service.add_endpoint(
                name=f"{resource}-{verb}", subject=subjects.api_any_org(resource, verb), handler=self._wrap(handler),
                metadata={"resource": resource, "verb": verb},
            )
        await self.nc.flush()  # the server has every subscription: "serving" means answering

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _wrap(self, handler: Handler) -> Callable[[Request], Awaitable[None]]:
        async def on_request(request: Request) -> None:
            org = subjects.org_of(request.subject)
            reply = request._msg.reply or ""  # noqa: SLF001 - nats-py (pinned) keeps the message private
            if not subjects.is_inbox_reply(org, reply):
                self.refusals.refuse("reply_not_inbox", "%s: dropped a request whose reply subject %r is not an "
                                     "inbox of org %s", request.subject, reply[:200], org)
                return
            await self._slots.acquire()
            task = asyncio.create_task(self._serve(handler, request))
            self._tasks.add(task)
            task.add_done_callback(self._done)

        return on_request

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _serve(self, handler: Handler, request: Request) -> None:
        org = subjects.org_of(request.subject)
        try:
            if not subjects.is_valid_org(org):
                raise BadRequest(f"org {org!r} is invalid: use 1-32 of a-z, 0-9, '_' and '-'")
            reply = codec.encode(await handler(org, request.data))
            if len(reply) > self.nc.max_payload:
                raise BadRequest(f"the reply is {len(reply)} bytes, over the server's limit; ask for less")
        except ApiError as err:
            await respond_error(request, err)
            return
        except JETSTREAM_UNAVAILABLE as err:  # a leader election, a server restarting: worth a retry
            log.warning("%s: JetStream did not answer (%r)", request.subject, err)
            await respond_error(request, Unavailable(f"JetStream did not answer ({type(err).__name__}); "
                                                     "the cluster may be electing a leader: try again"))
            return
        except Exception as err:  # the service keeps serving whatever a handler does
            log.exception("%s failed", request.subject)
            await respond_error(request, InternalError(f"internal error: {type(err).__name__}: {err}"))
            return
        await request.respond(reply)


async def respond_error(request: Request, err: ApiError) -> None:
    await request.respond(
        codec.encode(err.to_body()),
        # A header value must stay on one line, whatever text the error echoes.
        headers={ERROR_CODE_HEADER: str(err.code), ERROR_HEADER: " ".join(err.message.split())[:1000]},
    )
