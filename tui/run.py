"""Run the dashboard: `batchdeck tui`, and `batchdeck up` without `--headless`."""

from __future__ import annotations

import logging
from nats.aio.client import Client
from textual.logging import TextualHandler

from broker.connect import ConnectOptions
from tui.app import BatchdeckApp


def quiet_logging() -> None:
    """While the dashboard owns the terminal, log lines would tear through it: send them
    to Textual's devtools console instead (`textual console` shows them)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
    root.addHandler(TextualHandler())


def make_dashboard(options: ConnectOptions, org: str, nc: Client | None = None) -> BatchdeckApp:
    """The dashboard, ready for `await app.run_async()` (logging already kept off the terminal)."""
    quiet_logging()
    return BatchdeckApp(options, org, nc=nc)


async def run_dashboard(options: ConnectOptions, org: str) -> None:
    """The dashboard until the user quits."""
    await make_dashboard(options, org).run_async()
