"""Schedule arithmetic shared by the broker (validation, `next_run_at`) and the scheduler.

Accepted cron forms:
- 5 fields: `minute hour day-of-month month day-of-week`;
- 6 fields: `second minute hour day-of-month month day-of-week` (seconds first, as in
  Quartz, Spring and robfig/cron);
- macros: `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`.

Times are computed in the batch's IANA timezone and returned in UTC.

Daylight-saving transitions follow the rule of Vixie cron, keyed on the hour field:
- a schedule with *fixed hours* (no `*` in the hour field, e.g. `30 2 * * *` or
  `*/15 2 * * *`) whose local times fall into the hour skipped when clocks go forward
  fires once, at the first instant after the gap (03:00 local), however many of its
  ticks fell into the gap; in the hour that repeats when clocks go back it fires in the
  first pass only. Nothing fires twice, nothing is silently lost.
- a schedule with *wildcard hours* (`*` in the hour field, e.g. `*/15 * * * *`,
  `@hourly`) follows real time: the skipped hour has no ticks and the repeated hour has
  both passes, so the interval between runs stays what it says.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

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


@functools.lru_cache(maxsize=4096)  # validating costs ~0.5 ms; list replies and the scheduler ask again and again
def normalize_cron(expression: str) -> str:
    """The expression with macros expanded and whitespace collapsed; raises ScheduleError."""
    text = " ".join(expression.split())
    if not text:
        raise ScheduleError("cron_expression is empty")
    if text.startswith("@"):
        try:
            return MACROS[text.lower()]
        except KeyError:
            names = ", ".join(sorted(MACROS))
            raise ScheduleError(f"cron_expression {text!r} is an unknown macro; use one of {names}") from None
    fields = text.split(" ")
    if len(fields) not in (5, 6):
        raise ScheduleError(
            f"cron_expression {text!r} has {len(fields)} fields; use 5 (minute hour day month weekday) "
            "or 6 (second first)"
        )
    if not croniter.is_valid(text, second_at_beginning=len(fields) == 6):
        raise ScheduleError(f"cron_expression {text!r} is not a valid cron expression")
    try:
        croniter(text, datetime.now(timezone.utc), second_at_beginning=len(fields) == 6).get_next(datetime)
    except (CroniterBadDateError, CroniterBadCronError):
        raise ScheduleError(f"cron_expression {text!r} never fires (e.g. February 30)") from None
    return text


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
    when the schedule stops firing (a year field in the past: croniter gives up) or its
    next time is past the year 9999 (`0 0 29 2 1#5` fires every few decades)."""
    times = fire_times(expression, tz_name, after)
    found: list[datetime] = []
    try:
        while len(found) < count:
            found.append(next(times))
    except ScheduleError:
        raise
    except (CroniterBadDateError, ValueError, OverflowError):  # ValueError/OverflowError: "year 10000 is out of range"
        pass
    return found


MAX_DST_SHIFT = timedelta(hours=3)
"""Larger than any clock change in the tz database (2 h at most)."""
ZERO = timedelta(0)


def fire_times(expression: str, tz_name: str, after: datetime) -> Iterator[datetime]:
    """Every fire time strictly after `after`, ascending, as aware UTC datetimes.

    Iterates the cron in naive local time (so a day is a calendar day whatever its
    length) and maps each local time to instants by the DST rule of this module.
    """
    cron = normalize_cron(expression)
    tz = zone(tz_name)
    fields = cron.split(" ")
    fixed_hours = "*" not in fields[-4]
    after = after.astimezone(timezone.utc)
    # Near a clock change an earlier local time may still happen after `after` (its
    # second pass). No local time before `after` + the smallest nearby UTC offset can,
    # so the iteration starts there.
    offset = min((after + shift).astimezone(tz).utcoffset() for shift in (-MAX_DST_SHIFT, ZERO, MAX_DST_SHIFT))
    start = (after + offset).replace(tzinfo=None)
    local = croniter(cron, start, second_at_beginning=len(fields) == 6)
    pending: list[datetime] = []
    last: datetime | None = None
    while True:
        naive = local.get_next(datetime)
        instants = _instants(naive, tz, fixed_hours)
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


def _instants(naive: datetime, tz: ZoneInfo, fixed_hours: bool) -> list[datetime]:
    """The UTC instants at which the local time `naive` happens, per the DST rule."""
    first = naive.replace(tzinfo=tz, fold=0)
    second = naive.replace(tzinfo=tz, fold=1)
    first_utc = first.astimezone(timezone.utc)
    if first.utcoffset() == second.utcoffset():
        return [first_utc]
    if first_utc.astimezone(tz).replace(tzinfo=None) != naive:  # skipped: clocks went forward
        return [_gap_end(second.astimezone(timezone.utc), first_utc, tz)] if fixed_hours else []
    if fixed_hours:  # repeated: clocks went back
        return [first_utc]
    return [first_utc, second.astimezone(timezone.utc)]


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
