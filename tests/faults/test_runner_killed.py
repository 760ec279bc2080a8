"""A runner process killed with SIGKILL in the middle of its runs, on the 3-node cluster.

Eight runs, half of a task with `retries: 1`, half with `retries: 0`, all running on
one runner process (`--ack-wait 2`), which is then killed while a second runner waits
for work. The command sleeps for a minute in its first attempt (so the kill always
comes mid-run) and 1 s in any later one. Its claims lapse after ack_wait and the second
runner takes each of its runs: a run with a retry left runs again as attempt 2 and
succeeds there, a run without one ends `lost`. Nothing stays `running`, no execution is
added, and no run is started a third time.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from processes import unique_sleep

pytestmark = pytest.mark.slow

RUNS = 8
FINAL = {"succeeded", "failed", "lost", "canceled", "timed_out"}
ACK_WAIT = 2.0


async def test_runs_of_a_killed_runner_finish_on_another_runner_or_end_lost(
    cluster, services, client, make_task, wait_for, list_executions, processes_marked, figures
):
    sleep = unique_sleep(60)  # the text marks the commands the dead runner leaves behind
    command = ["/bin/sh", "-c", f'if [ "$BATCHDECK_ATTEMPT" = 1 ]; then exec sleep {sleep}; fi; sleep 1']
    await services.broker()
    r1 = await services.runner("r1", ack_wait=ACK_WAIT, concurrency=RUNS)
    retried = await make_task(client, {"name": "retried", "command": command, "retries": 1, "retry_backoff_sec": 0.1})
    once = await make_task(client, {"name": "once", "command": command, "retries": 0})
    try:
        started = [
            (await client.call("task", "start", {"id": task["id"]}))["execution_id"]
            for _ in range(RUNS // 2) for task in (retried, once)
        ]

        async def all_running_on_r1() -> bool:
            items = await list_executions(client)
            services.fail_if_dropped(e["id"] for e in items if e["status"] == "queued")
            return len(items) == RUNS and all((e["status"], e["runner_id"]) == ("running", "r1") for e in items)

        await wait_for(all_running_on_r1, 60, 0.1, f"all {RUNS} runs running on r1")
        await services.runner("r2", ack_wait=ACK_WAIT)  # idle: every run is claimed by r1
        r1.kill()
        killed = time.monotonic()
        settled: dict[str, float] = {}

        async def all_final() -> list[dict] | None:
            items = await list_executions(client)
            for e in items:
                if e["status"] in FINAL and e["id"] not in settled:
                    settled[e["id"]] = time.monotonic() - killed
            return items if len(settled) == len(items) else None

        final = {e["id"]: e for e in await wait_for(all_final, 60, 0.05, "every run final")}
    finally:
        for pid in processes_marked(sleep):  # the dead runner's commands: nobody stops them
            os.kill(pid, signal.SIGKILL)

    # In: 8 starts. Out: 8 executions, the same ones, none left running.
    assert sorted(final) == sorted(started), "an execution is missing or doubled"
    kinds = {e["id"]: ("retried" if e["task_id"] == retried["id"] else "once") for e in final.values()}
    for execution in final.values():
        if kinds[execution["id"]] == "retried":
            assert (execution["status"], execution["attempt"], execution["runner_id"]) == ("succeeded", 2, "r2"), \
                execution
            assert execution["actions"][0]["status"] == "succeeded", execution
        else:
            assert (execution["status"], execution["attempt"]) == ("lost", 1), execution
            assert "r1" in execution["error"] and execution["finished_at"], execution
    lost_after = max(settled[i] for i, kind in kinds.items() if kind == "once")
    rerun_after = max(settled[i] for i, kind in kinds.items() if kind == "retried")
    figures.add(f"{RUNS} runs in the middle of a command on the killed runner (ack_wait {ACK_WAIT:g} s): "
                f"{RUNS // 2} without retries ended lost within {lost_after:.1f} s of the kill, "
                f"{RUNS // 2} with `retries: 1` ran again on the other runner (a 1 s attempt 2) and succeeded within "
                f"{rerun_after:.1f} s; {len(final)} executions for {len(started)} starts, none left running")
