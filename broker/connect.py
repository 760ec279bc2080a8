"""How every batchdeck process connects to NATS: URL (user:password@ allowed), a creds
file (nkeys/JWT), a token, TLS with a CA file, the reply inbox prefix; services
reconnect forever, with backoff.

The server refuses a publish or a subscription its user may not make without failing
the operation itself: it reports `-ERR 'Permissions Violation for Publish to "…"'`
afterwards, on the connection. Every connection made here keeps the recent ones
(`denials_of(nc)`), so that a request that gets no reply can say why (broker.client).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import ssl
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client, Server

log = logging.getLogger("batchdeck.connect")

DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_INBOX_PREFIX = "_INBOX"
"""nats-py's reply inbox prefix; a user confined to its org's replies needs its own
(`_INBOX_acme.viewer`, deploy/nats/auth.conf)."""
_INBOX_PREFIX_RE = re.compile(r"^[^.*>\s]+(\.[^.*>\s]+)*$")
RECONNECT_FIRST_WAIT = 0.25
RECONNECT_MAX_WAIT = 5.0
"""A service waits this long at most between two tries of one server (see `reconnect_backoff`)."""


@dataclass(frozen=True)
class ConnectOptions:
    url: str = DEFAULT_URL
    creds: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    name: str = "batchdeck"
    inbox_prefix: str | None = None
    """Prefix of the reply subjects this connection subscribes to (default `_INBOX`)."""


def is_valid_inbox_prefix(prefix: str) -> bool:
    """A subject without wildcards or empty tokens, such as `_INBOX_acme.viewer`."""
    return bool(_INBOX_PREFIX_RE.match(prefix))


async def connect(options: ConnectOptions, *, service: bool = False, **overrides: Any) -> Client:
    """Connect to NATS.

    `service=True` is for long-lived services: reconnect forever, and say once when the
    server is gone and once when it is back. Clients (CLI) fail fast instead.
    """
    kwargs: dict[str, Any] = {
        "servers": [u.strip() for u in options.url.split(",") if u.strip()],
        "name": options.name,
    }
    if options.creds:
        kwargs["user_credentials"] = options.creds
    if options.token:
        kwargs["token"] = options.token
    if options.tls_ca:
        kwargs["tls"] = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=options.tls_ca)
    if options.inbox_prefix:
        kwargs["inbox_prefix"] = options.inbox_prefix
    nc = Client()
    if service:
        kwargs.update(
            max_reconnect_attempts=-1,
            reconnect_to_server_handler=reconnect_backoff,
            disconnected_cb=_say(nc, "NATS connection lost; reconnecting"),
            reconnected_cb=_say(nc, "NATS connection is back"),
            error_cb=_on_error,
        )
    else:
        # nats-py treats max_reconnect_attempts=0 as "keep trying" on the first connect:
        # one attempt per server, then fail.
        kwargs.update(connect_timeout=5, max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=_on_error)
    kwargs.update(overrides)
    prefix = kwargs.get("inbox_prefix") or DEFAULT_INBOX_PREFIX
    denials = Denials(prefix.decode() if isinstance(prefix, bytes) else prefix)
    kwargs["error_cb"] = _recording(denials, kwargs.get("error_cb") or _on_error, service)
    kwargs["reconnected_cb"] = _forgetting(denials, kwargs.get("reconnected_cb"))
    _DENIALS[nc] = denials
    await nc.connect(**kwargs)
    return nc


def reconnect_backoff(servers: list[Server], _info: dict[str, Any]) -> tuple[Server, float]:
    """The server a service tries next, and how long it waits first: the one that failed
    least often since it last connected (so another node of a cluster is tried at once),
    after a wait that doubles with each failure of it, from RECONNECT_FIRST_WAIT up to
    RECONNECT_MAX_WAIT, jittered so that services that lost one server do not all knock
    on it at the same moment."""
    server = min(servers, key=lambda s: s.reconnects)
    if server.reconnects == 0:
        return server, 0.0
    wait = min(RECONNECT_MAX_WAIT, RECONNECT_FIRST_WAIT * 2 ** (server.reconnects - 1))
    return server, wait * random.uniform(0.75, 1.0)


# ---- permission violations ------------------------------------------------------------

_VIOLATION_RE = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"', re.IGNORECASE)


@dataclass(frozen=True)
class Denial:
    """One permission violation the server reported on a connection."""

    operation: str
    """Either "publish" or "subscribe"."""
    subject: str
    """As the server named it; nats-py lowercases the whole error, so compare with `is_for`."""
    at: float
    """time.monotonic() when it arrived."""

    def is_for(self, operation: str, subject: str) -> bool:
        return self.operation == operation and self.subject == subject.lower()

    def describe(self) -> str:
        return f"the NATS server refused this user {self.operation} on {self.subject} (permissions)"


def parse_denial(err: BaseException) -> Denial | None:
    """The Denial an error callback's error reports, None for any other error."""
    found = _VIOLATION_RE.search(str(err))
    if found is None:
        return None
    operation = "publish" if found.group(1).lower() == "publish" else "subscribe"
    return Denial(operation, found.group(2).lower(), time.monotonic())


class Denials:
    """The recent permission violations of one connection, and waiters for the next.

    The server reports a violation after the fact and fails nothing: a refused request
    just gets no reply. Keeping them lets a caller say why nothing came, and waiting on
    one lets it say so as soon as the server has spoken instead of after its timeout.
    """

    KEEP = 64

    def __init__(self, inbox_prefix: str) -> None:
        self.inbox_prefix = inbox_prefix
        self.recent: deque[Denial] = deque(maxlen=self.KEEP)
        self._waiters: list[tuple[Callable[[Denial], bool], asyncio.Future[Denial]]] = []

    def record(self, denial: Denial) -> None:
        self.recent.append(denial)
        for match, future in self._waiters:
            if not future.done() and match(denial):
                future.set_result(denial)

    def clear(self) -> None:
        """Forget them all: after a reconnect the server checks every subscription anew."""
        self.recent.clear()

    def latest(self, match: Callable[[Denial], bool], since: float = 0.0) -> Denial | None:
        """The newest denial that `match`es and arrived at or after `since` (time.monotonic())."""
        return next((d for d in reversed(self.recent) if d.at >= since and match(d)), None)

    def is_inbox(self, denial: Denial) -> bool:
        """True for a refused subscription to this connection's reply inboxes: no reply,
        nor any JetStream delivery, can reach it."""
        return denial.operation == "subscribe" and denial.subject.startswith(f"{self.inbox_prefix.lower()}.")

    def inbox_refused(self) -> Denial | None:
        return self.latest(self.is_inbox)

    @contextlib.contextmanager
    def watch(self, match: Callable[[Denial], bool]) -> Iterator[asyncio.Future[Denial]]:
        """A future that gets the next denial that `match`es, while the block runs."""
        entry = (match, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            yield entry[1]
        finally:
            self._waiters.remove(entry)
            entry[1].cancel()


_DENIALS: weakref.WeakKeyDictionary[Client, Denials] = weakref.WeakKeyDictionary()


def denials_of(nc: Client) -> Denials | None:
    """The permission violations of a connection made by `connect` (None for another one)."""
    return _DENIALS.get(nc)


def _recording(denials: Denials, error_cb: Callable[[Exception], Any], service: bool):
    async def callback(err: Exception) -> None:
        denial = parse_denial(err)
        if denial is not None:
            denials.record(denial)
            if service:  # a service refused by its own server is misconfigured: say so
                log.warning("%s", denial.describe())
        await error_cb(err)

    return callback


def _forgetting(denials: Denials, reconnected_cb: Callable[[], Any] | None):
    async def callback() -> None:
        denials.clear()
        if reconnected_cb is not None:
            await reconnected_cb()

    return callback


def _say(nc: Client, message: str):
    async def callback() -> None:
        if not (nc.is_closed or nc.is_draining):  # our own shutdown is no news
            log.warning(message)

    return callback


async def _on_error(err: Exception) -> None:
    log.debug("NATS error: %r", err)


def without_credentials(url: str) -> str:
    """The server URL(s) with any `user:password@` removed: safe to log or print."""
    shown = []
    for one in url.split(","):
        scheme, sep, rest = one.strip().rpartition("://")
        address = rest.rsplit("@", 1)[-1]
        shown.append(f"{scheme}{sep}{address}" if sep else address)
    return ",".join(shown)
