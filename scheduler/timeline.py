"""When each enabled batch fires next, and which ticks are due: the scheduler's pure
arithmetic, without NATS.

A batch's fire times come from `broker.schedule.fire_times` (timezone and DST rules
there). Batches with the same cron and timezone share one lazy iterator (10 000
batches typically have a few hundred distinct schedules, and the ones due at a round
minute a dozen), and a heap orders the schedules by their next fire time: finding what
is due costs O(log s) per schedule plus O(1) per batch that fires.

Catch-up: ticks that were missed (the scheduler fleet was down, or this process was
stalled past more than one tick) go through the batch's `catch_up` policy:
`none` drops them, `last` keeps the newest (unless an on-time tick runs anyway),
`all` keeps the newest `max_catch_up` of them.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from broker.schedule import ScheduleError, fire_times
from broker.types import Batch

log = logging.getLogger("batchdeck.scheduler")

BatchKey = tuple[str, str]
"""(org, batch id)"""
ScheduleKey = tuple[str, str]
"""(effective cron, timezone)"""
MAX_CATCH_UP = 1000
"""The largest `max_catch_up` a batch may ask for."""

CATCH_UP_WINDOWS = (timedelta(minutes=1), timedelta(hours=1), timedelta(days=1), timedelta(days=31),
                    timedelta(days=400))
"""Missed ticks are looked for in growing windows back from now, so a batch that fires
every second after a week of downtime does not iterate 600 000 ticks to find its last."""
CATCH_UP_SCAN_LIMIT = 20_000


@dataclass(frozen=True)
class Tick:
    org: str
    batch_id: str
    scheduled_at: datetime
    source: str  # "cron" | "catch_up"
    schedule: ScheduleKey | None = field(default=None, compare=False)
    """The (cron, timezone) the tick came from (not part of what the tick is)."""


@dataclass
class _Member:
    batch: Batch
    schedule: ScheduleKey
    joined_at: datetime
    """Ticks at or before this instant are not the batch's (it joined a running schedule)."""


@dataclass
class _Schedule:
    """Every batch with one (cron, timezone): their fire times are computed once."""

    times: Iterator[datetime]
    next_at: datetime | None
    members: dict[BatchKey, _Member] = field(default_factory=dict)


@dataclass
class Timeline:
    entries: dict[BatchKey, _Member] = field(default_factory=dict)
    _schedules: dict[ScheduleKey, _Schedule] = field(default_factory=dict)
    _heap: list[tuple[datetime, int, ScheduleKey]] = field(default_factory=list)
    _order: Iterator[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return len(self.entries)

    def set(self, org: str, batch: Batch, now: datetime, missed_since: datetime | None = None) -> list[Tick]:
        """Schedule `batch` (or stop scheduling it when it is disabled or deleted).

        With `missed_since`, ticks in `(missed_since, now]` were missed: the ones the
        batch's catch-up policy keeps are returned, to fire now. A batch whose schedule
        and timezone did not change keeps its place: a tick about to fire is not lost
        to an unrelated edit."""
        key = (org, batch.id)
        if not batch.is_enabled or batch.deleted_at is not None:
            self.remove(key)
            return []
        try:
            schedule_key = (batch.effective_cron(), batch.timezone)
            current = self.entries.get(key)
            if current is not None and current.schedule == schedule_key:
                current.batch = batch
                return []
            catch_up = self._missed(batch, schedule_key, missed_since, now) if missed_since is not None else []
            schedule = self._schedules.get(schedule_key) or self._add_schedule(schedule_key, now)
        except ScheduleError as err:  # stored before the broker refused it: it cannot fire
            log.warning("batch %s of org %s is not scheduled: %s", batch.id, org, err)
            self.remove(key)
            return []
        self.remove(key)
        member = _Member(batch, schedule_key, now)
        self.entries[key] = schedule.members[key] = member
        return [Tick(org, batch.id, at, "catch_up") for at in catch_up]

    def remove(self, key: BatchKey) -> None:
        member = self.entries.pop(key, None)
        if member is None:
            return
        schedule = self._schedules[member.schedule]
        del schedule.members[key]
        if not schedule.members:
            del self._schedules[member.schedule]  # its heap item is skipped when it surfaces

    def next_due(self) -> datetime | None:
        """The earliest fire time of any batch."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: datetime) -> list[Tick]:
        """Every tick due at `now`, oldest first. A batch with several due ticks (this
        process was stalled) fires its newest on time and the rest by its policy."""
        ticks: list[Tick] = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                ticks.sort(key=lambda tick: tick.scheduled_at)
                return ticks
            _, _, schedule_key = heapq.heappop(self._heap)
            schedule = self._schedules[schedule_key]
            due = self._due(schedule_key, schedule, now)
            for (org, batch_id), member in schedule.members.items():
                mine = due if due[0] > member.joined_at else [at for at in due if at > member.joined_at]
                if not mine:
                    continue
                ticks += [Tick(org, batch_id, at, "catch_up", schedule_key)
                          for at in _by_policy(member.batch, mine[:-1], True)]
                ticks.append(Tick(org, batch_id, mine[-1], "cron", schedule_key))
            self._push(schedule_key, schedule)

    def _due(self, schedule_key: ScheduleKey, schedule: _Schedule, now: datetime) -> list[datetime]:
        """The schedule's ticks up to `now`, advancing it past them."""
        due = []
        while schedule.next_at is not None and schedule.next_at <= now and len(due) < CATCH_UP_SCAN_LIMIT:
            due.append(schedule.next_at)
            schedule.next_at = _next(schedule.times)
        if schedule.next_at is not None and schedule.next_at <= now:
            # Stalled for ages: only the newest ticks matter, and the iterator jumps to now.
            due = _newest_ticks(schedule_key, due[0] - timedelta(microseconds=1), now, MAX_CATCH_UP + 1)
            schedule.times = fire_times(*schedule_key, now)
            schedule.next_at = _next(schedule.times)
        return due

    def _add_schedule(self, schedule_key: ScheduleKey, now: datetime) -> _Schedule:
        times = fire_times(*schedule_key, now)
        schedule = self._schedules[schedule_key] = _Schedule(times, _next(times))
        self._push(schedule_key, schedule)
        return schedule

    def _push(self, schedule_key: ScheduleKey, schedule: _Schedule) -> None:
        if schedule.next_at is not None:
            heapq.heappush(self._heap, (schedule.next_at, next(self._order), schedule_key))

    def _drop_stale(self) -> None:
        while self._heap:
            at, _, schedule_key = self._heap[0]
            schedule = self._schedules.get(schedule_key)
            if schedule is not None and schedule.next_at == at:
                return
            heapq.heappop(self._heap)

    def _missed(self, batch: Batch, schedule_key: ScheduleKey, since: datetime, now: datetime) -> list[datetime]:
        keep = {"none": 0, "last": 1, "all": batch.max_catch_up}[batch.catch_up]
        if keep == 0 or since >= now:
            return []
        return _by_policy(batch, _newest_ticks(schedule_key, since, now, keep), on_time=False)


@functools.lru_cache(maxsize=4096)  # at start, thousands of batches share a few schedules and one watermark
def _newest_ticks(schedule_key: ScheduleKey, since: datetime, now: datetime, count: int) -> list[datetime]:
    """The newest `count` fire times in `(since, now]`."""
    found: list[datetime] = []
    for window in CATCH_UP_WINDOWS:
        start = max(since, now - window)
        ticks = _ticks_between(schedule_key, start, now, count)
        if ticks is None:
            break  # too many ticks in this window: the smaller window's are the newest we know
        found = ticks
        if len(found) >= count or start == since:
            return found
    else:
        found = _ticks_between(schedule_key, since, now, count) or found
    return found


def _ticks_between(schedule_key: ScheduleKey, start: datetime, end: datetime, keep: int) -> list[datetime] | None:
    newest: deque[datetime] = deque(maxlen=keep)
    times = fire_times(*schedule_key, start)
    for _ in range(CATCH_UP_SCAN_LIMIT):
        at = _next(times)
        if at is None or at > end:
            return list(newest)
        newest.append(at)
    return None


def _by_policy(batch: Batch, missed: list[datetime], on_time: bool) -> list[datetime]:
    """The missed ticks the batch's catch-up policy keeps. With an `on_time` tick firing
    anyway, `last` keeps none: that run is the newest."""
    if not missed or batch.catch_up == "none" or (batch.catch_up == "last" and on_time):
        return []
    if batch.catch_up == "last":
        return missed[-1:]
    return missed[-batch.max_catch_up:]


def _next(times: Iterator[datetime]) -> datetime | None:
    try:
        return next(times)
    except StopIteration:
        return None


