"""Schedule arithmetic shared by the broker (validation, `next_run_at`, `batch.next`) and
the scheduler: when a batch fires, in its timezone, through daylight saving.

The cron dialect (fields, names, ranges, steps, `L`, `W`, `#`, `?`, macros, which days) is
`broker.cron`'s. Times are computed in the batch's IANA timezone and returned in UTC.

Daylight saving follows classic cron (Vixie/ISC cron, Debian's cron, cronie):
- a *wildcard* schedule (its minute or hour field starts with `*`, or its second field in
  a 6-field cron: `*/15 2 * * *`, `0 * * * *`, `@hourly`) follows real time: a local time
  the clocks skip has no tick, and one they repeat has a tick in each pass;
- a *fixed* schedule (`30 2 * * *`, `0 9,17 * * 1-5`) fires once at the end of a gap for
  whatever ticks fell into it (at the instant the clocks jumped, 03:00 local), and in a
  repeated hour in the first pass only.
Nothing fixed fires twice; nothing fixed is silently lost. Zones with 30-minute shifts
(Australia/Lord_Howe) and 45-minute offsets (Pacific/Chatham) follow the same rule: the
gap and the fold are found from the zone's offsets, not assumed to be an hour.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broker import cron
from broker.cron import MACROS

__all__ = ["MACROS", "ScheduleError", "canonical_cron", "fire_times", "next_times", "normalize_cron",
           "structured_to_cron", "zone"]

# Structured schedule field -> (cron position, lowest, highest).
STRUCTURED_FIELDS = {
    "minutes": (0, 0, 59),
    "hours": (1, 0, 23),
    "days_of_month": (2, 1, 31),
    "months": (3, 1, 12),
    "weekdays": (4, 0, 6),
}


class ScheduleError(ValueError):
    """An invalid cron expression, structured schedule or timezone."""


def parsed(expression: str) -> cron.Cron:
    """The parsed expression (cached); raises ScheduleError saying what is wrong."""
    try:
        return cron.parse(expression)
    except cron.CronError as err:
        raise ScheduleError(str(err)) from None


def normalize_cron(expression: str) -> str:
    """The expression with macros expanded and whitespace collapsed; raises ScheduleError."""
    return parsed(expression).text


def canonical_cron(expression: str) -> str:
    """The expression as it is stored: validated, whitespace collapsed, macros lower-cased
    but kept as macros (operators read `@daily` better than `0 0 * * *`)."""
    normalize_cron(expression)
    text = " ".join(expression.split())
    return text.lower() if text.startswith("@") else text


def zone(name: str) -> ZoneInfo:
    """The IANA zone of that name; raises ScheduleError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):  # OSError: "Europe" is a directory
        raise ScheduleError(f"timezone {name!r} is not a known IANA timezone (e.g. 'UTC', 'Europe/Berlin')") from None


def structured_to_cron(schedule: dict[str, list[int]]) -> str:
    """Convert `{minutes, hours, days_of_month, months, weekdays}` to a 5-field cron.

    An empty or missing list means "every"; `minutes` defaults to `[0]` when any coarser
    field is set, so `{"hours": [3]}` means 03:00 and not every minute of 03:xx.
    """
    fields = ["*"] * 5
    for name, values in schedule.items():
        if name not in STRUCTURED_FIELDS:
            raise ScheduleError(f"schedule has an unknown field {name!r}")
        position, low, high = STRUCTURED_FIELDS[name]
        if not values:
            continue
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ScheduleError(f"schedule.{name} values must be integers from {low} to {high}, got {value!r}")
        fields[position] = ",".join(str(v) for v in sorted(set(values)))
    if fields[0] == "*" and any(f != "*" for f in fields[1:]):
        fields[0] = "0"
    return " ".join(fields)


def next_times(expression: str, tz_name: str, after: datetime, count: int = 1) -> list[datetime]:
    """The next `count` fire times strictly after `after`, as aware UTC datetimes; fewer
    when there are fewer before the year 10 000."""
    return list(itertools.islice(fire_times(expression, tz_name, after), max(count, 0)))


MAX_DST_SHIFT = timedelta(hours=3)
"""Larger than any clock change in the tz database (2 h at most)."""
ZERO = timedelta(0)


def fire_times(expression: str, tz_name: str, after: datetime) -> Iterator[datetime]:
    """Every fire time strictly after `after`, ascending, as aware UTC datetimes (ending
    before the year 10 000).

    Iterates the cron in naive local time (so a day is a calendar day whatever its
    length) and maps each local time to instants by the DST rule of this module.
    """
    parsed_cron = parsed(expression)
    tz = zone(tz_name)
    fixed = not parsed_cron.wildcard
    after = after.astimezone(UTC)
    if tz_name == "UTC":  # no clock changes: no mapping to do
        naive: datetime | None = after.replace(tzinfo=None)
        while (naive := parsed_cron.next_after(naive)) is not None:
            yield naive.replace(tzinfo=UTC)
        return
    # Near a clock change an earlier local time may still happen after `after` (its
    # second pass). No local time before `after` + the smallest nearby UTC offset can,
    # so the iteration starts there.
    offset = min((after + shift).astimezone(tz).utcoffset() for shift in (-MAX_DST_SHIFT, ZERO, MAX_DST_SHIFT))
    local: datetime | None = (after + offset).replace(tzinfo=None) - timedelta(seconds=1)
    pending: list[datetime] = []
    last: datetime | None = None
    while True:
        local = parsed_cron.next_after(local) if local is not None else None
        if local is None:  # past the year 9999: what is pending is all there is
            while pending:
                instant = heapq.heappop(pending)
                if instant > after and instant != last:
                    last = instant
                    yield instant
            return
        naive = local
        instants = _instants(naive, tz, fixed)
        for instant in instants:
            heapq.heappush(pending, instant)
        if not instants:
            continue
        # Later local times never map before the first pass of this one, so every
        # pending instant up to it is final.
        horizon = instants[0]
        while pending and pending[0] <= horizon:
            instant = heapq.heappop(pending)
            if instant > after and instant != last:
                last = instant
                yield instant


def _instants(naive: datetime, tz: ZoneInfo, fixed: bool) -> list[datetime]:
    """The UTC instants at which the local time `naive` happens, per the DST rule."""
    first = naive.replace(tzinfo=tz, fold=0)
    second = naive.replace(tzinfo=tz, fold=1)
    first_utc = first.astimezone(UTC)
    if first.utcoffset() == second.utcoffset():
        return [first_utc]
    if first_utc.astimezone(tz).replace(tzinfo=None) != naive:  # skipped: clocks went forward
        return [_gap_end(second.astimezone(UTC), first_utc, tz)] if fixed else []
    if fixed:  # repeated: clocks went back
        return [first_utc]
    return [first_utc, second.astimezone(UTC)]


def _gap_end(low: datetime, high: datetime, tz: ZoneInfo) -> datetime:
    """The instant clocks jumped forward, between `low` (still before) and `high` (after)."""
    before = low.astimezone(tz).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)
