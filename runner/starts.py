"""Counting task starts without contention: each runner keeps its own count per task
and writes it to its own key `{org}.{task_id}.{runner}` in `bd_task_starts`; the broker
sums the keys. Writes of one key are serialised and coalesced: a start whose count a
later write already carried does not write again. A runner restarted under the same
name continues from the count its key already holds."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict

from broker.records import Records
from broker.timestamps import now_iso
from broker.types import TaskStarts
from runner.transient import through_leader_changes

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class StartCounter:
    def __init__(self, records: Records[TaskStarts], runner_id: str) -> None:
        self.records = records
        self.runner_key = _KEY_UNSAFE.sub("_", runner_id)
        self.counts: dict[tuple[str, str], TaskStarts] = defaultdict(TaskStarts)
        self.written: dict[tuple[str, str], int] = defaultdict(int)
        self.locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self.base: dict[tuple[str, str], int] = {}  # what the key held before this process

    async def started(self, org: str, task_id: str) -> None:
        """Count one start of the task; returns once a write that includes it is stored."""
        key = (org, task_id)
        count = self.counts[key]
        count.start_count += 1
        count.last_started_at = now_iso()
        mine = count.start_count
        record_id = f"{task_id}.{self.runner_key}"
        async with self.locks[key]:
            if self.written[key] >= mine:
                return
            what = f"counting a start of task {task_id}"
            if key not in self.base:
                stored = await through_leader_changes(what, lambda: self.records.get(org, record_id))
                self.base[key] = stored.start_count if stored is not None else 0
            local = count.start_count
            snapshot = TaskStarts(start_count=self.base[key] + local, last_started_at=count.last_started_at)
            await through_leader_changes(what, lambda: self.records.put(org, record_id, snapshot))
            self.written[key] = local
