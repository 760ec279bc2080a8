"""Times on the wire: RFC 3339 UTC strings with milliseconds, e.g. 2026-11-23T14:05:00.000Z."""

from __future__ import annotations

from datetime import datetime, timezone

from broker.errors import BadRequest


def to_iso(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with milliseconds."""
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def now_iso() -> str:
    return to_iso(datetime.now(timezone.utc))


def parse_iso(text: str) -> datetime:
    """Parse an RFC 3339 time; a time without an offset is taken as UTC.

    Raises ValueError on anything else.
    """
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def request_time(text: str, name: str) -> datetime:
    """A time field of a request: parsed, or 400 naming the field."""
    try:
        return parse_iso(text)
    except ValueError:
        raise BadRequest(f"{name} {text!r} is not an RFC 3339 time") from None


def seconds_since(text: str) -> float:
    """How long ago an RFC 3339 time was (negative when it is ahead); ValueError if it is none."""
    return (datetime.now(timezone.utc) - parse_iso(text)).total_seconds()
