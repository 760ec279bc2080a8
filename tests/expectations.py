"""Assertions the tests share: errors a call must raise, times a reply must carry, and a
condition that must come true within a deadline."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import nats.errors
import pytest

from broker.errors import ApiError

RFC3339_MS_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


async def api_error(awaitable) -> ApiError:
    """The ApiError a call raises (fails the test when it succeeds)."""
    with pytest.raises(ApiError) as info:
        await awaitable
    return info.value


async def expect_error(code: int, awaitable) -> ApiError:
    """The ApiError a call raises, which must carry `code`."""
    error = await api_error(awaitable)
    assert error.code == code, error
    return error


def parse_time(text: str | None) -> datetime:
    """A time the API wrote: RFC 3339 UTC with milliseconds."""
    assert text is not None, "expected a time, got null"
    assert RFC3339_MS_UTC.match(text), f"{text!r} is not RFC 3339 UTC with milliseconds"
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float = 30.0, interval: float = 0.1,
                     what: str = "the condition") -> Any:
    """Await `probe()` until it returns something truthy and return that; fail the test
    with the last value (or error) seen once `timeout` seconds have passed. An ApiError
    or a NATS error counts as "not yet": a service may be (re)starting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            last = await probe()
        except (TimeoutError, ApiError, nats.errors.Error) as err:
            last = err
        else:
            if last:
                return last
        if loop.time() > deadline:
            pytest.fail(f"{what} not reached within {timeout:g} s; last seen: {last!r:.2000}")
        await asyncio.sleep(interval)
