"""Assertions the API tests share: errors a call must raise, times a reply must carry."""

from __future__ import annotations

import re
from datetime import datetime

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
