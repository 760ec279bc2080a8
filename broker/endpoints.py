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
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Endpoint, EndpointStats, Service

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
        self._endpoints: dict[str, Endpoint] = {}

    async def start(self, name: str, description: str, handlers: dict[tuple[str, str], Handler],
                    stats_handler: Callable[[EndpointStats], Any] | None = None) -> None:
        """Register the micro service `name`; `stats_handler` gives each endpoint's stats `data`."""
        self.service = await add_service(self.nc, name=name, version=__version__, description=description,
                                         stats_handler=stats_handler)
        for (resource, verb), handler in handlers.items():
            name = f"{resource}-{verb}"
            await self.service.add_endpoint(
                name=name, subject=subjects.api_any_org(resource, verb), handler=self._wrap(name, handler),
                metadata={"resource": resource, "verb": verb},
            )
            self._endpoints[name] = self.service._endpoints[-1]  # noqa: SLF001 - add_endpoint returns None
        await self.nc.flush()  # the server has every subscription: "serving" means answering

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _wrap(self, name: str, handler: Handler) -> Callable[[Request], Awaitable[None]]:
        async def on_request(request: Request) -> None:
            org = subjects.org_of(request.subject)
            reply = request._msg.reply or ""  # noqa: SLF001 - nats-py (pinned) keeps the message private
            if not subjects.is_inbox_reply(org, reply):
                self.refusals.refuse("reply_not_inbox", "%s: dropped a request whose reply subject %r is not an "
                                     "inbox of org %s", request.subject, reply[:200], org)
                return
            await self._slots.acquire()
            task = asyncio.create_task(self._serve(name, handler, request))
            self._tasks.add(task)
            task.add_done_callback(self._done)

        return on_request

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _serve(self, name: str, handler: Handler, request: Request) -> None:
        started = time.perf_counter_ns()
        error: ApiError | None = None
        try:
            reply = await self._answer(handler, request)
        except ApiError as err:
            error = err
        except JETSTREAM_UNAVAILABLE as err:  # a leader election, a server restarting: worth a retry
            log.warning("%s: JetStream did not answer (%r)", request.subject, err)
            error = Unavailable(f"JetStream did not answer ({type(err).__name__}); "
                                "the cluster may be electing a leader: try again")
        except Exception as err:  # the service keeps serving whatever a handler does
            log.exception("%s failed", request.subject)
            error = InternalError(f"internal error: {type(err).__name__}: {err}")
        if error is None:
            await request.respond(reply)
        else:
            await respond_error(request, error)
        self._count(name, time.perf_counter_ns() - started, error)

    async def _answer(self, handler: Handler, request: Request) -> bytes:
        org = subjects.org_of(request.subject)
        if not subjects.is_valid_org(org):
            raise BadRequest(f"org {org!r} is invalid: use 1-32 of a-z, 0-9, '_' and '-'")
        reply = codec.encode(await handler(org, request.data))
        if len(reply) > self.nc.max_payload:
            raise BadRequest(f"the reply is {len(reply)} bytes, over the server's limit; ask for less")
        return reply

    def _count(self, name: str, elapsed_ns: int, error: ApiError | None) -> None:
        """Keep `$SRV.STATS` true, as Go's micro does: an error reply counts in `num_errors`
        and `last_error`, and the time is the handler's. nats-py (pinned) counts only what
        its own callback raises and times, and ours hands each request to a task at once;
        these are its Endpoint's private counters."""
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            return
        # nats-py already counted the request and the hand-off's few microseconds
        endpoint._processing_time += elapsed_ns  # noqa: SLF001
        endpoint._average_processing_time = int(endpoint._processing_time / max(endpoint._num_requests, 1))  # noqa: SLF001
        if error is not None:
            endpoint._num_errors += 1  # noqa: SLF001
            endpoint._last_error = f"{error.code}:{' '.join(error.message.split())[:500]}"  # noqa: SLF001


async def respond_error(request: Request, err: ApiError) -> None:
    await request.respond(
        codec.encode(err.to_body()),
        # A header value must stay on one line, whatever text the error echoes.
        headers={ERROR_CODE_HEADER: str(err.code), ERROR_HEADER: " ".join(err.message.split())[:1000]},
    )
