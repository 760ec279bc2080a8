"""When each enabled batch fires next, and which ticks are due: the scheduler's pure
arithmetic, without NATS.

A batch's fire times come from `broker.schedule.fire_times` (timezone and DST rules
there). The timeline keeps one lazy iterator per batch and a heap of next fire times,
so finding what is due costs O(log n) per tick whatever the number of batches.

Catch-up: ticks that were missed (the scheduler fleet was down, or this process was
stalled past more than one tick) go through the batch's `catch_up` policy:
`none` drops them, `last` keeps the newest (unless an on-time tick runs anyway),
`all` keeps the newest `max_catch_up` of them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from croniter import CroniterBadDateError

from broker.schedule import ScheduleError, fire_times
from broker.types import Batch

log = logging.getLogger("batchdeck.scheduler")

BatchKey = tuple[str, str]
"""(org, batch id)"""

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


@dataclass
class _Entry:
    batch: Batch
    times: Iterator[datetime]
    next_at: datetime | None
    generation: int


@dataclass
class Timeline:
    entries: dict[BatchKey, _Entry] = field(default_factory=dict)
    _heap: list[tuple[datetime, int, BatchKey, int]] = field(default_factory=list)
    _order: Iterator[int] = field(default_factory=itertools.count)
    _generations: Iterator[int] = field(default_factory=itertools.count)

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
            current = self.entries.get(key)
            if current is not None and _same_schedule(current.batch, batch):
                current.batch = batch
                return []
            catch_up = self._missed(batch, missed_since, now) if missed_since is not None else []
            times = fire_times(batch.effective_cron(), batch.timezone, now)
        except ScheduleError as err:  # stored before the broker refused it: it cannot fire
            log.warning("batch %s of org %s is not scheduled: %s", batch.id, org, err)
            self.remove(key)
            return []
        entry = _Entry(batch, times, None, next(self._generations))
        self.entries[key] = entry
        self._advance(key, entry)
        return [Tick(org, batch.id, at, "catch_up") for at in catch_up]

    def remove(self, key: BatchKey) -> None:
        self.entries.pop(key, None)  # its heap items are skipped when they surface

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
            _, _, key, _ = heapq.heappop(self._heap)
            entry = self.entries[key]
            due = []
            while entry.next_at is not None and entry.next_at <= now and len(due) < CATCH_UP_SCAN_LIMIT:
                due.append(entry.next_at)
                entry.next_at = _next(entry.times)
            if entry.next_at is not None and entry.next_at <= now:
                # Stalled for ages: only the newest ticks matter, and the iterator jumps to now.
                due = _newest_ticks(entry.batch, due[-1], now, entry.batch.max_catch_up + 1)
                entry.times = fire_times(entry.batch.effective_cron(), entry.batch.timezone, now)
                entry.next_at = _next(entry.times)
            org, batch_id = key
            ticks += [Tick(org, batch_id, at, "catch_up") for at in _by_policy(entry.batch, due[:-1], on_time=True)]
            ticks.append(Tick(org, batch_id, due[-1], "cron"))
            self._push(key, entry)

    def _advance(self, key: BatchKey, entry: _Entry) -> None:
        entry.next_at = _next(entry.times)
        self._push(key, entry)

    def _push(self, key: BatchKey, entry: _Entry) -> None:
        if entry.next_at is not None:
            heapq.heappush(self._heap, (entry.next_at, next(self._order), key, entry.generation))

    def _drop_stale(self) -> None:
        while self._heap:
            at, _, key, generation = self._heap[0]
            entry = self.entries.get(key)
            if entry is not None and entry.generation == generation and entry.next_at == at:
                return
            heapq.heappop(self._heap)

    def _missed(self, batch: Batch, since: datetime, now: datetime) -> list[datetime]:
        keep = {"none": 0, "last": 1, "all": batch.max_catch_up}[batch.catch_up]
        if keep == 0 or since >= now:
            return []
        return _by_policy(batch, _newest_ticks(batch, since, now, keep), on_time=False)


def _newest_ticks(batch: Batch, since: datetime, now: datetime, count: int) -> list[datetime]:
    """The newest `count` fire times in `(since, now]`."""
    found: list[datetime] = []
    for window in CATCH_UP_WINDOWS:
        start = max(since, now - window)
        ticks = _ticks_between(batch, start, now, count)
        if ticks is None:
            break  # too many ticks in this window: the smaller window's are the newest we know
        found = ticks
        if len(found) >= count or start == since:
            return found
    else:
        found = _ticks_between(batch, since, now, count) or found
    return found


def _ticks_between(batch: Batch, start: datetime, end: datetime, keep: int) -> list[datetime] | None:
    newest: deque[datetime] = deque(maxlen=keep)
    times = fire_times(batch.effective_cron(), batch.timezone, start)
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
    except (StopIteration, CroniterBadDateError):
        return None


def _same_schedule(old: Batch, new: Batch) -> bool:
    return old.effective_cron() == new.effective_cron() and old.timezone == new.timezone
