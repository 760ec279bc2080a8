"""What a runner publishes on BD_EVENTS while it executes: log lines (idx, levels, cut),
progress, result, and state events at every transition.

Events are read back from the stream with ordered consumers (`exec_events`), or live
while the run goes on, as the TUI and the store read them.
"""

from __future__ import annotations

import asyncio
import json
import sys

FINAL_STATUSES = {"succeeded", "failed", "canceled", "timed_out", "lost", "skipped"}


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


async def test_ten_thousand_lines_arrive_complete_in_order_and_gap_free(
    nc, org, runner_factory, make_task, start_task, wait_exec, exec_events
):
    count = 10_000
    await runner_factory()
    task = await make_task(command=py(f"for i in range({count}): print(f'line {{i:05d}}')"))
    live: list[dict] = []

    async def follow(msg) -> None:
        live.append({"seq": msg.metadata.sequence.stream, "data": json.loads(msg.data)})

    # Follow live, as a dashboard does, from before the run starts.
    sub = await nc.jetstream().subscribe(f"bd.{org}.evt.exec.*.log", ordered_consumer=True,
                                         cb=follow, pending_msgs_limit=-1,
                                         pending_bytes_limit=-1)
    try:
        execution = await wait_exec(await start_task(task["id"]), timeout=40.0)
        stored = await exec_events(execution["id"], "log")
        for _ in range(100):
            if len(live) >= len(stored):
                break
            await asyncio.sleep(0.05)
    finally:
        await sub.unsubscribe()

    assert execution["status"] == "succeeded"
    stored_lines = [{"seq": e.seq, "data": e.data} for e in stored]
    for lines in (stored_lines, live):
        assert [e["data"]["idx"] for e in lines] == list(range(1, len(lines) + 1))
        assert [e["seq"] for e in lines] == sorted(e["seq"] for e in lines)
        stdout = [e["data"]["msg"] for e in lines if e["data"]["stream"] == "stdout"]
        assert stdout == [f"line {i:05d}" for i in range(count)]
        assert {e["data"]["execution_id"] for e in lines} == {execution["id"]}
        assert all(e["data"]["action_index"] == 0 for e in lines if e["data"]["stream"] == "stdout")
    assert live == stored_lines


async def test_levels_from_the_stream_and_from_the_words_of_the_line(
    runner_factory, make_task, start_task, wait_exec, exec_events
):
    await runner_factory()
    script = (
        "echo plain out; "
        "echo a note on stderr >&2; "
        "echo 'INFO all is well' >&2; "
        "echo 'ERROR the disk is full'; "
        "echo '[debug] details' >&2; "
        "echo 'warning: low memory'"
    )
    task = await make_task(command=sh(script))

    execution = await wait_exec(await start_task(task["id"]))

    lines = [e.data for e in await exec_events(execution["id"], "log") if e.data["stream"] != "runner"]
    by_text = {line["msg"]: (line["stream"], line["level"]) for line in lines}
    assert by_text == {
        "plain out": ("stdout", "info"),
        "a note on stderr": ("stderr", "warning"),
        "INFO all is well": ("stderr", "info"),
        "ERROR the disk is full": ("stdout", "error"),
        "[debug] details": ("stderr", "debug"),
        "warning: low memory": ("stdout", "warning"),
    }
    assert all(line["ts"] and line["action_index"] == 0 for line in lines)


async def test_a_line_longer_than_16_kib_is_cut_with_a_marker(
    runner_factory, make_task, start_task, wait_exec, exec_events
):
    await runner_factory()
    task = await make_task(command=py("print('x' * 20000); print('y' * 200000); print('after')"))

    execution = await wait_exec(await start_task(task["id"]))

    assert execution["status"] == "succeeded"
    messages = [e.data["msg"] for e in await exec_events(execution["id"], "log") if e.data["stream"] == "stdout"]
    long_x, long_y, after = messages
    assert long_x.startswith("x" * 16 * 1024) and "x" * (16 * 1024 + 1) not in long_x
    assert "line cut" in long_x and str(20000 - 16 * 1024) in long_x
    assert long_y.startswith("y" * 16 * 1024) and "y" * (16 * 1024 + 1) not in long_y
    assert "line cut" in long_y
    assert len(long_x) < 16 * 1024 + 200 and len(long_y) < 16 * 1024 + 200
    assert after == "after"


async def test_progress_lines_become_progress_events_and_update_the_execution(
    api, runner_factory, make_task, start_task, wait_exec, exec_events
):
    await runner_factory()
    script = (
        "echo before; "
        "echo '::progress 40 Importing rows'; "
        "sleep 1.2; "
        "echo '::progress 70'; "
        "echo '::progress abc not a number'; "
        "exit 1"
    )
    task = await make_task(command=sh(script))
    execution_id = await start_task(task["id"])

    async def at_40() -> bool:
        execution = await api.call("exec", "get", {"id": execution_id})
        return execution["status"] == "running" and execution["progress_percent"] == 40.0 and \
            execution["progress_text"] == "Importing rows"

    for _ in range(40):
        if await at_40():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("progress 40 never showed on the running execution")
    execution = await wait_exec(execution_id)

    assert execution["status"] == "failed"
    assert (execution["progress_percent"], execution["progress_text"]) == (70.0, None)
    progress = [e.data for e in await exec_events(execution_id, "progress")]
    assert [(p["percent"], p["text"]) for p in progress] == [(40.0, "Importing rows"), (70.0, None)]
    assert all(p["execution_id"] == execution_id and p["ts"] for p in progress)
    stdout = [e.data["msg"] for e in await exec_events(execution_id, "log") if e.data["stream"] == "stdout"]
    assert stdout == ["before", "::progress abc not a number"]


async def test_progress_of_a_batch_is_overall_across_its_actions(
    api, runner_factory, make_task, make_batch, wait_exec, exec_events
):
    await runner_factory()
    first = await make_task(name="first", command=["echo", "::progress 100 first done"])
    second = await make_task(name="second", command=sh("echo '::progress 50 half of two'; exit 3"))
    batch = await make_batch(task_ids=[first["id"], second["id"]])

    started = await api.call("batch", "start", {"id": batch["id"]})
    execution = await wait_exec(started["execution_id"])

    progress = [e.data["percent"] for e in await exec_events(execution["id"], "progress")]
    assert progress == [50.0, 75.0]
    assert execution["progress_percent"] == 75.0


async def test_a_result_line_becomes_the_execution_result(
    runner_factory, make_task, start_task, wait_exec, exec_events
):
    await runner_factory()
    as_object = await make_task(name="object", command=sh(
        'echo working; echo \'::result {"rows": 3, "file": "out.csv"}\''))
    as_list = await make_task(name="list", command=["echo", "::result [1, 2]"])
    not_json = await make_task(name="not-json", command=["echo", "::result {oops"])

    obj = await wait_exec(await start_task(as_object["id"]))
    lst = await wait_exec(await start_task(as_list["id"]))
    bad = await wait_exec(await start_task(not_json["id"]))

    assert (obj["status"], obj["result"]) == ("succeeded", {"rows": 3, "file": "out.csv"})
    assert lst["result"] == {"value": [1, 2]}
    assert bad["status"] == "succeeded" and bad["result"] is None
    assert [e.data["msg"] for e in await exec_events(obj["id"], "log") if e.data["stream"] == "stdout"] == ["working"]
    assert [e.data["msg"] for e in await exec_events(bad["id"], "log") if e.data["stream"] == "stdout"] == \
        ["::result {oops"]


async def test_state_events_at_every_transition_the_final_one_after_the_last_line(
    runner_factory, make_task, start_task, wait_exec, exec_events
):
    await runner_factory()
    task = await make_task(command=sh("echo one; sleep 0.2; echo two; exit 5"))

    execution = await wait_exec(await start_task(task["id"]))

    events = await exec_events(execution["id"])
    states = [e for e in events if e.kind == "state"]
    logs = [e for e in events if e.kind == "log"]
    statuses = [e.data["status"] for e in states]
    assert statuses[0] == "queued"
    assert "running" in statuses
    assert statuses[-1] == "failed"
    assert [s for s in statuses if s in FINAL_STATUSES] == ["failed"], "one final state event, last"
    assert statuses.index("running") < statuses.index("failed")
    assert states[-1].seq > max(e.seq for e in logs), "the final state came before a log line"
    assert states[-1].data == {**execution, "version": states[-1].data["version"]}
    versions = [e.data["version"] for e in states]
    assert versions == sorted(versions)
    # The running state goes out before the first line of the process.
    first_running = next(e for e in states if e.data["status"] == "running")
    first_stdout = next(e for e in logs if e.data["stream"] == "stdout")
    assert first_running.seq < first_stdout.seq


async def test_state_events_of_a_canceled_run(api, runner_factory, make_task, start_task, wait_exec, exec_events):
    await runner_factory()
    task = await make_task(command=["sleep", "30"])
    execution_id = await start_task(task["id"])
    await wait_exec(execution_id, "running")

    await api.call("exec", "cancel", {"id": execution_id})
    await wait_exec(execution_id, timeout=5.0)

    states = [e for e in await exec_events(execution_id) if e.kind == "state"]
    assert states[-1].data["status"] == "canceled"
    assert states[-1].data["cancel_requested"] is True


async def test_events_of_a_task_without_trace_carry_the_header(
    runner_factory, make_task, start_task, wait_exec, exec_events
):
    await runner_factory()
    quiet = await make_task(name="quiet", command=sh("echo hidden; echo '::progress 10'"), trace=False)
    loud = await make_task(name="loud", command=sh("echo shown; echo '::progress 10'"))

    quiet_run = await wait_exec(await start_task(quiet["id"]))
    loud_run = await wait_exec(await start_task(loud["id"]))

    quiet_events = await exec_events(quiet_run["id"])
    assert {e.kind for e in quiet_events} == {"state", "log", "progress"}
    assert quiet_run["trace"] is False
    from_runner = [e for e in quiet_events if e.kind != "state" or e.data["status"] != "queued"]
    without = [e for e in from_runner if e.headers.get("Bd-Trace") != "false"]
    assert without == [], f"events of a trace:false task without `Bd-Trace: false`: {without}"
    assert all("Bd-Trace" not in e.headers for e in await exec_events(loud_run["id"]))


async def test_the_queued_and_cancel_events_of_a_task_without_trace_carry_the_header_too(
    api, make_task, start_task, exec_events
):
    # No runner: the broker publishes these (queued on start, canceled on a queued cancel).
    quiet = await make_task(name="quiet", command=["echo", "hidden"], trace=False)
    execution_id = await start_task(quiet["id"])
    await api.call("exec", "cancel", {"id": execution_id})

    states = await exec_events(execution_id, "state")

    assert [e.data["status"] for e in states] == ["queued", "canceled"]
    without = [e for e in states if e.headers.get("Bd-Trace") != "false"]
    assert without == [], f"state events of a trace:false task without `Bd-Trace: false`: {without}"
