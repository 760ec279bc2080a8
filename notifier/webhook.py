"""The webhook channel: one signed HTTP POST of an execution's JSON to a receiver.

A receiver gets the body with three headers: `X-Batchdeck-Signature-256`
(`sha256=` and the hex HMAC-SHA256 of the body under the org's secret),
`X-Batchdeck-Delivery` (the same on every resend of one delivery, so it can drop
repeats) and `X-Batchdeck-Event` (`execution.{status}`). Any 2xx means taken; redirects
are not followed (a moved receiver should be configured under its new URL).

Where a webhook may go is `notifier.destinations`' call. What a failed delivery records
is the receiver's status or the class of the error, never what the receiver said: the
record is readable through SQL by the org's admin, who chose the URL, and an answer's
body would make the notifier a way to read any port it can reach.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import http.client
import socket
import ssl
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from importlib import metadata
from urllib.parse import SplitResult, urlsplit

from notifier.destinations import WebhookPolicy
from notifier.errors import DeliveryError

SIGNATURE_HEADER = "X-Batchdeck-Signature-256"
DELIVERY_HEADER = "X-Batchdeck-Delivery"
EVENT_HEADER = "X-Batchdeck-Event"

MAX_RETRY_AFTER = 300.0
"""Seconds: a longer Retry-After is cut to this."""
RETRYABLE_STATUSES = frozenset({408, 425, 429})
"""4xx replies that mean "not now" rather than "never"; every 5xx is retried too."""


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, signature: str) -> bool:
    """Whether `signature` (the X-Batchdeck-Signature-256 header) signs `body` under
    `secret`, compared in constant time. A receiver checks the raw body, before parsing:

        body = request.get_data()  # the bytes as received
        signature = request.headers.get("X-Batchdeck-Signature-256", "")
        if not verify(SECRET, body, signature):
            return "bad signature", 401
        execution = json.loads(body)
    """
    return hmac.compare_digest(sign(secret, body).encode(), signature.encode("utf-8", "replace"))


async def post(url: str, body: bytes, *, secret: bytes, delivery_id: str, event: str,
               timeout: float = 10.0, policy: WebhookPolicy = WebhookPolicy()) -> int:
    """POST the JSON `body`, signed with `secret`, to `url`; the 2xx status on success.
    `timeout`: seconds the whole exchange may take. DeliveryError otherwise, `permanent`
    for a 3xx or a 4xx other than 408, 425 and 429, and for an address `policy` refuses."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": _user_agent(),
        SIGNATURE_HEADER: sign(secret, body),
        DELIVERY_HEADER: delivery_id,
        EVENT_HEADER: event,
    }
    return await asyncio.to_thread(_post_blocking, url, body, headers, timeout, policy)


def _post_blocking(url: str, body: bytes, headers: dict[str, str], timeout: float, policy: WebhookPolicy) -> int:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryError(f"webhook URL {url!r} is not an http(s) URL with a host", permanent=True)
    if parts.username is not None:
        raise DeliveryError(f"webhook URL of {parts.hostname} carries credentials; they are not sent",
                            permanent=True)
    # The record holds the whole URL; messages name only its origin, as a path may hold a token.
    receiver = f"webhook {parts.scheme}://{parts.netloc}"
    deadline = time.monotonic() + timeout
    port = _port(parts, receiver) or (443 if parts.scheme == "https" else 80)
    address = policy.resolve(parts.hostname, port, receiver)
    connection = _connection(parts.scheme, parts.hostname, port, address, timeout)
    try:
        connection.connect()
        _cut_to(connection, deadline)
        connection.request("POST", _target(parts.path, parts.query), body=body, headers=headers)
        _cut_to(connection, deadline)
        response = connection.getresponse()
        if 200 <= response.status < 300:
            return response.status
        raise _refusal(receiver, response)
    except DeliveryError:
        raise
    except ssl.SSLCertVerificationError as err:
        # An untrusted certificate stays untrusted until someone changes it: no point retrying.
        raise DeliveryError(f"{receiver}: TLS certificate not trusted: {err.verify_message}", permanent=True) from err
    except TimeoutError as err:
        raise DeliveryError(f"{receiver} did not answer within {timeout:g}s", permanent=False) from err
    except http.client.HTTPException as err:  # a garbled reply: say so, never what it was (see above)
        raise DeliveryError(f"{receiver} did not answer in HTTP ({type(err).__name__})", permanent=False) from err
    except OSError as err:  # refused, reset, unreachable
        raise DeliveryError(f"cannot reach {receiver}: {_reason(err)}", permanent=False) from err
    finally:
        connection.close()


def _connection(scheme: str, host: str, port: int, address: str, timeout: float) -> http.client.HTTPConnection:
    """A connection to `address` that names `host` (Host header, TLS server name and
    certificate check)."""
    if scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)

    def to_checked_address(target: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        return socket.create_connection((address, target[1]), *args, **kwargs)  # type: ignore[arg-type]

    connection._create_connection = to_checked_address  # type: ignore[attr-defined]  # noqa: SLF001
    return connection


def _port(parts: SplitResult, receiver: str) -> int | None:
    try:
        return parts.port
    except ValueError:
        raise DeliveryError(f"{receiver}: the port is not a number from 0 to 65535", permanent=True) from None


def _target(path: str, query: str) -> str:
    return (path or "/") + (f"?{query}" if query else "")


def _cut_to(connection: http.client.HTTPConnection, deadline: float) -> None:
    """Let the next network wait take only what is left of the exchange's time."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    if connection.sock is not None:
        connection.sock.settimeout(left)


def _refusal(receiver: str, response: http.client.HTTPResponse) -> DeliveryError:
    """The status, never the reason phrase or the body (both are the receiver's text)."""
    answered = f"{receiver} answered {response.status}"
    if 300 <= response.status < 400:
        return DeliveryError(f"{answered}, a redirect (not followed: configure the receiver's new URL)",
                             permanent=True)
    if response.status in RETRYABLE_STATUSES or 500 <= response.status < 600:
        return DeliveryError(answered, permanent=False, retry_after=retry_after(response.getheader("Retry-After")))
    return DeliveryError(answered, permanent=True)


def retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delay-seconds or an HTTP date), at most
    MAX_RETRY_AFTER; None when there is none or it makes no sense."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return min(max(0.0, (moment - datetime.now(timezone.utc)).total_seconds()), MAX_RETRY_AFTER)


def _reason(err: BaseException) -> str:
    return str(err) or type(err).__name__


@functools.cache
def _user_agent() -> str:
    try:
        return f"batchdeck/{metadata.version('batchdeck')}"
    except metadata.PackageNotFoundError:
        return "batchdeck"
