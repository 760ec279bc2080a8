"""Schedule arithmetic shared by the broker (validation, `next_run_at`) and the scheduler.

Accepted cron forms:
- 5 fields: `minute hour day-of-month month day-of-week`;
- 6 fields: `second minute hour day-of-month month day-of-week` (seconds first, as in
  Quartz, Spring and robfig/cron);
- macros: `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`.

Times are computed in the batch's IANA timezone and returned in UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone
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
    """The next `count` fire times strictly after `after`, as aware UTC datetimes."""
    cron = normalize_cron(expression)
    tz = zone(tz_name)
    iterator = croniter(cron, after.astimezone(tz), second_at_beginning=len(cron.split(" ")) == 6)
    return [iterator.get_next(datetime).astimezone(timezone.utc) for _ in range(count)]
