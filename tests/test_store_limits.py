"""One tenant hurts only itself: the store's limits per org and per query, its bounded
ingest, and what it says when the stream let events go before it read them. Real
nats-server, real DuckDB file, the store in process (tests/test_store.py's stack)."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from expectations import eventually, expect_error
from test_store import ACME, _stack

from broker import ids, streams
from store.limits import StoreLimits

GLOBEX = "globex"
FOREVER = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1000000000000) "
           "SELECT count(*) FROM r")
"""A query that runs until it is interrupted."""


async def test_an_orgs_queries_in_flight_are_limited_and_another_org_is_not_held_up(tmp_path: Path):
    async with _stack(tmp_path, with_store=False) as stack:
        await stack.start_store(StoreLimits(sql_per_org=2, sql_timeout=3.0))
        acme, globex = stack.api(ACME), stack.api(GLOBEX)
        started = time.monotonic()
        long_ones = [asyncio.ensure_future(acme.call("history", "sql", {"sql": FOREVER}, timeout=20))
                     for _ in range(2)]
        await asyncio.sleep(0.3)
        # acme's third is answered at once: 429, try again
        error = await expect_error(429, acme.call("history", "sql", {"sql": "SELECT 1"}))
        assert "has 2 queries running or waiting" in error.message
        # globex is not held up by acme's queries
        for _ in range(5):
            assert (await globex.call("history", "sql", {"sql": "SELECT 1 AS one"}))["rows"] == [[1]]
        assert time.monotonic() - started < 3.0, "globex waited for acme's queries"
        # acme's long queries are interrupted at their time limit, and say so
        for future in long_ones:
            error = await expect_error(400, future)
            assert "ran longer than 3 s" in error.message
        assert time.monotonic() - started < 3.0 + 2.0, "the time limit was not kept within about a second"
        assert (await acme.call("history", "sql", {"sql": "SELECT 1"}))["rows"] == [[1]]  # its share is back


async def test_a_query_that_needs_too_much_memory_fails_alone(tmp_path: Path):
    async with _stack(tmp_path, with_store=False) as stack:
        await stack.start_store(StoreLimits(memory_limit=256 * 2 ** 20, query_memory=64 * 2 ** 20))
        acme = stack.api(ACME)
        bombs = [
            "WITH RECURSIVE r(n, s) AS (SELECT 1, repeat('x', 1000000) UNION ALL "
            "SELECT n + 1, s || s FROM r WHERE n < 40) SELECT max(length(s)) FROM r",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3000000) "
            "SELECT length(string_agg(repeat('x', 200), ',')) FROM r",
        ]
        for bomb in bombs:
            error = await expect_error(400, acme.call("history", "sql", {"sql": bomb}, timeout=30))
            assert "needs more memory than the store lets a query have" in error.message, error.message
        # the store goes on: queries, and the history of a run that ends now
        assert (await acme.call("history", "sql", {"sql": "SELECT 2"}))["rows"] == [[2]]
        await stack.runner()
        task = await stack.task(name="after", command=["echo", "after the bomb"])
        execution = await stack.run(task["id"])
        await stack.stored(execution["id"])


async def test_a_result_larger_than_a_reply_is_refused_before_it_is_all_read(tmp_path: Path):
    async with _stack(tmp_path, with_store=True) as stack:
        big = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5000) "
               "SELECT n, repeat('x', 10000) AS text FROM r")
        error = await expect_error(400, stack.api(ACME).call("history", "sql", {"sql": big}))
        assert "more than one reply holds" in error.message


async def test_events_that_left_the_stream_before_the_store_read_them_are_a_visible_gap(tmp_path: Path):
    limits = streams.StreamLimits(events_max_bytes=2 * 2 ** 20)  # 2 MiB of events at most
    async with _stack(tmp_path, with_store=True, stream_limits=limits) as stack:
        first = ids.new_id()
        await stack.publish_lines(ACME, first, 100)
        await eventually(lambda: _stored_lines(stack, first, 100), 20, 0.1, "the first lines stored")
        await stack.stop_store()
        # while the store is away, far more than the stream keeps: the oldest of them go
        gone = ids.new_id()
        await stack.publish_lines(ACME, gone, 3000, msg="y" * 2000)
        await stack.start_store()
        store = stack.store
        assert store is not None
        await eventually(lambda: _true(store.ingest.lost > 0), 20, 0.1, "the gap counted")
        counted = store.metrics.values()
        assert counted["events_lost"] == store.ingest.lost > 0
        # the rest is in the history, and new runs too
        after = ids.new_id()
        await stack.publish_lines(ACME, after, 10)
        await eventually(lambda: _stored_lines(stack, after, 10), 20, 0.1, "later lines stored")


async def _stored_lines(stack: Any, execution_id: str, count: int) -> bool:
    rows = await stack.sql("SELECT count(*) AS n FROM logs WHERE execution_id = ?", [execution_id])
    return rows[0]["n"] == count


async def _true(value: bool) -> bool:
    return value


async def test_a_flood_of_long_lines_is_cut_at_its_quota_and_the_other_org_goes_on(tmp_path: Path):
    """The red team's flood: one run prints more than a gigabyte in 16 000-character
    lines. The runner keeps its quota and counts the rest; the store stays up; another
    org's run is in the history within seconds."""
    async with _stack(tmp_path, with_store=True) as stack:
        await stack.runner(ACME)
        await stack.runner(GLOBEX)
        lines = 70_000  # x 16 001 bytes: 1.12 GB offered
        flood = await stack.task(ACME, name="flood", command=[
            sys.executable, "-c", f"import sys\nline = 'x' * 16000 + '\\n'\nfor _ in range({lines}): "
                                  "sys.stdout.write(line)"])
        flooding = asyncio.ensure_future(stack.run(flood["id"], ACME, timeout=120))
        await asyncio.sleep(1.0)
        quiet = await stack.task(GLOBEX, name="quiet", command=["echo", f"globex {uuid.uuid4().hex}"])
        started = time.monotonic()
        mine = await stack.run(quiet["id"], GLOBEX)
        await stack.stored(mine["id"], GLOBEX)
        in_history = time.monotonic() - started
        done = await flooding
        assert done["status"] == "succeeded"
        kept = 64 * 2 ** 20 // 16001  # the default quota: 64 MiB of lines
        assert done["log_dropped_lines"] == lines - kept
        await stack.stored(done["id"], ACME)
        rows = await stack.sql("SELECT count(*) AS n, max(idx) AS top FROM logs WHERE execution_id = ?", [done["id"]])
        assert rows == [{"n": kept + 1, "top": kept + 1}]  # the kept lines and the marker
        assert in_history < 10, f"globex's run reached the history {in_history:.1f} s after its start"


async def test_the_ingest_resumes_after_the_server_died_without_a_word(tmp_path: Path, monkeypatch):
    """A server killed (or a connection cut as a slow consumer) answers nothing about the
    pull requests it held: the store gives them up after a while and reads on from its
    committed sequence, instead of waiting for ever."""
    from store import puller

    monkeypatch.setattr(puller, "STALL_SECONDS", 3.0)
    async with _stack(tmp_path, with_store=True) as stack:
        before, after = ids.new_id(), ids.new_id()
        await stack.publish_lines(ACME, before, 50)
        await eventually(lambda: _stored_lines(stack, before, 50), 20, 0.1, "lines before the kill")
        stack.server.process.kill()  # SIGKILL: no "409 Server Shutdown" to anyone
        stack.server.process.wait()
        await asyncio.to_thread(stack.server.start)
        await eventually(lambda: _connected(stack), 30, 0.2, "the test's client back")
        await eventually(lambda: _publishes(stack, after), 30, 0.2, "JetStream back")
        await eventually(lambda: _stored_lines(stack, after, 50), 30, 0.2, "lines after the restart stored")


async def _connected(stack: Any) -> bool:
    return stack.nc.is_connected


async def _publishes(stack: Any, execution_id: str) -> bool:
    try:
        await stack.publish_lines(ACME, execution_id, 50)
    except Exception:  # noqa: BLE001 - JetStream still recovering its store
        return False
    return True
