"""The store process killed with SIGKILL in the middle of a 20 000-line burst, on the
3-node cluster (BD_EVENTS with 3 replicas).

A real run prints 20 000 numbered lines (in chunks, so the burst lasts a few seconds);
the store is killed once part of them is in the history file, and started again on the
same file. After the restart every line is in DuckDB exactly once, read back with
`batchdeck sql`, and the run has one row.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import pytest

pytestmark = pytest.mark.slow

LINES = 20_000
CHUNK = 500
# Lines "line 1" .. "line 20000", CHUNK at a time with a short pause, so that the store
# is killed while the runner is still publishing.
PRINTER = (
    "import sys, time\n"
    f"for start in range(1, {LINES} + 1, {CHUNK}):\n"
    f"    sys.stdout.write(''.join(f'line {{i}}\\n' for i in range(start, start + {CHUNK})))\n"
    "    sys.stdout.flush()\n"
    "    time.sleep(0.05)\n"
)


async def batchdeck_sql(url: str, query: str) -> dict:
    """`batchdeck sql QUERY --json` as a user runs it; its reply."""
    env = {**os.environ, "BATCHDECK_NATS_URL": url, "BATCHDECK_ORG": "acme"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchdeck", "sql", query, "--json", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


async def test_kill_9_of_the_store_mid_burst_loses_and_doubles_no_line(
    cluster, services, client, make_task, wait_for, tmp_path, figures
):
    db = tmp_path / "history.duckdb"
    await services.broker()
    _, store = await asyncio.gather(services.runner("r1", concurrency=1), services.store("store-1", db))
    task = await make_task(client, {"name": "burst", "command": [sys.executable, "-c", PRINTER]})
    counts = ("SELECT count(*) AS lines, count(DISTINCT idx) AS idxs, count(DISTINCT msg) AS texts, "
              "min(idx) AS lo, max(idx) AS hi FROM logs WHERE execution_id = ? AND stream = 'stdout'")

    async def stored(execution_id: str) -> int:
        reply = await client.call("history", "sql", {"sql": counts, "params": [execution_id]})
        return reply["rows"][0][0]

    execution_id = (await client.call("task", "start", {"id": task["id"]}))["execution_id"]
    began = time.monotonic()

    async def first_lines() -> int:
        services.fail_if_dropped([execution_id])
        return await stored(execution_id)

    at_kill = await wait_for(first_lines, 60, 0.02, "the first lines of the burst stored")
    store.kill()
    killed = time.monotonic()
    at_kill = max(at_kill, await _stored_offline(db, execution_id))

    execution = await wait_for(lambda: _final(client, execution_id), 60, 0.1, "the burst's run final")
    burst_seconds = time.monotonic() - began
    assert execution["status"] == "succeeded", execution
    assert 0 < at_kill < LINES, f"the store was not killed in the middle of the burst ({at_kill} lines stored)"

    restarted = time.monotonic()
    await services.store("store-2", db)

    async def complete() -> bool:
        return await stored(execution_id) >= LINES

    await wait_for(complete, 90, 0.1, f"all {LINES} lines stored after the restart")
    caught_up = time.monotonic() - restarted

    async def run_row_final() -> bool:
        reply = await client.call("history", "sql", {"sql": "SELECT status FROM executions WHERE id = ?",
                                                     "params": [execution_id]})
        return reply["rows"] == [["succeeded"]]

    await wait_for(run_row_final, 60, 0.1, "the run's row final in the history")
    # The final count as an operator reads it: `batchdeck sql`, lines and the run's rows.
    query = counts.replace("?", f"'{execution_id}'").replace(
        " FROM logs", f", (SELECT count(*) FROM executions WHERE id = '{execution_id}') AS runs FROM logs")
    reply = await batchdeck_sql(cluster.url, query)
    row = dict(zip(reply["columns"], reply["rows"][0], strict=True))
    assert row == {"lines": LINES, "idxs": LINES, "texts": LINES, "lo": 1, "hi": LINES, "runs": 1}, row
    figures.add(f"{LINES} lines printed by one run in {burst_seconds:.1f} s (BD_EVENTS with 3 replicas); the store "
                f"was killed {killed - began:.1f} s into the burst with {at_kill} lines stored; the restarted store "
                f"held all {LINES} exactly once {caught_up:.1f} s after it was spawned (count, distinct idx and "
                f"distinct text all {LINES}, one executions row)")


async def _final(client, execution_id: str) -> dict | None:
    execution = await client.call("exec", "get", {"id": execution_id})
    return execution if execution["status"] not in ("queued", "running") else None


async def _stored_offline(db, execution_id: str) -> int:
    """Lines of the run in the file as the killed store left it (it may have committed
    a batch between our last count and the kill). 0 when the file cannot be read."""
    import duckdb

    def count() -> int:
        try:
            with duckdb.connect(str(db), read_only=True) as conn:
                return conn.execute("SELECT count(*) FROM bd_history.logs WHERE execution_id = ? AND stream = 'stdout'",
                                    [execution_id]).fetchone()[0]
        except duckdb.Error:
            return 0

    return await asyncio.to_thread(count)
