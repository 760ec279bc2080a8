"""A small client of the control API for Python callers (CLI, TUI, tests, other
services): request/reply on `bd.{org}.api.{resource}.{verb}`, errors as ApiError.

A request the NATS server refuses for the user's permissions gets no reply, only an
asynchronous error on the connection; on a connection made by `broker.connect` that
error becomes a Forbidden (403) as soon as it arrives, instead of a timeout.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from broker import codec, subjects
from broker.connect import Denial, Denials, denials_of
from broker.errors import ApiError, Forbidden, Timeout, Unavailable, from_code

STORE_ENDPOINTS = frozenset({("exec", "logs"), ("exec", "history"), ("batch", "results"), ("history", "sql")})
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"


def reply_error(msg: Any) -> ApiError | None:
    """The ApiError a reply carries in its micro error headers, if any."""
    headers = msg.headers or {}
    code = headers.get(ERROR_CODE_HEADER)
    if not code:
        return None
    message = headers.get(ERROR_HEADER, "")
    details: dict[str, Any] = {}
    try:
        error = (codec.decode(msg.data, dict[str, Any]) if msg.data else {}).get("error") or {}
        message = error.get("message") or message
        details = error.get("details") or {}
    except (msgspec.DecodeError, msgspec.ValidationError, AttributeError):
        pass
    try:
        numeric = int(code)
    except ValueError:
        numeric = 500
    return from_code(numeric, message, details)


class ApiClient:
    """`await client.call("task", "create", {...})` returns the decoded reply."""

    def __init__(self, nc: Client, org: str = subjects.DEFAULT_ORG, timeout: float = 10.0) -> None:
        self.nc = nc
        self.org = org
        self.timeout = timeout

    async def call(self, resource: str, verb: str, body: Any = None, timeout: float | None = None) -> Any:
        """Send one request; raise ApiError (with the server's code) on an error reply,
        Forbidden when the NATS server refused the request or the reply inbox."""
        subject = subjects.api(self.org, resource, verb)
        data = body if isinstance(body, bytes) else codec.encode(body if body is not None else {})
        denials = denials_of(self.nc)
        if denials is not None and (refused := denials.inbox_refused()) is not None:
            raise _forbidden(refused, inbox=True, sent=False)  # no reply could reach us: send nothing to act on
        started = time.monotonic()
        try:
            reply = await self._request(subject, data, timeout or self.timeout, denials)
        except NoRespondersError:
            service = "store" if resource == "history" or (resource, verb) in STORE_ENDPOINTS else "broker"
            raise Unavailable(f"no batchdeck service answers on {subject}: is the {service} running?") from None
        except (NatsTimeout, asyncio.TimeoutError):
            refused = denials.latest(_refusing(subject, denials), started) if denials is not None else None
            if refused is not None:
                raise _forbidden(refused, inbox=denials.is_inbox(refused)) from None
            raise Timeout(f"no reply on {subject} within {timeout or self.timeout:g} s") from None
        error = reply_error(reply)
        if error is not None:
            raise error
        return codec.decode(reply.data) if reply.data else None

    async def _request(self, subject: str, data: bytes, timeout: float, denials: Denials | None) -> Any:
        """The reply; Forbidden as soon as the server reports it refused the request."""
        if denials is None:  # a connection not made by broker.connect: only the timeout tells
            return await self.nc.request(subject, data, timeout=timeout)
        with denials.watch(_refusing(subject, denials)) as refused:
            request = asyncio.ensure_future(self.nc.request(subject, data, timeout=timeout))
            try:
                await asyncio.wait({request, refused}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not request.done():
                    request.cancel()
                    await asyncio.gather(request, return_exceptions=True)
            if refused.done() and not refused.cancelled() and (request.cancelled() or request.exception()):
                raise _forbidden(refused.result(), inbox=denials.is_inbox(refused.result()))
            return request.result()


def _refusing(subject: str, denials: Denials):
    """Matches the denials that leave a request on `subject` without a reply."""
    return lambda denial: denial.is_for("publish", subject) or denials.is_inbox(denial)


def _forbidden(denial: Denial, inbox: bool, sent: bool = True) -> Forbidden:
    details = {"operation": denial.operation, "subject": denial.subject}
    if not inbox:
        return Forbidden(denial.describe(), details)
    outcome = "the request may have been carried out" if sent else "the request was not sent"
    return Forbidden(f"{denial.describe()}: no reply can reach this connection ({outcome}); connect with the "
                     f"inbox prefix this user may subscribe to (batchdeck --inbox-prefix)", details)
