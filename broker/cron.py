"""batchdeck's cron dialect: classic (Vixie/ISC) cron, with the extensions Quartz made
common, parsed once into sets and matched without a library.

    [second] minute hour day-of-month month day-of-week        (5 fields, or 6: seconds first)
    @yearly @annually @monthly @weekly @daily @midnight @hourly

Each field is a comma separated list of items: `*`, `N`, `A-B`, each with an optional
`/STEP` (`*/15`, `10-50/20`, and `N/STEP`, which means `N-max/STEP`). Months and days of
the week take names (`JAN`…`DEC`, `SUN`…`SAT`, any case); day of week 0 and 7 are both
Sunday. A range whose end is below its start wraps around (`22-2` hours, `FRI-MON`).
`?` means `*` in either day field. The day fields also take:
- day of month: `L` (the month's last day), `L-N` (N days before it), `NW` (the weekday
  nearest to day N, within the month), `LW` (the month's last weekday);
- day of week: `NL` (the month's last day N, `5L` its last Friday), `N#K` (its K-th day
  N, `1#2` its second Monday; K 1-5).

**Which days.** As in classic cron: when either day field starts with `*` (or `?`),
`*/2` included, a day must match both fields; when both are restricted, either one.
So `0 0 */2 * 1` is the odd-numbered days that are Mondays, `0 0 1 * 1` the first of the
month and every Monday, `0 0 1 * 1#1` the first of the month and the first Monday.

**Wildcard or fixed** (what daylight saving does to it, `broker.schedule`): a schedule is
*wildcard* when its minute or its hour field (or its second field) starts with `*`.

Anything else is refused with a message that names the field and what is wrong.
"""

from __future__ import annotations

import bisect
import calendar
import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = {name: i for i, name in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                             "nov", "dec"), start=1)}
DAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
FIELD_NAMES = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
BOUNDS = {"second": (0, 59), "minute": (0, 59), "hour": (0, 23), "day-of-month": (1, 31), "month": (1, 12),
          "day-of-week": (0, 7)}
LAST_YEAR = 9999


class CronError(ValueError):
    """A cron expression that is not of the dialect, or never fires."""


@dataclass(frozen=True)
class Cron:
    """A parsed expression. Times are naive local times with whole seconds."""

    text: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: frozenset[int]
    day_rule: DayRule
    wildcard: bool
    """Minute, hour or second field starts with `*`: follows real time through DST."""

    def next_after(self, moment: datetime) -> datetime | None:
        """The first matching time strictly after `moment` (naive), None when there is none
        before the year 10 000."""
        t = moment.replace(microsecond=0) + timedelta(seconds=1)
        year, month, day, hour, minute, second = t.year, t.month, t.day, t.hour, t.minute, t.second
        seconds, minutes, hours = self.seconds, self.minutes, self.hours
        while year <= LAST_YEAR:
            if month not in self.months:
                year, month = _next_month(year, month, self.months)
                day, hour, minute, second = 1, 0, 0, 0
                continue
            days = self.day_rule.days(year, month)
            i = bisect.bisect_left(days, day)
            if i == len(days):
                year, month = _after(year, month)
                day, hour, minute, second = 1, 0, 0, 0
                continue
            if days[i] != day:
                day, hour, minute, second = days[i], 0, 0, 0
            i = bisect.bisect_left(hours, hour)
            if i == len(hours):
                day, hour, minute, second = day + 1, 0, 0, 0
                continue  # past the month's end: the day lookup moves on
            if hours[i] != hour:
                hour, minute, second = hours[i], 0, 0
            i = bisect.bisect_left(minutes, minute)
            if i == len(minutes):
                hour, minute, second = hour + 1, 0, 0
                if hour > 23:
                    day, hour = day + 1, 0
                continue
            if minutes[i] != minute:
                minute, second = minutes[i], 0
            i = bisect.bisect_left(seconds, second)
            if i == len(seconds):
                minute, second = minute + 1, 0
                if minute > 59:
                    hour, minute = hour + 1, 0
                    if hour > 23:
                        day, hour = day + 1, 0
                continue
            return datetime(year, month, day, hour, minute, seconds[i])
        return None


def _after(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _next_month(year: int, month: int, months: frozenset[int]) -> tuple[int, int]:
    for _ in range(12):
        year, month = _after(year, month)
        if month in months:
            return year, month
    return LAST_YEAR + 1, 1


# ---- days ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayRule:
    dom: tuple[str, ...]
    """Day-of-month items as written (numbers as sets below, specials kept as text)."""
    dom_days: frozenset[int]
    dom_specials: tuple[str, ...]
    dow_days: frozenset[int]
    """Weekdays, Monday 0 … Sunday 6 (Python's numbering)."""
    dow_specials: tuple[tuple[int, int], ...]
    """(weekday, k) for `N#K` (k 1-5) and (weekday, -1) for `NL`."""
    dom_star: bool
    dow_star: bool

    def days(self, year: int, month: int) -> tuple[int, ...]:
        return _days(self, year, month)


@functools.lru_cache(maxsize=8192)
def _days(rule: DayRule, year: int, month: int) -> tuple[int, ...]:
    """The days of one month the rule matches, ascending."""
    first_weekday, length = calendar.monthrange(year, month)
    by_dom = {d for d in rule.dom_days if d <= length}
    for item in rule.dom_specials:
        by_dom |= _special_dom(item, year, month, length)
    by_dow = {d for d in range(1, length + 1) if (first_weekday + d - 1) % 7 in rule.dow_days}
    for weekday, k in rule.dow_specials:
        candidates = [d for d in range(1, length + 1) if (first_weekday + d - 1) % 7 == weekday]
        if k == -1:
            by_dow.add(candidates[-1])
        elif k <= len(candidates):
            by_dow.add(candidates[k - 1])
    matched = (by_dom & by_dow) if (rule.dom_star or rule.dow_star) else (by_dom | by_dow)
    return tuple(sorted(matched))


def _special_dom(item: str, year: int, month: int, length: int) -> set[int]:
    if item == "L":
        return {length}
    if item.startswith("L-"):
        day = length - int(item[2:])
        return {day} if day >= 1 else set()
    if item == "LW":
        return {_nearest_weekday(year, month, length, length)}
    day = int(item[:-1])  # NW
    return {_nearest_weekday(year, month, day, length)} if day <= length else set()


def _nearest_weekday(year: int, month: int, day: int, length: int) -> int:
    """The Monday-to-Friday day nearest to `day`, not leaving the month (Quartz's `W`)."""
    weekday = calendar.weekday(year, month, day)
    if weekday == 5:  # Saturday: the Friday before, or the Monday after on the 1st
        return day - 1 if day > 1 else day + 2
    if weekday == 6:  # Sunday: the Monday after, or the Friday before on the last day
        return day + 1 if day < length else day - 2
    return day


# ---- parsing -----------------------------------------------------------------------------------


def expand(expression: str) -> str:
    """The expression with whitespace collapsed and a macro replaced by its fields."""
    text = " ".join(expression.split())
    if not text:
        raise CronError("cron_expression is empty")
    if text.startswith("@"):
        try:
            return MACROS[text.lower()]
        except KeyError:
            names = ", ".join(sorted(MACROS))
            raise CronError(f"cron_expression {text!r} is an unknown macro; use one of {names}") from None
    return text


@functools.lru_cache(maxsize=4096)
def parse(expression: str) -> Cron:
    """Parse (macros included); raise CronError naming the field and what is wrong."""
    text = expand(expression)
    fields = text.split(" ")
    if len(fields) not in (5, 6):
        raise CronError(f"cron_expression {text!r} has {len(fields)} fields; use 5 (minute hour day month weekday) "
                        "or 6 (second first)")
    if len(fields) == 5:
        fields = ["0", *fields]
        second_star = False
    else:
        second_star = fields[0].startswith("*")
    second, minute, hour, dom, month, dow = fields
    try:
        seconds = _numbers(second, "second")
        minutes = _numbers(minute, "minute")
        hours = _numbers(hour, "hour")
        months = _numbers(month, "month")
        day_rule = _day_rule(dom, dow)
    except CronError as err:
        raise CronError(f"cron_expression {text!r}: {err}") from None
    cron = Cron(text, tuple(sorted(seconds)), tuple(sorted(minutes)), tuple(sorted(hours)), frozenset(months),
                day_rule, wildcard=second_star or minute.startswith("*") or hour.startswith("*"))
    if not _fires_ever(cron):
        raise CronError(f"cron_expression {text!r} never fires (e.g. February 30)")
    return cron


def _fires_ever(cron: Cron) -> bool:
    """Days repeat every 400 years (the Gregorian cycle, weekdays included): a month of the
    cycle with a matching day is all it takes."""
    for year in range(2000, 2400):
        for month in cron.months:
            if cron.day_rule.days(year, month):
                return True
    return False


_ITEM = re.compile(r"^(?P<base>\*|\?|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(?P<step>\d+))?$")


def _numbers(text: str, field: str) -> set[int]:
    """The values of a plain field (second, minute, hour, month; the numeric items of
    the day fields)."""
    low, high = BOUNDS[field]
    values: set[int] = set()
    for item in _items(text, field):
        values |= _item_values(item, field, low, high)
    return values


def _items(text: str, field: str) -> list[str]:
    items = text.split(",")
    if any(not item for item in items):
        raise CronError(f"{text!r} has an empty item in the {field} field")
    return items


def _item_values(item: str, field: str, low: int, high: int) -> set[int]:
    match = _ITEM.match(item)
    if match is None:
        raise CronError(f"{item!r} is not a value, range or step in the {field} field")
    base, step_text = match.group("base"), match.group("step")
    step = int(step_text) if step_text is not None else 1
    if step_text is not None and step == 0:
        raise CronError(f"{item!r}: a step of 0 in the {field} field")
    if base in ("*", "?"):
        if base == "?" and field not in ("day-of-month", "day-of-week"):
            raise CronError(f"'?' in the {field} field: it stands for '*' in the day fields only")
        start, end = low, high
    elif "-" in base:
        first, last = base.split("-")
        start, end = _value(first, field, low, high), _value(last, field, low, high)
    else:
        start = _value(base, field, low, high)
        end = high if step_text is not None else start  # `N/STEP`: N, then every STEP to the end
    if step_text is not None and step > high - low + 1:
        raise CronError(f"{item!r}: a step of {step} is larger than the {field} field ({low}-{high})")
    if end >= start:
        values = set(range(start, end + 1, step))
    else:  # a range that wraps: start..high, then on from low
        size = high - low + 1
        values = {low + (start - low + offset) % size for offset in range(0, size - (start - end) + 1, step)}
    if field == "day-of-week" and 7 in values:
        values.discard(7)
        values.add(0)
    return values


def _value(text: str, field: str, low: int, high: int) -> int:
    names = MONTHS if field == "month" else DAYS if field == "day-of-week" else {}
    if text.lower() in names:
        return names[text.lower()]
    if not text.isdigit():
        kind = "a month name or number" if field == "month" else "a day name or number" \
            if field == "day-of-week" else "a number"
        raise CronError(f"{text!r} is not {kind} in the {field} field")
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{text!r} is out of range {low}-{high} in the {field} field")
    return value


def _day_rule(dom: str, dow: str) -> DayRule:
    dom_days: set[int] = set()
    dom_specials: list[str] = []
    for item in _items(dom, "day-of-month"):
        special = item.upper()
        if special in ("L", "LW") or re.fullmatch(r"L-\d+", special):
            if special.startswith("L-") and not 1 <= int(special[2:]) <= 30:
                raise CronError(f"{item!r}: L-N takes N from 1 to 30 in the day-of-month field")
            dom_specials.append(special)
        elif re.fullmatch(r"\d+W", special):
            _value(special[:-1], "day-of-month", 1, 31)
            dom_specials.append(special)
        elif "W" in special or "L" in special:
            raise CronError(f"{item!r} is not of the day-of-month field: use L, L-N, NW or LW")
        else:
            dom_days |= _item_values(item, "day-of-month", 1, 31)
    dow_days: set[int] = set()
    dow_specials: list[tuple[int, int]] = []
    for item in _items(dow, "day-of-week"):
        upper = item.upper()
        if "#" in upper:
            day_text, _, k_text = upper.partition("#")
            day = _value(day_text, "day-of-week", 0, 7) % 7
            if not k_text.isdigit() or not 1 <= int(k_text) <= 5:
                raise CronError(f"{item!r}: N#K takes K from 1 to 5 in the day-of-week field")
            dow_specials.append((_python_weekday(day), int(k_text)))
        elif upper.endswith("L") and upper != "L":
            day = _value(upper[:-1], "day-of-week", 0, 7) % 7
            dow_specials.append((_python_weekday(day), -1))
        elif upper == "L":
            raise CronError("'L' alone in the day-of-week field: name the day, e.g. 5L for the last Friday")
        else:
            dow_days |= {_python_weekday(d) for d in _item_values(item, "day-of-week", 0, 7)}
    return DayRule(
        dom=tuple(_items(dom, "day-of-month")), dom_days=frozenset(dom_days), dom_specials=tuple(dom_specials),
        dow_days=frozenset(dow_days), dow_specials=tuple(dow_specials),
        dom_star=dom.startswith(("*", "?")), dow_star=dow.startswith(("*", "?")),
    )


def _python_weekday(cron_day: int) -> int:
    """Cron's 0 = Sunday … 6 = Saturday as Python's 0 = Monday … 6 = Sunday."""
    return (cron_day - 1) % 7
