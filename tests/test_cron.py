"""The cron dialect (`broker/cron.py`, `broker/schedule.py`) against what cron means
elsewhere: the edges an outside check found, then a differential property test against
two oracles.

- **A brute-force model of classic cron, our own**, written apart from the code under
  test: the random expressions are built from parts whose sets the generator knows, and
  fire times are found by stepping through every UTC minute (every second, for 6 fields)
  and asking what classic cron would do at that instant in the zone. Every expression
  kind the dialect has, 7 zones (Lord Howe's 30-minute and Chatham's 45-minute shifts
  among them), starts within two days of every daylight-saving change of 2025-2027.
- **cronsim**, another implementation (a test dependency, pinned): the same expressions
  where its dialect has them, in UTC over two years, with each known difference listed
  below with its reason.
"""

from __future__ import annotations

import calendar
import itertools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.schedule import ScheduleError, fire_times, next_times, normalize_cron

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "America/Sao_Paulo",
         "Pacific/Chatham")
MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


def local(zone: str, *parts: int, fold: int = 0) -> datetime:
    return datetime(*parts, tzinfo=ZoneInfo(zone), fold=fold).astimezone(timezone.utc)


# ---- what the outside check found ---------------------------------------------------------


def test_a_range_of_one_value_is_that_value():
    times = next_times("0 3-3 * * *", "UTC", utc(2026, 1, 1), 3)
    assert times == [utc(2026, 1, 1, 3), utc(2026, 1, 2, 3), utc(2026, 1, 3, 3)]
    assert next_times("0 9 * * MON-MON", "UTC", utc(2026, 1, 1), 2) == [utc(2026, 1, 5, 9), utc(2026, 1, 12, 9)]
    # and `31 11-11/2` is November only, which has no 31st: it never fires
    with pytest.raises(ScheduleError, match="never fires"):
        normalize_cron("0 0 31 11-11/2 *")


def test_a_day_field_that_starts_with_a_star_means_both_days_must_match():
    # */2 restricts the days of the month but starts with `*`: odd days that are Mondays
    times = next_times("0 0 */2 * 1", "UTC", utc(2026, 1, 1), 4)
    assert times == [utc(2026, 1, 5), utc(2026, 1, 19), utc(2026, 2, 9), utc(2026, 2, 23)]
    assert all(t.weekday() == 0 and t.day % 2 == 1 for t in times)


def test_two_restricted_day_fields_mean_either_one():
    assert next_times("0 0 1 * 1", "UTC", utc(2026, 1, 1), 4) == [
        utc(2026, 1, 5), utc(2026, 1, 12), utc(2026, 1, 19), utc(2026, 1, 26)]
    # `1#1` is the first Monday, `1` the first day: either
    assert next_times("0 0 1 * 1#1", "UTC", utc(2026, 1, 2), 4) == [
        utc(2026, 1, 5), utc(2026, 2, 1), utc(2026, 2, 2), utc(2026, 3, 1)]
    # `15W` (the weekday nearest the 15th) or a Friday
    assert next_times("0 0 15W * 5", "UTC", utc(2026, 2, 1), 4) == [
        utc(2026, 2, 6), utc(2026, 2, 13), utc(2026, 2, 16), utc(2026, 2, 20)]


@pytest.mark.parametrize("expression", ["0 0 21 * 1#1", "* 1 15W * 0", "39 * 15-17 * MON#2", "0 0 29 2 1#5"])
def test_an_expression_that_fires_is_not_refused(expression):
    assert len(next_times(expression, "UTC", utc(2026, 1, 1), 3)) == 3


@pytest.mark.parametrize(("expression", "first"), [
    ("0 0 * * 5L", utc(2026, 1, 30)),  # the last Friday
    ("0 0 LW * *", utc(2026, 1, 30)),  # the last weekday (31 Jan 2026 is a Saturday)
    ("0 0 * * 1,5#2", utc(2026, 1, 5)),  # every Monday, or the second Friday
    ("0 0 L-3 * *", utc(2026, 1, 28)),  # three days before the last
    ("0 0 L * *", utc(2026, 1, 31)),
    ("0 0 1W * *", utc(2026, 1, 1)),
    ("0 0 ? * SUN", utc(2026, 1, 4)),  # `?` is `*`
    ("0 22-2 * * *", utc(2026, 1, 1, 0)),  # a range that wraps: 22, 23, 0, 1, 2
    ("0 0 * * FRI-MON", utc(2026, 1, 2)),  # Friday to Monday
    ("0 0 2/10 * *", utc(2026, 1, 2)),  # 2, 12, 22
    ("0 0 * * 7", utc(2026, 1, 4)),  # 7 is Sunday, as 0
    ("0 0 1 nov-feb *", utc(2026, 1, 1)),
], ids=lambda value: value if isinstance(value, str) else "")
def test_the_extensions_others_accept_fire_as_documented(expression, first):
    assert next_times(expression, "UTC", utc(2025, 12, 31, 23, 59), 1) == [first]


def test_dst_for_a_star_in_the_minute_field_follows_classic_cron():
    spring = [t for t in next_times("*/15 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12), 8)]
    assert all(t.astimezone(ZoneInfo("Europe/Berlin")).day != 29 for t in spring)  # 02:xx did not exist
    autumn = next_times("*/15 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12), 8)
    assert len({t.astimezone(ZoneInfo("Europe/Berlin")).day for t in autumn}) == 1  # all 8 on the 25th, both passes
    fixed = next_times("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12), 2)
    assert fixed == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]  # the first pass only


def test_the_documented_dst_examples_are_what_the_code_does():
    berlin = "Europe/Berlin"
    # fixed: two ticks in the gap become one run at its end; the second pass of the fold is skipped
    assert next_times("0,30 2 * * *", berlin, utc(2026, 3, 28, 12), 2) == [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0)]
    assert next_times("0,30 2 * * *", berlin, utc(2026, 10, 24, 12), 3) == [
        utc(2026, 10, 25, 0), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1)]
    # wildcard hour: no 02:30 in spring, both passes in autumn
    assert next_times("30 * * * *", berlin, utc(2026, 3, 29, 0), 2) == [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30)]
    assert next_times("30 * * * *", berlin, utc(2026, 10, 25, 0), 2) == [
        utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30)]
    assert next_times("0 2,3 * * *", berlin, utc(2026, 3, 28, 12), 2) == [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0)]
    # a 30-minute shift: Lord Howe goes from 02:00 to 02:30 on 2026-10-04
    assert next_times("15 2 * * *", "Australia/Lord_Howe", utc(2026, 10, 3, 0), 1) == [local(
        "Australia/Lord_Howe", 2026, 10, 4, 2, 30)]


def dialect_section() -> str:
    text = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    return text[text.index("#### Cron dialect"):text.index("#### Fire times and daylight saving")]


def _expressions_in(text: str) -> list[str]:
    quoted = (" ".join(q.split()) for q in re.findall(r"`([^`]+)`", text))
    field = r"[\w*?/,#-]+"
    return [q for q in quoted if re.fullmatch(rf"@\w+|{field}( {field}){{4,5}}", q)
            and re.search(r"[\d*?@]", q)]  # not the names of the fields


def test_every_example_of_the_documented_dialect_is_accepted_and_every_refused_one_refused():
    section = dialect_section()
    accepted, refused = section.split("**Refused**")
    examples = _expressions_in(accepted)
    assert len(examples) > 25, examples
    for expression in examples:
        normalize_cron(expression)
    refusals = [e for e in _expressions_in(refused.split("**Where others differ**")[0])]
    assert {"61 * * * *", "0 0 30 2 *"} <= set(refusals)
    for expression in refusals:
        with pytest.raises(ScheduleError):
            normalize_cron(expression)


def test_the_documented_weekday_specials_fire_as_described():
    assert next_times("0 0 1W * *", "UTC", utc(2026, 7, 15), 1) == [utc(2026, 8, 3)]  # 1 Aug 2026 is a Saturday
    assert next_times("0 0 L-3 * *", "UTC", utc(2026, 1, 1), 2) == [utc(2026, 1, 28), utc(2026, 2, 25)]
    assert next_times("0 0 * * 5#5", "UTC", utc(2026, 1, 1), 2) == [utc(2026, 1, 30), utc(2026, 5, 29)]  # no 5th: none


# ---- the brute-force model ------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    text: str
    values: frozenset[int]
    specials: tuple[tuple[str, int, int], ...] = ()
    """Day specials: ("L", k, 0) last-k, ("W", n, 0), ("LW", 0, 0), ("#", weekday, k), ("DL", weekday, 0)."""

    @property
    def star(self) -> bool:
        return self.text.startswith(("*", "?"))


@dataclass(frozen=True)
class Expr:
    second: Field | None
    minute: Field
    hour: Field
    dom: Field
    month: Field
    dow: Field

    @property
    def text(self) -> str:
        parts = [self.minute, self.hour, self.dom, self.month, self.dow]
        return " ".join(f.text for f in ([self.second] if self.second else []) + parts)

    @property
    def wildcard(self) -> bool:
        return self.minute.star or self.hour.star or (self.second is not None and self.second.star)

    def day(self, year: int, month: int, day: int) -> bool:
        length = calendar.monthrange(year, month)[1]
        cron_weekday = (calendar.weekday(year, month, day) + 1) % 7  # Sunday 0
        by_dom = day in self.dom.values or any(_dom_special(s, year, month, day, length) for s in self.dom.specials)
        by_dow = cron_weekday in self.dow.values or any(
            _dow_special(s, year, month, day, length, cron_weekday) for s in self.dow.specials)
        return (by_dom and by_dow) if (self.dom.star or self.dow.star) else (by_dom or by_dow)

    def matches(self, t: datetime) -> bool:
        return (t.minute in self.minute.values and t.hour in self.hour.values and t.month in self.month.values
                and (self.second is None and t.second == 0 or self.second is not None and t.second in self.second.values)
                and self.day(t.year, t.month, t.day))


def _dom_special(special: tuple[str, int, int], year: int, month: int, day: int, length: int) -> bool:
    kind, n, _ = special
    if kind == "L":
        return day == length - n
    if kind == "LW":
        target = length
    else:  # W
        if n > length:
            return False
        target = n
    weekday = calendar.weekday(year, month, target)
    if weekday == 5:
        target = target - 1 if target > 1 else target + 2
    elif weekday == 6:
        target = target + 1 if target < length else target - 2
    return day == target


def _dow_special(special: tuple[str, int, int], year: int, month: int, day: int, length: int,
                 cron_weekday: int) -> bool:
    kind, weekday, k = special
    if cron_weekday != weekday:
        return False
    if kind == "#":
        return (day - 1) // 7 + 1 == k
    return day + 7 > length  # DL: the last of its weekday


def brute_force(expr: Expr, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """What classic cron does, instant by instant (minutes, or seconds for 6 fields),
    from `start` (exclusive) to `end` (inclusive): a wildcard job at every instant whose
    local time matches; a fixed job only in a local time's first pass, and once at the
    end of a gap in which some local time matched."""
    tz = ZoneInfo(zone)
    step = timedelta(seconds=1 if expr.second is not None else 60)
    u = start.replace(second=0, microsecond=0) if expr.second is None else start.replace(microsecond=0)
    u -= timedelta(hours=3)  # to have seen the first pass of a local time that repeats after `start`
    previous = (u - step).astimezone(tz).replace(tzinfo=None)
    seen: set[datetime] = set()
    fired: list[datetime] = []
    while u <= end:
        now = u.astimezone(tz).replace(tzinfo=None)
        fire = expr.matches(now) and (expr.wildcard or now not in seen)
        if not expr.wildcard and now - previous > step:  # a gap: what it skipped fires now, once
            skipped = previous + step
            while skipped < now and not fire:
                fire = expr.matches(skipped)
                skipped += step
        if fire and u > start:
            fired.append(u)
        seen.add(now)
        previous = now
        u += step
    return fired


# ---- generating expressions --------------------------------------------------------------------


def _span(low: int, high: int, start: int, end: int, step: int) -> frozenset[int]:
    size = high - low + 1
    length = end - start if end >= start else size - (start - end)
    return frozenset(low + (start - low + offset) % size for offset in range(0, length + 1, step))


@st.composite
def items(draw, low: int, high: int, names: tuple[str, ...] = (), name_base: int = 0) -> tuple[str, frozenset[int]]:
    """One item of a field, as text and as the set of values it stands for."""
    def show(value: int) -> str:
        if names and draw(st.booleans()) and 0 <= value - name_base < len(names):
            return names[value - name_base] if draw(st.booleans()) else names[value - name_base].lower()
        return str(value)

    kind = draw(st.sampled_from(["*", "*/n", "a", "a-b", "a-b/n", "a/n", "wrap"]))
    n = draw(st.integers(1, max(1, (high - low + 1) // 2)))
    a = draw(st.integers(low, high))
    b = draw(st.integers(a, high))
    if kind == "*":
        return "*", frozenset(range(low, high + 1))
    if kind == "*/n":
        return f"*/{n}", frozenset(range(low, high + 1, n))
    if kind == "a":
        return show(a), frozenset({a})
    if kind == "a-b":
        return f"{show(a)}-{show(b)}", frozenset(range(a, b + 1))
    if kind == "a-b/n":
        return f"{show(a)}-{show(b)}/{n}", frozenset(range(a, b + 1, n))
    if kind == "a/n":
        return f"{a}/{n}", frozenset(range(a, high + 1, n))
    if b == a:
        return show(a), frozenset({a})
    return f"{show(b)}-{show(a)}", _span(low, high, b, a, 1)  # wraps: b .. high, low .. a


@st.composite
def fields(draw, low: int, high: int, names: tuple[str, ...] = (), name_base: int = 0) -> Field:
    first = draw(items(low, high, names, name_base))
    rest = draw(st.lists(items(low, high, names, name_base).filter(lambda i: not i[0].startswith("*")),
                         max_size=2))
    text = ",".join([first[0]] + [r[0] for r in rest])
    values = frozenset().union(first[1], *(r[1] for r in rest))
    return Field(text, values)


@st.composite
def day_of_month(draw) -> Field:
    if draw(st.integers(0, 3)):
        field = draw(fields(1, 31))
        return field if not draw(st.booleans()) else Field(field.text.replace("*", "?", 1), field.values) \
            if field.text.startswith("*") else field
    special = draw(st.sampled_from(["L", "L-k", "nW", "LW"]))
    if special == "L":
        return Field("L", frozenset(), (("L", 0, 0),))
    if special == "L-k":
        k = draw(st.integers(1, 10))
        return Field(f"L-{k}", frozenset(), (("L", k, 0),))
    if special == "LW":
        return Field("LW", frozenset(), (("LW", 0, 0),))
    n = draw(st.integers(1, 31))
    return Field(f"{n}W", frozenset(), (("W", n, 0),))


@st.composite
def day_of_week(draw) -> Field:
    if draw(st.integers(0, 3)):
        field = draw(fields(0, 7, DAY_NAMES))
        return Field(field.text, frozenset(v % 7 for v in field.values))
    weekday = draw(st.integers(0, 6))
    name = draw(st.sampled_from([str(weekday), DAY_NAMES[weekday]]))
    if draw(st.booleans()):
        k = draw(st.integers(1, 5))
        special = Field(f"{name}#{k}", frozenset(), (("#", weekday, k),))
    else:
        special = Field(f"{name}L", frozenset(), (("DL", weekday, 0),))
    if draw(st.booleans()):  # in a list with a plain day
        other = draw(st.integers(0, 6))
        return Field(f"{other},{special.text}", frozenset({other}), special.specials)
    return special


@st.composite
def expressions(draw, seconds: bool = False) -> Expr:
    """Mostly frequent schedules (so a window around a clock change holds fire times)."""
    minute = draw(fields(0, 59)) if draw(st.integers(0, 2)) else Field("*", frozenset(range(60)))
    hour = draw(fields(0, 23))
    dom = draw(day_of_month()) if draw(st.integers(0, 2)) == 0 else Field("*", frozenset(range(1, 32)))
    dow = draw(day_of_week()) if draw(st.integers(0, 2)) == 0 else Field("*", frozenset(range(7)))
    month = Field("*", frozenset(range(1, 13))) if draw(st.integers(0, 3)) else draw(fields(1, 12, MONTH_NAMES, 1))
    second = draw(fields(0, 59)) if seconds else None
    return Expr(second, minute, hour, dom, month, dow)


@lru_cache(maxsize=None)
def transitions(zone: str) -> tuple[datetime, ...]:
    """The instants the zone's UTC offset changed in 2025-2027 (to the minute)."""
    tz = ZoneInfo(zone)
    found = []
    t = utc(2025, 1, 1)
    while t < utc(2028, 1, 1):
        nxt = t + timedelta(hours=6)
        if t.astimezone(tz).utcoffset() != nxt.astimezone(tz).utcoffset():
            low, high = t, nxt
            while high - low > timedelta(minutes=1):
                mid = low + (high - low) / 2
                if mid.astimezone(tz).utcoffset() == t.astimezone(tz).utcoffset():
                    low = mid
                else:
                    high = mid
            found.append(high.replace(second=0, microsecond=0))
        t = nxt
    return tuple(found) or (utc(2026, 1, 1),)


def ours(expr: Expr, zone: str, start: datetime, end: datetime) -> list[datetime]:
    return list(itertools.takewhile(lambda t: t <= end, fire_times(expr.text, zone, start)))


def fires_somewhere(expr: Expr) -> bool:
    """Whether the model finds a matching day in the 400-year Gregorian cycle (a month at a time)."""
    return any(expr.day(year, month, day) for year in range(2000, 2400) for month in expr.month.values
               for day in range(1, calendar.monthrange(year, month)[1] + 1))


def agree_with_the_model(expr: Expr, zone: str, start: datetime, end: datetime) -> None:
    try:
        normalize_cron(expr.text)
    except ScheduleError as err:
        # The only refusal allowed: the model finds no matching day in 400 years either.
        assert "never fires" in str(err) and not fires_somewhere(expr), (expr.text, str(err))
        return
    assert ours(expr, zone, start, end) == brute_force(expr, zone, start, end), (expr.text, zone, start)


# ---- the differential test ------------------------------------------------------------------------


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(expr=expressions(), zone=st.sampled_from(ZONES), data=st.data())
def test_fire_times_are_classic_crons_in_every_zone_around_every_clock_change(expr, zone, data):
    around = data.draw(st.sampled_from(transitions(zone)))
    start = around + timedelta(minutes=data.draw(st.integers(-2 * 24 * 60, 24 * 60)), seconds=data.draw(
        st.integers(0, 59)))
    agree_with_the_model(expr, zone, start, start + timedelta(days=2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(expr=expressions(seconds=True), zone=st.sampled_from(ZONES), data=st.data())
def test_six_field_fire_times_are_the_models_by_the_second(expr, zone, data):
    around = data.draw(st.sampled_from(transitions(zone)))
    start = around + timedelta(seconds=data.draw(st.integers(-3600, 1800)))
    agree_with_the_model(expr, zone, start, start + timedelta(minutes=90))


# ---- cronsim: the same expressions, another implementation ----------------------------------------

cronsim = pytest.importorskip("cronsim", reason="cronsim is a test dependency: pip install -e '.[test]'")

CRONSIM_REFUSES = {
    # extensions of batchdeck's dialect, documented in docs/protocol.md "Cron dialect":
    "wrap": "a range whose end is below its start wraps around (22-2, FRI-MON); cronsim refuses it",
    "?": "`?` stands for `*` in the day fields (Quartz); cronsim refuses it",
    "L-": "`L-N`, N days before the month's last (Quartz); cronsim refuses it",
    "NW": "`NW`, the weekday nearest day N (Quartz); cronsim has only `LW`",
    "nameL": "a day name before `L` (`FRIL`); cronsim takes only a number there",
    "names": "lowercase month and day names in ranges with steps; cronsim refuses some spellings",
}


def differs_by_design(expr: Expr) -> str | None:
    """Why cronsim cannot be asked about `expr` (one of CRONSIM_REFUSES), or None."""
    texts = [expr.minute.text, expr.hour.text, expr.dom.text, expr.month.text, expr.dow.text]
    if any(_wraps(f) for f in (expr.minute, expr.hour, expr.month, expr.dom, expr.dow)):
        return "wrap"
    if "?" in expr.dom.text or "?" in expr.dow.text:
        return "?"
    if "L-" in expr.dom.text:
        return "L-"
    if any(item.endswith("W") and item != "LW" for item in expr.dom.text.split(",")):
        return "NW"
    if any(item[:-1].isalpha() for item in expr.dow.text.split(",") if item.endswith("L")):
        return "nameL"
    if any(c.islower() for text in texts for c in text):
        return "names"
    return None


def _wraps(field: Field) -> bool:
    for item in field.text.split(","):
        base = item.split("/")[0]
        if "-" in base and not base.startswith("L-"):
            first, last = base.split("-")
            if _number(first) > _number(last):
                return True
    return False


def _number(text: str) -> int:
    if text.isdigit():
        return int(text)
    upper = text.upper()
    return DAY_NAMES.index(upper) if upper in DAY_NAMES else MONTH_NAMES.index(upper) + 1


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(expr=expressions(), data=st.data())
def test_fire_times_in_utc_are_cronsims_where_cronsim_has_the_expression(expr, data):
    reason = differs_by_design(expr)
    if reason is not None:
        assert reason in CRONSIM_REFUSES
        return
    try:
        normalize_cron(expr.text)
    except ScheduleError:
        return  # never fires: cronsim loops or raises on those (checked against the model above)
    start = utc(2025, 1, 1) + timedelta(minutes=data.draw(st.integers(0, 3 * 365 * 24 * 60)))
    theirs = cronsim.CronSim(expr.text, start)
    expected = []
    for moment in theirs:
        if moment > start + timedelta(days=60) or len(expected) == 50:
            break
        expected.append(moment.astimezone(timezone.utc))
    assert next_times(expr.text, "UTC", start, len(expected)) == expected, expr.text
