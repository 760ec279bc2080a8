"""The webhook channel: one signed HTTP POST of an execution's JSON to a receiver.

A receiver gets the body with three headers: `X-Batchdeck-Signature-256`
(`sha256=` and the hex HMAC-SHA256 of the body under the org's secret),
`X-Batchdeck-Delivery` (the same on every resend of one delivery, so it can drop
repeats) and `X-Batchdeck-Event` (`execution.{status}`). Any 2xx means taken; redirects
are not followed (a moved receiver should be configured under its new URL).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import http.client
import re
import ssl
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from importlib import metadata
from urllib.parse import SplitResult, urlsplit

from notifier.errors import DeliveryError

SIGNATURE_HEADER = "X-Batchdeck-Signature-256"
DELIVERY_HEADER = "X-Batchdeck-Delivery"
EVENT_HEADER = "X-Batchdeck-Event"

MAX_REPLY_BYTES = 64 * 1024
"""The most of a reply's body that is read."""
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
               timeout: float = 10.0) -> int:
    """POST the JSON `body`, signed with `secret`, to `url`; the 2xx status on success.
    `timeout`: seconds the whole exchange may take. DeliveryError otherwise, `permanent`
    for a 3xx or a 4xx other than 408, 425 and 429."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": _user_agent(),
        SIGNATURE_HEADER: sign(secret, body),
        DELIVERY_HEADER: delivery_id,
        EVENT_HEADER: event,
    }
    return await asyncio.to_thread(_post_blocking, url, body, headers, timeout)


def _post_blocking(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryError(f"webhook URL {url!r} is not an http(s) URL with a host", permanent=True)
    if parts.username is not None:
        raise DeliveryError(f"webhook URL of {parts.hostname} carries credentials; they are not sent",
                            permanent=True)
    # The record holds the whole URL; messages name only its origin, as a path may hold a token.
    receiver = f"webhook {parts.scheme}://{parts.netloc}"
    deadline = time.monotonic() + timeout
    connection = _connection(parts.scheme, parts.hostname, _port(parts, receiver), timeout)
    try:
        connection.connect()
        _cut_to(connection, deadline)
        connection.request("POST", _target(parts.path, parts.query), body=body, headers=headers)
        _cut_to(connection, deadline)
        response = connection.getresponse()
        if 200 <= response.status < 300:
            return response.status
        _cut_to(connection, deadline)
        raise _refusal(receiver, response, _start_of_reply(response))
    except DeliveryError:
        raise
    except ssl.SSLCertVerificationError as err:
        # An untrusted certificate stays untrusted until someone changes it: no point retrying.
        raise DeliveryError(f"{receiver}: TLS certificate not trusted: {err.verify_message}", permanent=True) from err
    except TimeoutError as err:
        raise DeliveryError(f"{receiver} did not answer within {timeout:g}s", permanent=False) from err
    except (OSError, http.client.HTTPException) as err:  # refused, reset, DNS, a garbled reply
        raise DeliveryError(f"cannot reach {receiver}: {_reason(err)}", permanent=False) from err
    finally:
        connection.close()


def _connection(scheme: str, host: str, port: int | None, timeout: float) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
    return http.client.HTTPConnection(host, port, timeout=timeout)


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


def _start_of_reply(response: http.client.HTTPResponse) -> str:
    try:
        data = response.read(MAX_REPLY_BYTES)
    except (OSError, http.client.HTTPException):
        return ""  # the status says enough
    text = data.decode("utf-8", "replace")
    return re.sub(r"\s+", " ", "".join(c if c.isprintable() else " " for c in text)).strip()[:200]


def _refusal(receiver: str, response: http.client.HTTPResponse, reply: str) -> DeliveryError:
    answered = f"{receiver} answered {response.status} {response.reason}".rstrip()
    said = f": {reply}" if reply else ""
    if 300 <= response.status < 400:
        location = response.getheader("Location", "(no Location)")
        return DeliveryError(f"{answered}, a redirect to {location} (not followed: configure the new URL){said}",
                             permanent=True)
    if response.status in RETRYABLE_STATUSES or 500 <= response.status < 600:
        return DeliveryError(answered + said, permanent=False,
                             retry_after=retry_after(response.getheader("Retry-After")))
    return DeliveryError(answered + said, permanent=True)


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
