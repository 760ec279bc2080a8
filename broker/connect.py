"""How every batchdeck process connects to NATS: URL (user:password@ allowed), a creds
file (nkeys/JWT), a token, TLS with a CA file; services reconnect forever."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client

log = logging.getLogger("batchdeck.connect")

DEFAULT_URL = "nats://127.0.0.1:4222"


@dataclass(frozen=True)
class ConnectOptions:
    url: str = DEFAULT_URL
    creds: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    name: str = "batchdeck"


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
    nc = Client()
    if service:
        kwargs.update(
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            disconnected_cb=_say(nc, "NATS connection lost; reconnecting"),
            reconnected_cb=_say(nc, "NATS connection is back"),
            error_cb=_on_error,
        )
    else:
        # nats-py treats max_reconnect_attempts=0 as "keep trying" on the first connect:
        # one attempt per server, then fail.
        kwargs.update(connect_timeout=5, max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=_on_error)
    kwargs.update(overrides)
    await nc.connect(**kwargs)
    return nc


def _say(nc: Client, message: str):
    async def callback() -> None:
        if not (nc.is_closed or nc.is_draining):  # our own shutdown is no news
            log.warning(message)

    return callback


async def _on_error(err: Exception) -> None:
    log.debug("NATS error: %r", err)
