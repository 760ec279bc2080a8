"""A small client of the control API for Python callers (CLI, TUI, tests, other
services): request/reply on `bd.{org}.api.{resource}.{verb}`, errors as ApiError."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from broker import codec, subjects
from broker.errors import ApiError, Timeout, Unavailable, from_code

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
        """Send one request; raise ApiError (with the server's code) on an error reply."""
        subject = subjects.api(self.org, resource, verb)
        data = body if isinstance(body, bytes) else codec.encode(body if body is not None else {})
        try:
            reply = await self.nc.request(subject, data, timeout=timeout or self.timeout)
        except NoRespondersError:
            service = "store" if resource == "history" or (resource, verb) in STORE_ENDPOINTS else "broker"
            raise Unavailable(f"no batchdeck service answers on {subject}: is the {service} running?") from None
        except (NatsTimeout, asyncio.TimeoutError):
            raise Timeout(f"no reply on {subject} within {timeout or self.timeout:g} s") from None
        error = reply_error(reply)
        if error is not None:
            raise error
        return codec.decode(reply.data) if reply.data else None
