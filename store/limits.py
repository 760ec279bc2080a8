"""What the store lets one request and one org use, so that one tenant's queries can
hurt only that tenant.

- **Pools apart.** The ingest writes on a thread of its own, log reads and the other
  history reads on a pool of theirs, `history.sql` on another: a query storm neither
  delays the history nor the log pane, and a burst of log reads does not hold up SQL.
- **Queries in flight per org.** At most `sql_per_org` of one org's queries run or wait
  at once; more are answered 429 at once. The SQL pool has room for more than one
  org's share, so another org's query finds a thread. Past `sql_queue` waiting queries
  in all, the answer is 503 (the store is full), and reads past `read_queue` the same.
- **Memory.** The whole database gets `memory_limit` (DuckDB's buffer manager: a query
  that would need more fails with "out of memory", the store stays up), and each query
  `query_memory` for its sorts and hash tables (DuckDB's `operator_memory_limit`; past
  it they spill to `{history file}.tmp`, up to `temp_limit`).
- **Time.** A query is interrupted `sql_timeout` seconds after its request arrived
  (waiting included), and its answer says so.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from broker.errors import Busy, Unavailable

MiB = 1024 * 1024


@dataclass(frozen=True)
class StoreLimits:
    sql_per_org: int = 2
    sql_threads: int = 4
    sql_queue: int = 16
    """Queries waiting for a thread, all orgs together, past which the store answers 503."""
    sql_timeout: float = 10.0
    read_threads: int = 2
    read_queue: int = 64
    memory_limit: int = 1024 * MiB
    query_memory: int = 256 * MiB
    temp_limit: int = 4096 * MiB
    lag_warning: float = 60.0
    """Seconds the history may be behind BD_EVENTS before the store says so in its log."""


class Pools:
    """The store's threads: one writer, reads, SQL."""

    def __init__(self, limits: StoreLimits) -> None:
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="store-ingest")
        self.reads = ThreadPoolExecutor(limits.read_threads, thread_name_prefix="store-read")
        self.sql = ThreadPoolExecutor(limits.sql_threads, thread_name_prefix="store-sql")

    def close(self) -> None:
        for pool in (self.writer, self.reads, self.sql):
            pool.shutdown(wait=True, cancel_futures=True)


class Gate:
    """Counts the requests of one kind in flight, per org and in all, and refuses what
    is over the limits. `with gate.enter(org): ...`"""

    def __init__(self, what: str, per_org: int | None, total: int) -> None:
        self.what = what
        self.per_org = per_org
        self.total = total
        self.by_org: Counter[str] = Counter()
        self.refused = 0
        """Requests answered 429 or 503 since the store started."""

    def enter(self, org: str) -> _Pass:
        if self.per_org is not None and self.by_org[org] >= self.per_org:
            self.refused += 1
            raise Busy(f"org {org!r} has {self.by_org[org]} {self.what} running or waiting, as many as it may; "
                       "try again when one has ended", {"in_flight": self.by_org[org], "limit": self.per_org})
        if sum(self.by_org.values()) >= self.total:
            self.refused += 1
            raise Unavailable(f"the store is busy with {self.total} {self.what}; try again in a moment")
        return _Pass(self, org)

    def in_flight(self) -> int:
        return sum(self.by_org.values())


class _Pass:
    def __init__(self, gate: Gate, org: str) -> None:
        self.gate, self.org = gate, org

    def __enter__(self) -> None:
        self.gate.by_org[self.org] += 1

    def __exit__(self, *_: object) -> None:
        self.gate.by_org[self.org] -= 1
        if not self.gate.by_org[self.org]:
            del self.gate.by_org[self.org]
