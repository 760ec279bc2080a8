"""Runners that go away: a runner process killed with SIGKILL (its run is redelivered
after ack_wait and runs again as the next attempt, or ends `lost`), and a runner that
stops gracefully (it lets short work finish and hands long work back to the pool).

The killed runner is a real `batchdeck runner` process; the runner that takes over runs
in-process (`runner_factory`). The commands mark their first run with a file, so the
run that takes over finishes at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from expectations import eventually
from processes import processes_with, unique_sleep
from runner import service as runner_service
from runner.service import consumer_name


def first_run_sleeps(marker_file: Path, sleep: str) -> list[str]:
    """A command whose first run sleeps; every later run sees `marker_file` and exits 0."""
    script = (f'if [ -e {marker_file} ]; then echo "run again (attempt $BATCHDECK_ATTEMPT)"; exit 0; fi; '
              f'touch {marker_file}; echo "first run"; sleep {sleep}')
    return ["/bin/sh", "-c", script]


def _alive_with(marker: str) -> list[str]:
    """Command lines of live (not zombie) processes holding `marker`."""
    return [cmdline for _, cmdline in processes_with(marker)]


def kill_leftovers(marker: str) -> None:
    """SIGKILL the processes whose command line holds `marker` (children of a killed runner)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and int(entry) != os.getpid():
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _log_file(path: Path):
    return path.open("wb")  # the child keeps its own descriptor; ours is closed at once


@pytest.fixture
async def runner_process(nats_server, broker, org, tmp_path):
    """`await runner_process(name, ack_wait)` starts `batchdeck runner` as a child process
    of this org; every one still alive is killed at teardown."""
    started: list[asyncio.subprocess.Process] = []

    async def start(name: str, ack_wait: float = 2.0) -> asyncio.subprocess.Process:
        log = _log_file(tmp_path / f"{name}.log")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "batchdeck", "runner", "--nats", nats_server.url, "--org", org,
            "--ack-wait", str(ack_wait), "--grace", "1", "--name", name,
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, cwd=Path(__file__).parent.parent,
        )
        log.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def wait_running_on(api, execution_id: str, runner_id: str, timeout: float = 20.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        execution = await api.call("exec", "get", {"id": execution_id})
        if execution["status"] == "running" and execution["runner_id"] == runner_id:
            return execution
        assert execution["status"] in ("queued", "running"), execution
        assert loop.time() < deadline, f"not running on {runner_id} within {timeout:g} s: {execution}"
        await asyncio.sleep(0.05)


async def wait_logged(exec_events, execution_id: str, text: str, timeout: float = 10.0) -> None:
    """Wait until the execution's log on BD_EVENTS has a line `text`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while text not in [e.data["msg"] for e in await exec_events(execution_id, "log")]:
        assert loop.time() < deadline, f"{text!r} never logged by {execution_id}"
        await asyncio.sleep(0.05)


# ---- a runner killed with SIGKILL -----------------------------------------------------


async def test_a_run_of_a_killed_runner_runs_again_as_the_next_attempt(
    api, nc, org, runner_process, runner_factory, make_task, start_task, wait_exec, exec_events, tmp_path
):
    sleep = unique_sleep(30)
    task = await make_task(command=first_run_sleeps(tmp_path / "ran-once", sleep), retries=1,
                           retry_backoff_sec=0.1)
    process = await runner_process("r1", ack_wait=2.0)
    try:
        execution_id = await start_task(task["id"])
        await wait_running_on(api, execution_id, "r1")
        await wait_logged(exec_events, execution_id, "first run")
        info = await nc.jetstream().consumer_info("BD_RUNS", consumer_name(org, "default"))
        assert info.config.ack_wait == 2.0

        process.kill()
        await process.wait()
        second = await runner_factory(name="r2", ack_wait=2.0)
        execution = await wait_exec(execution_id, timeout=15.0)
    finally:
        kill_leftovers(sleep)

    assert execution["status"] == "succeeded", execution
    assert execution["attempt"] == 2
    assert execution["runner_id"] == second.id
    assert execution["actions"][0]["status"] == "succeeded"
    lines = [e.data for e in await exec_events(execution_id, "log")]
    assert [line["idx"] for line in lines] == list(range(1, len(lines) + 1)), "idx restarted or has gaps"
    messages = [line["msg"] for line in lines]
    assert "first run" in messages and "run again (attempt 2)" in messages
    assert any("r1" in m and "attempt 2" in m for m in messages), messages


async def test_a_run_of_a_killed_runner_without_retries_ends_lost(
    api, runner_process, runner_factory, make_task, start_task, wait_exec, exec_events, tmp_path
):
    sleep = unique_sleep(30)
    task = await make_task(command=first_run_sleeps(tmp_path / "ran-once", sleep), retries=0)
    process = await runner_process("r1", ack_wait=2.0)
    try:
        execution_id = await start_task(task["id"])
        await wait_running_on(api, execution_id, "r1")
        await wait_logged(exec_events, execution_id, "first run")

        process.kill()
        await process.wait()
        await runner_factory(name="r2", ack_wait=2.0)
        execution = await wait_exec(execution_id, timeout=15.0)
    finally:
        kill_leftovers(sleep)

    assert execution["status"] == "lost", execution
    assert execution["attempt"] == 1
    assert "r1" in execution["error"]
    assert execution["finished_at"] is not None
    assert execution["actions"][0]["status"] not in ("queued", "running")


# ---- a run delivered again while its runner lives ---------------------------------------


async def test_a_run_delivered_again_while_its_runner_still_runs_it_is_left_to_that_runner(
    api, nc, org, runner_factory, make_task, start_task, wait_exec, exec_events, tmp_path
):
    """A copy of a run reaches a second runner while the first one runs it, as when the
    first runner's claim renewals are lost while the consumer's leader moves to another
    node. The second runner must not take the first for dead: no `lost`, no second run."""
    runs = tmp_path / "runs"
    task = await make_task(command=["sh", "-c", f"echo ran >> {runs}; sleep 3; echo done"], retries=0)
    first = await runner_factory(name="r1", concurrency=1, ack_wait=2.0)  # busy: fetches no copy itself
    execution_id = await start_task(task["id"])
    await wait_running_on(api, execution_id, "r1")

    js = nc.jetstream()
    run_subject = f"bd.{org}.run.default"
    original = await js.get_last_msg("BD_RUNS", run_subject)
    await js.publish(run_subject, original.data)  # the copy
    second = await runner_factory(name="r2", ack_wait=2.0)
    execution = await wait_exec(execution_id, timeout=20.0)

    assert (execution["status"], execution["attempt"], execution["runner_id"]) == ("succeeded", 1, first.id), \
        execution
    assert runs.read_text() == "ran\n", "the command ran more than once"
    messages = [e.data["msg"] for e in await exec_events(execution_id, "log")]
    assert not any("stopped during attempt" in m for m in messages), messages
    assert second.counters.claimed == 0  # it left the copy alone

    async def copy_settled() -> bool:  # its next delivery finds the run final and acks it
        info = await js.consumer_info("BD_RUNS", consumer_name(org, "default"))
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(copy_settled, 15, 0.1, "the copy of the run settled")
    assert (await api.call("exec", "get", {"id": execution_id}))["status"] == "succeeded"


# ---- a run whose execution cannot be read ---------------------------------------------


async def test_a_run_whose_execution_is_not_readable_yet_runs_once_it_is(
    org, nc, runner_factory, make_task, start_task, wait_exec, caplog
):
    """A replica of bd_execs that lags behind the broker's write (direct gets are answered
    by any replica) must not make a runner drop the run: it comes back until it reads."""
    task = await make_task(command=["echo", "hello"])
    execution_id = await start_task(task["id"])  # no runner yet: it waits in BD_RUNS
    execs = await nc.jetstream().key_value("bd_execs")
    key = f"{org}.{execution_id}"
    record = (await execs.get(key)).value
    await execs.delete(key)  # what a lagging replica shows

    await runner_factory(name="r-lag")

    async def found_missing() -> bool:
        return "the execution is not readable yet" in caplog.text

    await eventually(found_missing, 15, 0.05, "the runner finding the execution missing")
    await execs.put(key, record)  # the replica catches up

    execution = await wait_exec(execution_id, timeout=20.0)
    assert (execution["status"], execution["runner_id"], execution["attempt"]) == ("succeeded", "r-lag", 1)


async def test_a_run_of_an_execution_that_never_shows_is_dropped_in_the_end(
    org, nc, runner_factory, make_task, start_task, wait_exec, monkeypatch, caplog
):
    monkeypatch.setattr(runner_service, "UNKNOWN_EXECUTION_RETRIES", (0.05,))
    monkeypatch.setattr(runner_service, "UNKNOWN_EXECUTION_PAUSE", 0.2)
    monkeypatch.setattr(runner_service, "UNKNOWN_EXECUTION_DELIVERIES", 3)
    task = await make_task(command=["echo", "hello"])
    first = await start_task(task["id"])
    js = nc.jetstream()
    command = json.loads((await js.get_last_msg("BD_RUNS", f"bd.{org}.run.default")).data)
    command["execution_id"] = "ghost-execution"
    await js.publish(f"bd.{org}.run.default", json.dumps(command).encode())

    await runner_factory(name="r-ghost")
    assert (await wait_exec(first))["status"] == "succeeded"

    async def queue_empty() -> bool:
        info = await js.consumer_info("BD_RUNS", consumer_name(org, "default"))
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(queue_empty, 15, 0.1, "the run of a ghost execution dropped")
    assert caplog.text.count("run of ghost-execution: the execution is not readable yet") == 2, caplog.text
    assert "run of unknown execution ghost-execution (expired from bd_execs?); dropped" in caplog.text


# ---- a runner that stops gracefully ---------------------------------------------------


async def test_stopping_a_runner_lets_short_work_finish(api, runner_factory, make_task, start_task, wait_exec):
    first = await runner_factory(name="r-drains", drain_timeout=5.0)
    task = await make_task(command=["sh", "-c", "sleep 0.5; echo done"])
    execution_id = await start_task(task["id"])
    await wait_running_on(api, execution_id, "r-drains")

    await runner_factory.stop(first)

    execution = await api.call("exec", "get", {"id": execution_id})
    assert (execution["status"], execution["runner_id"], execution["attempt"]) == ("succeeded", "r-drains", 1)


async def _start_long_run_on(runner, api, make_task, start_task, tmp_path: Path, sleep: str) -> str:
    """Start a task that sleeps on its first run (and finishes at once on a later one) and
    wait until `runner` is running it; returns the execution id."""
    ran_once = tmp_path / "ran-once"
    task = await make_task(command=first_run_sleeps(ran_once, sleep))
    execution_id = await start_task(task["id"])
    await wait_running_on(api, execution_id, runner.id)
    while not ran_once.exists():
        await asyncio.sleep(0.05)
    return execution_id


async def test_stopping_a_runner_hands_long_work_back_and_another_runner_finishes_it(
    api, runner_factory, make_task, start_task, wait_exec, exec_events, tmp_path
):
    sleep = unique_sleep(30)
    first = await runner_factory(name="r-leaves", drain_timeout=0.5)
    try:
        execution_id = await _start_long_run_on(first, api, make_task, start_task, tmp_path, sleep)
        await runner_factory.stop(first)

        handed_back = await api.call("exec", "get", {"id": execution_id})
        assert handed_back["status"] == "queued", handed_back
        assert handed_back["runner_id"] is None
        assert [a["status"] for a in handed_back["actions"]] == ["queued"]
        assert not [line for line in _alive_with(sleep)], "the handed-back process still runs"
        second = await runner_factory(name="r-takes-over")
        execution = await wait_exec(execution_id, timeout=10.0)
    finally:
        kill_leftovers(sleep)

    assert execution["status"] == "succeeded", execution
    assert execution["runner_id"] == second.id
    assert execution["attempt"] == 1
    messages = [e.data["msg"] for e in await exec_events(execution_id, "log")]
    assert "first run" in messages and "run again (attempt 1)" in messages
    assert any("handed back" in m for m in messages)


async def test_a_handed_back_run_is_free_for_another_runner_at_once(
    api, runner_factory, make_task, start_task, wait_exec, tmp_path
):
    sleep = unique_sleep(30)
    # A long ack_wait (30 s by default): a hand-back must not have to wait for it.
    first = await runner_factory(name="r-leaves", ack_wait=10.0, drain_timeout=0.3)
    try:
        execution_id = await _start_long_run_on(first, api, make_task, start_task, tmp_path, sleep)
        await runner_factory.stop(first)

        await runner_factory(name="r-takes-over")
        # Well within the 10 s ack_wait: the nak made the run free at once, nothing holds it.
        execution = await wait_exec(execution_id, timeout=4.0)
    finally:
        kill_leftovers(sleep)

    assert execution["status"] == "succeeded", execution


async def test_a_stopping_runner_claims_nothing_new(
    api, runner_factory, make_task, start_task, wait_exec, tmp_path
):
    sleep = unique_sleep(30)
    first = await runner_factory(name="r-leaves", drain_timeout=1.5)
    long_task = await make_task(name="long", command=first_run_sleeps(tmp_path / "ran-once", sleep))
    quick = await make_task(name="quick", command=["echo", "quick"])
    long_id = await start_task(long_task["id"])
    try:
        await wait_running_on(api, long_id, "r-leaves")

        stopping = asyncio.create_task(runner_factory.stop(first))
        await asyncio.sleep(0.2)
        quick_id = await start_task(quick["id"])  # arrives while the first runner drains
        await stopping

        second = await runner_factory(name="r-takes-over")
        quick_run = await wait_exec(quick_id, timeout=10.0)
        long_run = await wait_exec(long_id, timeout=10.0)
    finally:
        kill_leftovers(sleep)

    assert (quick_run["status"], quick_run["runner_id"], quick_run["attempt"]) == ("succeeded", second.id, 1)
    assert (long_run["status"], long_run["runner_id"]) == ("succeeded", second.id)


# ---- a runner restarted under the same name -------------------------------------------


async def test_start_count_keeps_growing_across_a_restart_of_a_runner_with_a_fixed_name(
    api, runner_factory, make_task, start_task, wait_exec
):
    # Fleets name runners after their host or pod (`--name`); a restart keeps the name.
    task = await make_task(command=["true"])
    before = await runner_factory(name="r-fixed")
    for _ in range(2):
        assert (await wait_exec(await start_task(task["id"])))["status"] == "succeeded"
    assert (await api.call("task", "get", {"id": task["id"]}))["start_count"] == 2

    await runner_factory.stop(before)
    await runner_factory(name="r-fixed")
    assert (await wait_exec(await start_task(task["id"])))["status"] == "succeeded"

    assert (await api.call("task", "get", {"id": task["id"]}))["start_count"] == 3
