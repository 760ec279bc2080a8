"""Schedule arithmetic (`broker/schedule.py`): what a batch's next runs are, in its own
timezone, across daylight-saving changes. Pure functions: no NATS.

The 2026 transitions used throughout:
- Europe/Berlin: 2026-03-29 02:00 -> 03:00 (01:00 UTC), 2026-10-25 03:00 -> 02:00 (01:00 UTC);
- America/New_York: 2026-03-08 02:00 -> 03:00 (07:00 UTC), 2026-11-01 02:00 -> 01:00 (06:00 UTC).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import pairwise
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.schedule import (
    ScheduleError,
    canonical_cron,
    next_times,
    normalize_cron,
    structured_to_cron,
    zone,
)

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


def local(name: str, *parts: int, fold: int = 0) -> datetime:
    """A wall-clock time in zone `name`, as the UTC instant it denotes."""
    return datetime(*parts, tzinfo=zone(name), fold=fold).astimezone(timezone.utc)


# ---- fixed hours: the skipped hour ---------------------------------------------------


def test_a_daily_run_in_the_skipped_hour_fires_once_at_the_gap_end():
    # 02:30 does not exist in Berlin on 2026-03-29: the run happens at 03:00 CEST instead.
    times = next_times("30 2 * * *", BERLIN, utc(2026, 3, 27, 12), 4)

    assert times == [
        local(BERLIN, 2026, 3, 28, 2, 30),
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, the first instant after the gap
        local(BERLIN, 2026, 3, 30, 2, 30),
        local(BERLIN, 2026, 3, 31, 2, 30),
    ]
    assert times[1].astimezone(zone(BERLIN)).strftime("%H:%M") == "03:00"


def test_a_daily_run_in_the_skipped_hour_in_new_york():
    times = next_times("30 2 * * *", NEW_YORK, utc(2026, 3, 7, 0), 3)

    assert times == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)]


def test_fixed_ticks_in_the_skipped_hour_collapse_into_one_run():
    # Both ticks fall into the gap; they fire once, not twice and not zero times.
    times = next_times("0,30 2 * * *", BERLIN, utc(2026, 3, 28, 12), 4)

    assert times == [
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST
        local(BERLIN, 2026, 3, 30, 2, 0),
        local(BERLIN, 2026, 3, 30, 2, 30),
        local(BERLIN, 2026, 3, 31, 2, 0),
    ]
    assert times[1] == utc(2026, 3, 30, 0, 0)  # CEST from then on


def test_a_star_in_the_minute_field_makes_a_wildcard_job_as_in_classic_cron():
    # `*/15 2 * * *`: its minute field starts with `*`, so it follows real time: on the day
    # 02:xx is skipped it does not fire at all, and when 02:xx repeats it fires in both passes.
    spring = next_times("*/15 2 * * *", BERLIN, utc(2026, 3, 28, 12), 5)
    assert spring == [local(BERLIN, 2026, 3, 30, 2, minute) for minute in (0, 15, 30, 45)] + [
        local(BERLIN, 2026, 3, 31, 2, 0)]
    autumn = next_times("*/15 2 * * *", BERLIN, utc(2026, 10, 24, 12), 8)
    assert autumn == [utc(2026, 10, 25, 0, m) for m in (0, 15, 30, 45)] + [
        utc(2026, 10, 25, 1, m) for m in (0, 15, 30, 45)]  # 02:xx CEST, then 02:xx CET


def test_the_gap_run_is_still_ahead_just_before_the_gap():
    # One second before clocks jump, the collapsed 02:30 run is the very next one.
    assert next_times("30 2 * * *", BERLIN, utc(2026, 3, 29, 0, 59, 59)) == [utc(2026, 3, 29, 1, 0)]


def test_the_gap_run_is_not_repeated_after_it_fired():
    assert next_times("0,15,30,45 2 * * *", BERLIN, utc(2026, 3, 29, 1, 0)) == [utc(2026, 3, 30, 0, 0)]


# ---- fixed hours: the repeated hour --------------------------------------------------


def test_a_daily_run_in_the_repeated_hour_fires_in_the_first_pass_only_in_berlin():
    times = next_times("30 2 * * *", BERLIN, utc(2026, 10, 23, 12), 4)

    assert times == [
        utc(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, first pass; not again at 01:30 UTC (02:30 CET)
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
        utc(2026, 10, 27, 1, 30),
    ]


def test_a_daily_run_in_the_repeated_hour_fires_in_the_first_pass_only_in_new_york():
    times = next_times("30 1 * * *", NEW_YORK, utc(2026, 10, 30, 12), 4)

    assert times == [
        utc(2026, 10, 31, 5, 30),  # 01:30 EDT
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT, first pass; not again at 06:30 UTC (01:30 EST)
        utc(2026, 11, 2, 6, 30),  # 01:30 EST
        utc(2026, 11, 3, 6, 30),
    ]


def test_from_inside_the_second_pass_the_repeated_run_is_not_fired_again():
    # 06:15 UTC is 01:15 EST, the second pass: 01:30 EST must not fire (01:30 EDT did).
    assert next_times("30 1 * * *", NEW_YORK, utc(2026, 11, 1, 6, 15)) == [utc(2026, 11, 2, 6, 30)]


# ---- wildcard hours follow real time -------------------------------------------------


def test_every_half_hour_across_the_skipped_hour_keeps_thirty_real_minutes():
    times = next_times("*/30 * * * *", BERLIN, utc(2026, 3, 28, 23, 0), 6)

    assert times == [
        utc(2026, 3, 28, 23, 30),  # 00:30 CET
        utc(2026, 3, 29, 0, 0),  # 01:00 CET
        utc(2026, 3, 29, 0, 30),  # 01:30 CET
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST: 02:00 and 02:30 do not exist
        utc(2026, 3, 29, 1, 30),  # 03:30 CEST
        utc(2026, 3, 29, 2, 0),
    ]
    assert all(later - earlier == timedelta(minutes=30) for earlier, later in pairwise(times))
    assert all(t.astimezone(zone(BERLIN)).hour != 2 for t in times)


def test_every_half_hour_across_the_repeated_hour_fires_in_both_passes():
    times = next_times("*/30 * * * *", BERLIN, utc(2026, 10, 24, 23, 0), 8)

    assert times == [
        utc(2026, 10, 24, 23, 30),  # 01:30 CEST
        utc(2026, 10, 25, 0, 0),  # 02:00 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 1, 0),  # 02:00 CET
        utc(2026, 10, 25, 1, 30),  # 02:30 CET
        utc(2026, 10, 25, 2, 0),  # 03:00 CET
        utc(2026, 10, 25, 2, 30),
        utc(2026, 10, 25, 3, 0),
    ]


def test_every_half_hour_in_new_york_fires_in_both_passes_of_one_oclock():
    times = next_times("*/30 * * * *", NEW_YORK, utc(2026, 11, 1, 5, 0), 5)

    assert times == [
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT
        utc(2026, 11, 1, 6, 0),  # 01:00 EST
        utc(2026, 11, 1, 6, 30),  # 01:30 EST
        utc(2026, 11, 1, 7, 0),  # 02:00 EST
        utc(2026, 11, 1, 7, 30),
    ]


def test_hourly_follows_real_time_across_both_changes():
    spring = next_times("@hourly", BERLIN, utc(2026, 3, 28, 23, 30), 4)
    autumn = next_times("@hourly", BERLIN, utc(2026, 10, 24, 22, 30), 5)

    assert spring == [utc(2026, 3, 29, 0), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2), utc(2026, 3, 29, 3)]
    assert [t.astimezone(zone(BERLIN)).hour for t in spring] == [1, 3, 4, 5]
    assert autumn == [utc(2026, 10, 24, 23), utc(2026, 10, 25, 0), utc(2026, 10, 25, 1), utc(2026, 10, 25, 2),
                      utc(2026, 10, 25, 3)]
    assert [t.astimezone(zone(BERLIN)).hour for t in autumn] == [1, 2, 2, 3, 4]


def test_hourly_from_inside_the_second_pass_continues_with_real_hours():
    # 01:30 UTC is 02:30 CET (second pass); 02:00 CET (01:00 UTC) is already past.
    assert next_times("@hourly", BERLIN, utc(2026, 10, 25, 1, 30), 2) == [utc(2026, 10, 25, 2), utc(2026, 10, 25, 3)]


# ---- seconds, macros, structured schedules -------------------------------------------


def test_six_fields_put_seconds_first():
    after = utc(2026, 1, 1, 12, 0, 5)

    assert next_times("*/10 * * * * *", "UTC", after, 3) == [
        utc(2026, 1, 1, 12, 0, 10), utc(2026, 1, 1, 12, 0, 20), utc(2026, 1, 1, 12, 0, 30)]
    # `5 * * * * *` is second 5 of every minute, strictly after `after`.
    assert next_times("5 * * * * *", "UTC", after, 3) == [
        utc(2026, 1, 1, 12, 1, 5), utc(2026, 1, 1, 12, 2, 5), utc(2026, 1, 1, 12, 3, 5)]


def test_six_fields_with_fixed_fields_in_the_skipped_hour_fire_once():
    # Seconds 0 and 30 of every minute of 02:xx are 120 ticks in the gap: one run at its end.
    times = next_times("0,30 0-59 2 * * *", BERLIN, utc(2026, 3, 29, 0, 59, 30), 3)

    assert times == [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 0, 0), utc(2026, 3, 30, 0, 0, 30)]
    # a `*` in the seconds field follows real time, as one in the minute field does
    assert next_times("*/20 * 2 * * *", BERLIN, utc(2026, 3, 29, 0, 59, 30), 1) == [utc(2026, 3, 30, 0, 0, 0)]


def test_macros_fire_at_local_midnight_in_their_zone():
    # 2026-03-08 is a Sunday and the day New York goes to EDT: midnight moves from 05:00 to 04:00 UTC.
    after = utc(2026, 3, 7, 12)

    assert next_times("@daily", NEW_YORK, after, 2) == [utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)]
    assert next_times("@midnight", NEW_YORK, after, 2) == [utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)]
    assert next_times("@weekly", NEW_YORK, after, 2) == [utc(2026, 3, 8, 5), utc(2026, 3, 15, 4)]
    assert next_times("@monthly", NEW_YORK, after, 2) == [utc(2026, 4, 1, 4), utc(2026, 5, 1, 4)]
    assert next_times("@yearly", NEW_YORK, after, 2) == [utc(2027, 1, 1, 5), utc(2028, 1, 1, 5)]
    assert next_times("@annually", NEW_YORK, after, 1) == [utc(2027, 1, 1, 5)]
    assert next_times("@hourly", NEW_YORK, after, 2) == [utc(2026, 3, 7, 13), utc(2026, 3, 7, 14)]


def test_macros_are_case_insensitive_and_kept_as_macros_when_stored():
    assert normalize_cron("  @DAILY ") == "0 0 * * *"
    assert canonical_cron("  @Daily ") == "@daily"
    assert canonical_cron(" 0   3 *  * * ") == "0 3 * * *"
    assert canonical_cron("*/10  * * * * *") == "*/10 * * * * *"


def test_a_structured_schedule_of_monday_three_oclock():
    cron = structured_to_cron({"hours": [3], "weekdays": [1]})

    assert cron == "0 3 * * 1"
    # 2026-05-13 is a Wednesday; the next Mondays are May 18 and 25, 03:00 CEST = 01:00 UTC.
    assert next_times(cron, BERLIN, utc(2026, 5, 13, 12), 2) == [utc(2026, 5, 18, 1), utc(2026, 5, 25, 1)]


def test_a_structured_schedule_of_minutes_fires_every_hour():
    cron = structured_to_cron({"minutes": [30, 0, 30]})

    assert cron == "0,30 * * * *"
    assert next_times(cron, NEW_YORK, utc(2026, 5, 13, 12, 10), 3) == [
        utc(2026, 5, 13, 12, 30), utc(2026, 5, 13, 13, 0), utc(2026, 5, 13, 13, 30)]


def test_an_empty_structured_schedule_fires_every_minute():
    cron = structured_to_cron({})

    assert cron == "* * * * *"
    assert structured_to_cron({"hours": [], "minutes": []}) == "* * * * *"
    assert next_times(cron, BERLIN, utc(2026, 5, 13, 12, 0, 30), 2) == [utc(2026, 5, 13, 12, 1), utc(2026, 5, 13, 12, 2)]


def test_a_structured_schedule_of_days_and_months():
    cron = structured_to_cron({"days_of_month": [1, 15], "months": [6]})

    assert cron == "0 * 1,15 6 *"  # minute 0 of every hour on those days
    assert next_times(cron, "UTC", utc(2026, 5, 13), 2) == [utc(2026, 6, 1, 0), utc(2026, 6, 1, 1)]


# ---- errors a user can act on --------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("@every 5m", "unknown macro; use one of @annually, @daily, @hourly"),
        ("@reboot", "unknown macro"),
        ("", "empty"),
        ("   ", "empty"),
        ("* * * *", "has 4 fields; use 5 (minute hour day month weekday) or 6 (second first)"),
        ("* * * * * * *", "has 7 fields"),
        ("60 * * * *", "'60' is out of range 0-59 in the minute field"),
        ("0 24 * * *", "'24' is out of range 0-23 in the hour field"),
        ("0 0 32 * *", "'32' is out of range 1-31 in the day-of-month field"),
        ("0 0 * 13 *", "'13' is out of range 1-12 in the month field"),
        ("0 0 * * 8", "'8' is out of range 0-7 in the day-of-week field"),
        ("61 * * * * *", "'61' is out of range 0-59 in the second field"),
        ("0 0 * * MOM", "'MOM' is not a day name or number in the day-of-week field"),
        ("*/0 * * * *", "a step of 0 in the minute field"),
        ("0 0 1,,2 * *", "has an empty item in the day-of-month field"),
        ("0 0 * * 1#6", "N#K takes K from 1 to 5 in the day-of-week field"),
        ("0 0 * * L", "'L' alone in the day-of-week field"),
        ("0 0 15X * *", "'15X' is not a number in the day-of-month field"),
        ("0 ? * * *", "stands for '*' in the day fields only"),
        ("every day", "has 2 fields"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4 *", "never fires"),
    ],
)
def test_an_invalid_cron_expression_says_what_is_wrong(expression: str, message: str):
    with pytest.raises(ScheduleError, match=re.escape(message)):
        normalize_cron(expression)
    with pytest.raises(ScheduleError):
        next_times(expression, "UTC", utc(2026, 1, 1))


@pytest.mark.parametrize("name", ["Mars/Olympus", "Europe", "", "europe/berlin/extra", "../etc/passwd"])
def test_an_unknown_timezone_is_refused_with_an_example(name: str):
    with pytest.raises(ScheduleError, match=r"not a known IANA timezone \(e\.g\. 'UTC', 'Europe/Berlin'\)"):
        zone(name)
    with pytest.raises(ScheduleError, match="not a known IANA timezone"):
        next_times("0 3 * * *", name, utc(2026, 1, 1))


@pytest.mark.parametrize(
    ("structured", "message"),
    [
        ({"hour": [3]}, "unknown field 'hour'"),
        ({"seconds": [0]}, "unknown field 'seconds'"),
        ({"hours": [24]}, "schedule.hours values must be integers from 0 to 23, got 24"),
        ({"minutes": [-1]}, "schedule.minutes values must be integers from 0 to 59, got -1"),
        ({"days_of_month": [0]}, "schedule.days_of_month values must be integers from 1 to 31, got 0"),
        ({"months": [13]}, "schedule.months values must be integers from 1 to 12, got 13"),
        ({"weekdays": [7]}, "schedule.weekdays values must be integers from 0 to 6, got 7"),
        ({"minutes": [True]}, "schedule.minutes values must be integers from 0 to 59, got True"),
        ({"hours": ["3"]}, "schedule.hours values must be integers from 0 to 23, got '3'"),
    ],
)
def test_an_invalid_structured_schedule_says_what_is_wrong(structured: dict, message: str):
    with pytest.raises(ScheduleError, match=re.escape(message)):
        structured_to_cron(structured)


def test_a_structured_schedule_that_never_fires_is_refused_when_used():
    cron = structured_to_cron({"days_of_month": [31], "months": [4]})  # April has 30 days

    with pytest.raises(ScheduleError, match="never fires"):
        next_times(cron, "UTC", utc(2026, 1, 1))


# ---- properties near every 2026 transition -------------------------------------------

TRANSITIONS = [
    utc(2026, 3, 29, 1),  # Berlin forward
    utc(2026, 10, 25, 1),  # Berlin back
    utc(2026, 3, 8, 7),  # New York forward
    utc(2026, 11, 1, 6),  # New York back
]
EXPRESSIONS = [
    "*/7 * * * *",
    "30 2 * * *",
    "30 1 * * *",
    "0 */2 * * *",
    "15,45 1-3 * * *",
    "*/15 2 * * *",
    "0 2,3 * * *",
    "@hourly",
    "@daily",
    "*/20 * * * * *",
    "*/20 * 2 * * *",
]
COUNT = 10


def _near_a_transition() -> st.SearchStrategy[datetime]:
    """Instants within ±2 days of a transition, half of them within ±3 hours, where the
    interesting mapping happens; with microseconds, since real clocks have them."""
    wide = st.integers(-2 * 86400 * 10**6, 2 * 86400 * 10**6)
    close = st.integers(-3 * 3600 * 10**6, 3 * 3600 * 10**6)
    return st.builds(
        lambda transition, micros: transition + timedelta(microseconds=micros),
        st.sampled_from(TRANSITIONS),
        st.one_of(wide, close),
    )


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(after=_near_a_transition(), expression=st.sampled_from(EXPRESSIONS), tz_name=st.sampled_from([BERLIN, NEW_YORK]))
def test_fire_times_near_a_transition_are_ordered_unique_and_restartable(after, expression, tz_name):
    times = next_times(expression, tz_name, after, COUNT)

    assert len(times) == COUNT
    assert times[0] > after
    assert all(earlier < later for earlier, later in pairwise(times)), times
    assert len(set(times)) == len(times)
    # The scheduler restarts from the last fired tick: it must land on the same next one.
    for k in range(COUNT - 1):
        assert next_times(expression, tz_name, times[k], 1) == [times[k + 1]], (k, times)
