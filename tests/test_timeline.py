"""The scheduler's timeline (`scheduler/timeline.py`): which batch ticks are due when,
and which missed ticks each catch-up policy brings back. Pure arithmetic: no NATS."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from broker.types import Action, Batch
from scheduler.timeline import Tick, Timeline

ORG = "acme"
NOON = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)


def utc(*parts: int, microsecond: int = 0) -> datetime:
    return datetime(*parts, microsecond=microsecond, tzinfo=timezone.utc)


def batch(**fields: Any) -> Batch:
    """An enabled batch with one action; `fields` override (default: every second, UTC)."""
    defaults: dict[str, Any] = {
        "id": "nightly",
        "name": "nightly",
        "cron_expression": "* * * * * *",
        "is_enabled": True,
        "run_on_startup": False,
        "actions": [Action(task_id="t")],
    }
    return Batch(**{**defaults, **fields})


def cron(at: datetime, batch_id: str = "nightly", org: str = ORG) -> Tick:
    return Tick(org, batch_id, at, "cron")


def catch_up(at: datetime, batch_id: str = "nightly", org: str = ORG) -> Tick:
    return Tick(org, batch_id, at, "catch_up")


def run_until(timeline: Timeline, end: datetime) -> list[Tick]:
    """Pop every tick the way the scheduler loop does: wake at `next_due`, pop, repeat."""
    fired: list[Tick] = []
    while (due := timeline.next_due()) is not None and due <= end:
        fired += timeline.pop_due(due)
    return fired


# ---- on-time ticks -------------------------------------------------------------------


def test_two_batches_fire_interleaved_at_their_own_times():
    timeline = Timeline()
    start = utc(2026, 5, 1, 12, 0, 30)
    timeline.set(ORG, batch(id="reports", cron_expression="*/20 * * * *"), start)
    timeline.set("globex", batch(id="backup", cron_expression="5,30 * * * *", timezone="Europe/Berlin"), start)

    assert timeline.next_due() == utc(2026, 5, 1, 12, 5)
    assert timeline.pop_due(utc(2026, 5, 1, 12, 4, 59)) == []
    assert run_until(timeline, utc(2026, 5, 1, 13, 5)) == [
        cron(utc(2026, 5, 1, 12, 5), "backup", "globex"),
        cron(utc(2026, 5, 1, 12, 20), "reports"),
        cron(utc(2026, 5, 1, 12, 30), "backup", "globex"),
        cron(utc(2026, 5, 1, 12, 40), "reports"),
        cron(utc(2026, 5, 1, 13, 0), "reports"),
        cron(utc(2026, 5, 1, 13, 5), "backup", "globex"),
    ]
    assert timeline.next_due() == utc(2026, 5, 1, 13, 20)


def test_a_batch_fires_in_its_own_timezone():
    timeline = Timeline()
    timeline.set(ORG, batch(cron_expression="0 3 * * *", timezone="America/New_York"), NOON)

    assert timeline.next_due() == utc(2026, 5, 2, 7)  # 03:00 EDT


def test_a_tick_is_not_due_before_its_time_and_fires_once():
    timeline = Timeline()
    timeline.set(ORG, batch(), utc(2026, 5, 1, 12, 0, 0, microsecond=500_000))

    assert timeline.pop_due(utc(2026, 5, 1, 12, 0, 0, microsecond=999_999)) == []
    assert timeline.pop_due(utc(2026, 5, 1, 12, 0, 1)) == [cron(utc(2026, 5, 1, 12, 0, 1))]
    assert timeline.pop_due(utc(2026, 5, 1, 12, 0, 1, microsecond=500_000)) == []
    assert timeline.next_due() == utc(2026, 5, 1, 12, 0, 2)


# ---- disabling, deleting, editing ----------------------------------------------------


def test_a_disabled_batch_stops_firing():
    timeline = Timeline()
    timeline.set(ORG, batch(id="keep"), NOON)
    timeline.set(ORG, batch(id="pause"), NOON)

    assert timeline.set(ORG, batch(id="pause", is_enabled=False), NOON + timedelta(seconds=0.5)) == []

    assert len(timeline) == 1
    assert timeline.pop_due(NOON + timedelta(seconds=3)) == [cron(NOON + timedelta(seconds=3), "keep")]


def test_a_deleted_batch_stops_firing():
    timeline = Timeline()
    timeline.set(ORG, batch(), NOON)

    deleted = batch(deleted_at="2026-05-01T12:00:00.500Z")
    assert timeline.set(ORG, deleted, NOON + timedelta(seconds=0.5), missed_since=NOON - timedelta(hours=1)) == []

    assert len(timeline) == 0
    assert timeline.next_due() is None
    assert timeline.pop_due(NOON + timedelta(days=1)) == []


def test_a_disabled_batch_that_was_never_scheduled_is_ignored():
    timeline = Timeline()

    assert timeline.set(ORG, batch(is_enabled=False), NOON) == []
    assert len(timeline) == 0
    assert timeline.next_due() is None


def test_the_same_batch_id_in_two_orgs_is_two_batches():
    timeline = Timeline()
    timeline.set("acme", batch(), NOON)
    timeline.set("globex", batch(), NOON)
    timeline.set("globex", batch(is_enabled=False), NOON)

    assert timeline.pop_due(NOON + timedelta(seconds=1)) == [cron(NOON + timedelta(seconds=1), org="acme")]


def test_an_unrelated_edit_keeps_the_pending_tick():
    timeline = Timeline()
    timeline.set(ORG, batch(), utc(2026, 5, 1, 12, 0, 0, microsecond=500_000))

    timeline.set(ORG, batch(name="renamed"), utc(2026, 5, 1, 12, 0, 0, microsecond=900_000))

    assert timeline.pop_due(utc(2026, 5, 1, 12, 0, 1)) == [cron(utc(2026, 5, 1, 12, 0, 1))]
    assert timeline.entries[(ORG, "nightly")].batch.name == "renamed"


def test_an_edit_arriving_while_a_tick_is_due_does_not_lose_it():
    # The scheduler is a little late: the edit is applied at 12:00:01.2, before it pops
    # the 12:00:01 tick. Rescheduling from "now" would skip that tick.
    timeline = Timeline()
    timeline.set(ORG, batch(catch_up="none"), utc(2026, 5, 1, 12, 0, 0, microsecond=500_000))

    timeline.set(ORG, batch(name="renamed", catch_up="none", concurrency="allow"),
                 utc(2026, 5, 1, 12, 0, 1, microsecond=200_000))

    assert timeline.pop_due(utc(2026, 5, 1, 12, 0, 1, microsecond=300_000)) == [cron(utc(2026, 5, 1, 12, 0, 1))]


def test_a_changed_schedule_reschedules_from_now():
    timeline = Timeline()
    timeline.set(ORG, batch(), utc(2026, 5, 1, 12, 0, 0, microsecond=500_000))

    timeline.set(ORG, batch(cron_expression="*/10 * * * * *"), utc(2026, 5, 1, 12, 0, 0, microsecond=900_000))

    assert timeline.next_due() == utc(2026, 5, 1, 12, 0, 10)
    assert timeline.pop_due(utc(2026, 5, 1, 12, 0, 9)) == []
    assert timeline.pop_due(utc(2026, 5, 1, 12, 0, 10)) == [cron(utc(2026, 5, 1, 12, 0, 10))]


def test_a_changed_timezone_reschedules():
    timeline = Timeline()
    timeline.set(ORG, batch(cron_expression="0 3 * * *"), NOON)
    assert timeline.next_due() == utc(2026, 5, 2, 3)

    timeline.set(ORG, batch(cron_expression="0 3 * * *", timezone="Europe/Berlin"), NOON + timedelta(minutes=1))

    assert timeline.next_due() == utc(2026, 5, 2, 1)  # 03:00 CEST
    assert run_until(timeline, utc(2026, 5, 2, 3)) == [cron(utc(2026, 5, 2, 1))]


def test_a_macro_and_its_expansion_are_the_same_schedule():
    timeline = Timeline()
    timeline.set(ORG, batch(cron_expression="*/10 * * * * *"), utc(2026, 5, 1, 12, 0, 0, microsecond=500_000))
    timeline.set(ORG, batch(cron_expression="@daily"), utc(2026, 5, 1, 12, 0, 1))

    # Applied just after midnight, before the midnight tick was popped: it must still fire.
    timeline.set(ORG, batch(cron_expression="0 0 * * *"), utc(2026, 5, 2, 0, 0, 0, microsecond=500_000))

    assert timeline.next_due() == utc(2026, 5, 2)
    assert timeline.pop_due(utc(2026, 5, 2, 0, 0, 1)) == [cron(utc(2026, 5, 2))]


def test_a_stored_batch_whose_schedule_never_fires_is_not_scheduled():
    # Stored before the broker refused such schedules: the scheduler must skip it, not crash.
    timeline = Timeline()
    timeline.set(ORG, batch(id="keep"), NOON)
    broken = batch(id="broken")
    broken.cron_expression = "0 0 30 2 *"  # as decoded from a definition stored back then

    assert timeline.set(ORG, broken, NOON, missed_since=NOON - timedelta(days=400)) == []

    assert len(timeline) == 1
    assert timeline.pop_due(NOON + timedelta(seconds=1)) == [cron(NOON + timedelta(seconds=1), "keep")]


# ---- catch-up after downtime (`set(..., missed_since=...)`) -------------------------


def test_catch_up_none_fires_nothing_missed():
    timeline = Timeline()

    missed = timeline.set(ORG, batch(cron_expression="*/5 * * * *", catch_up="none"), NOON,
                          missed_since=NOON - timedelta(hours=1))

    assert missed == []
    assert timeline.next_due() == utc(2026, 5, 1, 12, 5)


def test_catch_up_last_fires_only_the_newest_missed_tick():
    timeline = Timeline()

    missed = timeline.set(ORG, batch(cron_expression="*/5 * * * *", catch_up="last"), utc(2026, 5, 1, 12, 3),
                          missed_since=utc(2026, 5, 1, 11, 0))

    assert missed == [catch_up(utc(2026, 5, 1, 12, 0))]
    assert timeline.next_due() == utc(2026, 5, 1, 12, 5)


def test_catch_up_all_fires_the_newest_max_catch_up_ticks_oldest_first():
    timeline = Timeline()

    missed = timeline.set(ORG, batch(cron_expression="*/5 * * * *", catch_up="all", max_catch_up=3),
                          utc(2026, 5, 1, 12, 3), missed_since=utc(2026, 5, 1, 11, 0))

    assert missed == [catch_up(utc(2026, 5, 1, 11, 50)), catch_up(utc(2026, 5, 1, 11, 55)),
                      catch_up(utc(2026, 5, 1, 12, 0))]
    assert timeline.next_due() == utc(2026, 5, 1, 12, 5)


def test_catch_up_never_reaches_before_missed_since():
    # `missed_since` is the last instant already fired through: a tick at it was fired.
    timeline = Timeline()

    missed = timeline.set(ORG, batch(cron_expression="*/5 * * * *", catch_up="all", max_catch_up=10),
                          utc(2026, 5, 1, 12, 3), missed_since=utc(2026, 5, 1, 11, 50))

    assert missed == [catch_up(utc(2026, 5, 1, 11, 55)), catch_up(utc(2026, 5, 1, 12, 0))]


def test_catch_up_includes_a_tick_exactly_at_now_once():
    timeline = Timeline()

    missed = timeline.set(ORG, batch(cron_expression="*/5 * * * *", catch_up="last"), utc(2026, 5, 1, 12, 0),
                          missed_since=utc(2026, 5, 1, 11, 57))

    assert missed == [catch_up(utc(2026, 5, 1, 12, 0))]
    assert run_until(timeline, utc(2026, 5, 1, 12, 5)) == [cron(utc(2026, 5, 1, 12, 5))]


def test_no_downtime_means_nothing_to_catch_up():
    timeline = Timeline()

    assert timeline.set(ORG, batch(catch_up="all"), NOON, missed_since=NOON) == []
    assert timeline.set(ORG, batch(id="other", catch_up="all"), NOON, missed_since=NOON + timedelta(seconds=5)) == []


def test_catch_up_after_ten_days_of_an_every_second_batch_is_the_five_newest():
    timeline = Timeline()

    missed = timeline.set(ORG, batch(catch_up="all", max_catch_up=5), NOON, missed_since=NOON - timedelta(days=10))

    assert missed == [catch_up(NOON - timedelta(seconds=s)) for s in (4, 3, 2, 1, 0)]
    assert timeline.next_due() == NOON + timedelta(seconds=1)


def test_catch_up_last_of_a_monthly_batch_after_a_quarter_down():
    timeline = Timeline()

    missed = timeline.set(ORG, batch(cron_expression="@monthly", catch_up="last"), NOON,
                          missed_since=utc(2026, 1, 15))

    assert missed == [catch_up(utc(2026, 5, 1))]


def test_catch_up_all_of_a_yearly_batch_after_years_down():
    # Older than the largest search window: the missed ticks are still all found.
    timeline = Timeline()

    missed = timeline.set(ORG, batch(cron_expression="@yearly", catch_up="all", max_catch_up=10), NOON,
                          missed_since=utc(2023, 6, 1))

    assert missed == [catch_up(utc(2024, 1, 1)), catch_up(utc(2025, 1, 1)), catch_up(utc(2026, 1, 1))]


def test_catch_up_over_the_skipped_hour_returns_the_collapsed_tick():
    # 02:30 did not exist in Berlin on 2026-03-29; it ran at 03:00 CEST (01:00 UTC).
    timeline = Timeline()

    missed = timeline.set(ORG, batch(cron_expression="30 2 * * *", timezone="Europe/Berlin", catch_up="all"),
                          utc(2026, 3, 29, 6), missed_since=utc(2026, 3, 28, 6))

    assert missed == [catch_up(utc(2026, 3, 29, 1))]


# ---- a stalled scheduler (`pop_due` late by several ticks) --------------------------


def _stalled(**fields: Any) -> list[Tick]:
    """Ticks of an every-10-seconds batch set at 12:00:00.5, first popped at 12:00:45:
    12:00:10, :20, :30 and :40 are all due."""
    timeline = Timeline()
    timeline.set(ORG, batch(cron_expression="*/10 * * * * *", **fields), utc(2026, 5, 1, 12, 0, 0, microsecond=500_000))
    ticks = timeline.pop_due(utc(2026, 5, 1, 12, 0, 45))
    assert timeline.next_due() == utc(2026, 5, 1, 12, 0, 50)
    return ticks


def test_a_stall_with_catch_up_last_fires_only_the_newest_on_time():
    assert _stalled(catch_up="last") == [cron(utc(2026, 5, 1, 12, 0, 40))]


def test_a_stall_with_catch_up_none_fires_only_the_newest_on_time():
    assert _stalled(catch_up="none") == [cron(utc(2026, 5, 1, 12, 0, 40))]


def test_a_stall_with_catch_up_all_fires_the_older_ticks_as_catch_up():
    assert _stalled(catch_up="all") == [
        catch_up(utc(2026, 5, 1, 12, 0, 10)),
        catch_up(utc(2026, 5, 1, 12, 0, 20)),
        catch_up(utc(2026, 5, 1, 12, 0, 30)),
        cron(utc(2026, 5, 1, 12, 0, 40)),
    ]


def test_a_stall_with_catch_up_all_keeps_at_most_max_catch_up_older_ticks():
    assert _stalled(catch_up="all", max_catch_up=2) == [
        catch_up(utc(2026, 5, 1, 12, 0, 20)),
        catch_up(utc(2026, 5, 1, 12, 0, 30)),
        cron(utc(2026, 5, 1, 12, 0, 40)),
    ]


def test_a_day_long_stall_fires_the_newest_tick_on_time():
    # The process was suspended for a day (a laptop lid, a stopped container): the
    # on-time run is the one due now, not one from hours ago.
    timeline = Timeline()
    timeline.set(ORG, batch(catch_up="all", max_catch_up=3), NOON)
    woke = NOON + timedelta(days=1)

    ticks = timeline.pop_due(woke)

    assert ticks == [
        catch_up(woke - timedelta(seconds=3)),
        catch_up(woke - timedelta(seconds=2)),
        catch_up(woke - timedelta(seconds=1)),
        cron(woke),
    ]
    assert timeline.next_due() == woke + timedelta(seconds=1)
