"""Stopping asyncio tasks for sure."""

from __future__ import annotations

import asyncio

RECANCEL_EVERY = 1.0


async def cancel_and_wait(*tasks: asyncio.Task) -> None:
    """Cancel the tasks and wait until each has ended, cancelling again while one runs on.

    One cancel is not always enough on Python 3.11: `asyncio.wait_for` (inside nats-py's
    `fetch` and `next_msg`) swallows a cancel that arrives as its inner wait ends, and a
    loop that treats the resulting timeout as "no message yet" then runs forever (seen
    as a test teardown hanging in `ControlPlane.stop`)."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY)
    for task in tasks:  # retrieve outcomes so none is logged as "never retrieved"
        if not task.cancelled():
            task.exception()
