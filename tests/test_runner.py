"""The runner executing real processes: actions in order, templates, cancel, timeout,
retries, module tasks, the registry, and two runners sharing a pool.

Every test starts in-process runners for its own org (`runner_factory`), acts through
the control API and waits on `exec.get` (`wait_exec`); the commands are real child
processes, checked through the files they write and the log lines they print.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from runner.templates import TemplateError, command_argv

from broker.errors import ApiError
from runner.modules import module
from processes import processes_with, unique_sleep
from expectations import expect_error
from runner.service import consumer_name

PRINT_ARGV = "import sys, json; print(json.dumps(sys.argv[1:]))"


# ---- helpers ------------------------------------------------------------------------


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


async def eventually(predicate, timeout: float = 5.0, interval: float = 0.05):
    """Poll a (sync or async) predicate until truthy; return its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value or loop.time() > deadline:
            return value
        await asyncio.sleep(interval)


def kill_leftovers(marker: str) -> None:
    for pid, _ in processes_with(marker):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


async def log_messages(exec_events, execution_id: str, stream: str | None = None) -> list[str]:
    lines = [e.data for e in await exec_events(execution_id, "log")]
    return [line["msg"] for line in lines if stream is None or line["stream"] == stream]


# ---- actions: order, stop on failure, continue_on_error ------------------------------


async def test_batch_actions_run_in_order_and_a_failure_stops_the_rest(
    api, runner_factory, make_task, make_batch, wait_exec, tmp_path
):
    trail = tmp_path / "trail"
    first = await make_task(name="first", command=sh(f"echo first >> {trail}"))
    failing = await make_task(name="failing", command=sh(f"echo failing >> {trail}; exit 3"))
    third = await make_task(name="third", command=sh(f"echo third >> {trail}"))
    batch = await make_batch(task_ids=[first["id"], failing["id"], third["id"]])
    await runner_factory()

    started = await api.call("batch", "start", {"id": batch["id"]})
    execution = await wait_exec(started["execution_id"])

    assert execution["status"] == "failed"
    assert trail.read_text().split() == ["first", "failing"]
    actions = execution["actions"]
    assert [a["status"] for a in actions] == ["succeeded", "failed", "skipped"]
    assert [a["exit_code"] for a in actions] == [0, 3, None]
    assert [a["task_id"] for a in actions] == [first["id"], failing["id"], third["id"]]
    assert all(a["started_at"] and a["finished_at"] for a in actions[:2])
    assert actions[2]["started_at"] is None and actions[2]["finished_at"] is None
    assert actions[0]["finished_at"] <= actions[1]["started_at"] <= actions[1]["finished_at"]
    assert "exited with code 3" in execution["error"]
    assert execution["started_at"] <= actions[0]["started_at"]
    assert actions[1]["finished_at"] <= execution["finished_at"]


async def test_continue_on_error_runs_later_actions_and_the_run_still_fails(
    api, runner_factory, make_task, make_batch, wait_exec, tmp_path
):
    trail = tmp_path / "trail"
    failing = await make_task(name="failing", command=sh(f"echo failing >> {trail}; exit 2"))
    after = await make_task(name="after", command=sh(f"echo after >> {trail}"))
    batch = await make_batch(
        task_ids=[failing["id"], after["id"]],
        actions=[{"task_id": failing["id"], "continue_on_error": True}, {"task_id": after["id"]}],
    )
    await runner_factory()

    started = await api.call("batch", "start", {"id": batch["id"]})
    execution = await wait_exec(started["execution_id"])

    assert trail.read_text().split() == ["failing", "after"]
    assert execution["status"] == "failed"
    assert [(a["status"], a["exit_code"]) for a in execution["actions"]] == [("failed", 2), ("succeeded", 0)]
    assert execution["actions"][0]["finished_at"] <= execution["actions"][1]["started_at"]


# ---- templates ----------------------------------------------------------------------

HOSTILE = [
    "; rm -rf /tmp/x",
    "`touch /tmp/pwned-backtick`",
    "$(touch /tmp/pwned)",
    "it's \"quoted\" 'twice'",
    "two\nlines",
    "  spaced   out  ",
    "{{ other }}",
    "*",
    "",
]


async def test_a_template_value_reaches_the_program_as_one_literal_argument(
    runner_factory, make_task, start_task, wait_exec, exec_events
):
    await runner_factory()
    task = await make_task(command=[sys.executable, "-c", PRINT_ARGV, "{{ v }}", "n={{ n }}", "{{ from_context }}"],
                           params={"n": 5}, overridable=[{"name": "v", "type": "any"}, {"name": "other"}])

    ids = [await start_task(task["id"], params={"v": value, "other": "NOT SUBSTITUTED"},
                            context={"from_context": {"k": [1, 2]}}) for value in HOSTILE]

    for value, execution_id in zip(HOSTILE, ids, strict=True):
        execution = await wait_exec(execution_id)
        assert execution["status"] == "succeeded", (value, execution)
        stdout = await log_messages(exec_events, execution_id, "stdout")
        assert [json.loads(line) for line in stdout] == [[value, "n=5", '{"k":[1,2]}']], value


async def test_shell_true_quotes_every_substituted_value(
    runner_factory, make_task, start_task, wait_exec, exec_events, tmp_path
):
    pwned, backticked = tmp_path / "pwned", tmp_path / "backticked"
    value = f"$(touch {pwned}); `touch {backticked}` && echo 'it''s' \"x\" > {tmp_path}/redirected"
    await runner_factory()
    task = await make_task(command=["echo", "{{ v }}"], shell=True, overridable=[{"name": "v"}])

    execution = await wait_exec(await start_task(task["id"], params={"v": value}))

    assert execution["status"] == "succeeded", execution
    assert not pwned.exists() and not backticked.exists()
    assert not (tmp_path / "redirected").exists()
    assert await log_messages(exec_events, execution["id"], "stdout") == [value]


async def test_a_task_gets_a_clean_environment_never_the_runners_secrets(
    runner_factory, make_task, start_task, wait_exec, exec_events, monkeypatch
):
    monkeypatch.setenv("BATCHDECK_NATS_URL", "nats://runner:hunter2@nats.internal:4222")
    monkeypatch.setenv("BD_RUNNER_ONLY", "not for tasks")
    monkeypatch.setenv("BD_PASSED_ON", "for tasks")
    monkeypatch.setenv("LC_TIME", "C.UTF-8")
    await runner_factory(pass_env=["BD_PASSED_ON", "BATCHDECK_NATS_URL"])
    task = await make_task(command=[sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
                           env={"TASK_OWN": "yes"})

    execution = await wait_exec(await start_task(task["id"]))

    assert execution["status"] == "succeeded", execution
    seen = json.loads((await log_messages(exec_events, execution["id"], "stdout"))[0])
    assert seen["TASK_OWN"] == "yes" and seen["BD_PASSED_ON"] == "for tasks" and seen["LC_TIME"] == "C.UTF-8"
    assert seen["PATH"] == os.environ["PATH"] and seen["BATCHDECK_EXECUTION_ID"] == execution["id"]
    assert "BD_RUNNER_ONLY" not in seen
    assert "hunter2" not in json.dumps(seen)  # not even when named in --pass-env


def test_the_program_is_rendered_from_the_tasks_params_only():
    """What the runner does whatever enqueued the run: a value for the program that only
    the context holds is not taken (broker.overrides refuses such a start earlier)."""
    assert command_argv(["{{ tool }}", "{{ tool }}"], {"tool": "ctx"}, False, {"tool": "rsync"}) == ["rsync", "ctx"]
    with pytest.raises(TemplateError, match="the program '{{ tool }}' takes tool from the task's params"):
        command_argv(["{{ tool }}", "x"], {"tool": "/bin/evil"}, False, {})
    with pytest.raises(TemplateError, match="renders with a NUL byte"):
        command_argv(["echo", "{{ v }}"], {"v": "a\x00b"}, False, {})


async def test_an_unknown_template_name_fails_the_action_naming_it(
    runner_factory, make_task, start_task, wait_exec, exec_events
):
    await runner_factory()
    task = await make_task(command=["echo", "{{ known }}", "{{ no_such_value }}"], params={"known": 1})

    execution = await wait_exec(await start_task(task["id"]))

    assert execution["status"] == "failed"
    assert execution["actions"][0]["status"] == "failed"
    assert "no_such_value" in execution["error"]
    assert "no_such_value" in (execution["actions"][0]["error"] or "")
    runner_lines = [e.data for e in await exec_events(execution["id"], "log") if e.data["stream"] == "runner"]
    assert any("no_such_value" in line["msg"] and line["level"] == "error" for line in runner_lines)


# ---- cancel -------------------------------------------------------------------------


async def test_cancel_kills_the_whole_process_group_including_grandchildren(
    api, runner_factory, make_task, start_task, wait_exec, tmp_path
):
    marker = unique_sleep()
    pids = tmp_path / "pids"
    await runner_factory(grace=1.0)
    task = await make_task(command=sh(f"sleep {marker} & echo $! >> {pids}; echo $$ >> {pids}; sleep {marker}; wait"))
    execution_id = await start_task(task["id"])
    try:
        await wait_exec(execution_id, "running")
        assert await eventually(lambda: pids.exists() and len(pids.read_text().split()) == 2)
        assert await eventually(lambda: len(processes_with(marker)) >= 3), processes_with(marker)

        reply = await api.call("exec", "cancel", {"id": execution_id})
        assert reply["acknowledged"] == "ok"
        execution = await wait_exec(execution_id, timeout=5.0)

        assert execution["status"] == "canceled"
        assert execution["actions"][0]["status"] == "canceled"
        assert execution["finished_at"] is not None
        assert await eventually(lambda: not processes_with(marker), timeout=3.0), processes_with(marker)
        assert not any(alive(int(pid)) for pid in pids.read_text().split())
    finally:
        kill_leftovers(marker)


async def test_cancel_kills_a_group_that_ignores_sigterm_after_the_grace(
    api, runner_factory, make_task, start_task, wait_exec
):
    marker = unique_sleep()
    await runner_factory(grace=0.5)
    # An ignored signal stays ignored in the children: only SIGKILL ends this group.
    task = await make_task(command=sh(f"trap '' TERM; sleep {marker} & sleep {marker}; wait"))
    execution_id = await start_task(task["id"])
    try:
        await wait_exec(execution_id, "running")
        assert await eventually(lambda: len(processes_with(marker)) >= 3)

        await api.call("exec", "cancel", {"id": execution_id})
        execution = await wait_exec(execution_id, timeout=5.0)

        assert execution["status"] == "canceled"
        assert await eventually(lambda: not processes_with(marker), timeout=3.0), processes_with(marker)
    finally:
        kill_leftovers(marker)


async def test_cancel_of_a_batch_leaves_its_later_actions_unrun(
    api, runner_factory, make_task, make_batch, wait_exec, tmp_path
):
    later = tmp_path / "later"
    await runner_factory()
    slow = await make_task(name="slow", command=["sleep", "30"])
    after = await make_task(name="after", command=["touch", str(later)])
    batch = await make_batch(task_ids=[slow["id"], after["id"]])
    execution_id = (await api.call("batch", "start", {"id": batch["id"]}))["execution_id"]
    await wait_exec(execution_id, "running")

    await api.call("exec", "cancel", {"id": execution_id})
    execution = await wait_exec(execution_id, timeout=5.0)

    assert execution["status"] == "canceled"
    assert [a["status"] for a in execution["actions"]] == ["canceled", "canceled"]
    assert not later.exists()


async def test_cancel_stops_a_running_module_task(api, runner_factory, start_task, wait_exec):
    await runner_factory()
    task = await api.call("task", "create", {"name": "nap", "module": "sleep", "params": {"seconds": 30}})
    execution_id = await start_task(task["id"])
    await wait_exec(execution_id, "running")

    await api.call("exec", "cancel", {"id": execution_id})
    execution = await wait_exec(execution_id, timeout=5.0)

    assert execution["status"] == "canceled"
    assert execution["actions"][0]["status"] == "canceled"


async def test_a_running_task_that_is_not_cancellable_refuses_cancel_with_409(
    api, runner_factory, make_task, start_task, wait_exec
):
    await runner_factory()
    task = await make_task(command=["sleep", "1.5"], cancellable=False)
    execution_id = await start_task(task["id"])
    await wait_exec(execution_id, "running")

    with pytest.raises(ApiError) as refused:
        await api.call("exec", "cancel", {"id": execution_id})

    assert refused.value.code == 409
    execution = await wait_exec(execution_id)
    assert execution["status"] == "succeeded"
    assert execution["cancel_requested"] is False


async def test_a_run_canceled_while_queued_never_starts(
    api, nc, org, runner_factory, make_task, start_task, wait_exec, tmp_path
):
    ran = tmp_path / "ran"
    task = await make_task(command=["touch", str(ran)])
    execution_id = await start_task(task["id"])
    await api.call("exec", "cancel", {"id": execution_id})
    await runner_factory()

    async def queue_drained() -> bool:
        info = await nc.jetstream().stream_info("BD_RUNS", subjects_filter=f"bd.{org}.run.default")
        return not (info.state.subjects or {})

    assert await eventually(queue_drained, timeout=5.0), "the canceled run was never taken off the queue"
    execution = await wait_exec(execution_id)
    assert execution["status"] == "canceled"
    assert execution["runner_id"] is None and execution["started_at"] is None
    assert not ran.exists()
    assert (await api.call("task", "get", {"id": task["id"]}))["start_count"] == 0


async def test_a_run_whose_deadline_passed_while_queued_ends_timed_out_unstarted(
    runner_factory, make_task, start_task, wait_exec, tmp_path
):
    ran = tmp_path / "ran"
    task = await make_task(command=["touch", str(ran)])
    execution_id = await start_task(task["id"], deadline="2020-01-01T00:00:00.000Z")
    await runner_factory()

    execution = await wait_exec(execution_id)

    assert execution["status"] == "timed_out"
    assert "deadline" in execution["error"]
    assert not ran.exists()


# ---- timeout ------------------------------------------------------------------------


async def test_timeout_kills_the_group_and_ends_timed_out(runner_factory, make_task, start_task, wait_exec):
    marker = unique_sleep(30)
    await runner_factory(grace=1.0)
    task = await make_task(command=sh(f"sleep {marker} & sleep {marker}; wait"), timeout_sec=0.5)
    try:
        execution = await wait_exec(await start_task(task["id"]), timeout=10.0)

        assert execution["status"] == "timed_out"
        assert execution["actions"][0]["status"] == "timed_out"
        assert "timed out" in execution["error"]
        assert execution["duration_ms"] < 5000
        assert await eventually(lambda: not processes_with(marker), timeout=3.0), processes_with(marker)
    finally:
        kill_leftovers(marker)


async def test_timeout_of_a_module_task(api, runner_factory, start_task, wait_exec):
    await runner_factory()
    task = await api.call("task", "create", {"name": "nap", "module": "sleep", "params": {"seconds": 30},
                                             "timeout_sec": 0.3})

    execution = await wait_exec(await start_task(task["id"]), timeout=10.0)

    assert execution["status"] == "timed_out"


# ---- retries ------------------------------------------------------------------------


def fails_until(counter: Path, succeeds_at: int) -> list[str]:
    """A command that counts its runs in `counter` and succeeds from run `succeeds_at` on."""
    return sh(f'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; '
              f'echo "run $n"; [ "$n" -ge {succeeds_at} ]')


async def test_a_task_that_fails_twice_succeeds_on_its_second_retry(
    api, runner_factory, make_task, start_task, wait_exec, exec_events, tmp_path
):
    counter = tmp_path / "count"
    await runner_factory()
    task = await make_task(command=fails_until(counter, 3), retries=2, retry_backoff_sec=0.05)

    execution = await wait_exec(await start_task(task["id"]))

    assert execution["status"] == "succeeded", execution
    assert counter.read_text().strip() == "3"
    assert execution["actions"][0]["status"] == "succeeded"
    assert execution["actions"][0]["exit_code"] == 0
    stored = await api.call("task", "get", {"id": task["id"]})
    assert stored["start_count"] == 3
    assert stored["last_started_at"] is not None
    assert await log_messages(exec_events, execution["id"], "stdout") == ["run 1", "run 2", "run 3"]


async def test_a_task_that_keeps_failing_ends_failed_when_retries_are_spent(
    api, runner_factory, make_task, start_task, wait_exec, tmp_path
):
    counter = tmp_path / "count"
    await runner_factory()
    task = await make_task(command=fails_until(counter, 10), retries=2, retry_backoff_sec=0.05)

    execution = await wait_exec(await start_task(task["id"]))

    assert execution["status"] == "failed"
    assert counter.read_text().strip() == "3"
    assert execution["actions"][0]["exit_code"] == 1
    assert (await api.call("task", "get", {"id": task["id"]}))["start_count"] == 3


async def test_cancel_while_waiting_to_retry(api, runner_factory, make_task, start_task, wait_exec, tmp_path):
    counter = tmp_path / "count"
    await runner_factory()
    task = await make_task(command=fails_until(counter, 10), retries=3, retry_backoff_sec=30)
    execution_id = await start_task(task["id"])
    assert await eventually(lambda: counter.exists(), timeout=5.0)
    await asyncio.sleep(0.2)

    await api.call("exec", "cancel", {"id": execution_id})
    execution = await wait_exec(execution_id, timeout=3.0)

    assert execution["status"] == "canceled"
    assert counter.read_text().strip() == "1"


async def test_a_program_that_cannot_start_fails_clearly_without_retries(
    api, runner_factory, make_task, start_task, wait_exec
):
    await runner_factory()
    missing = await make_task(name="missing", command=["/no/such/program", "x"], retries=2, retry_backoff_sec=0.05)
    bad_cwd = await make_task(name="bad-cwd", command=["true"], cwd="/no/such/dir", retries=2,
                              retry_backoff_sec=0.05)

    for task, named in ((missing, "/no/such/program"), (bad_cwd, "/no/such/dir")):
        execution = await wait_exec(await start_task(task["id"]))
        assert execution["status"] == "failed"
        assert named in execution["error"]
        assert (await api.call("task", "get", {"id": task["id"]}))["start_count"] == 1, "retried in vain"


async def test_env_cwd_and_the_batchdeck_variables_reach_the_program(
    runner_factory, make_task, start_task, wait_exec, exec_events, org, tmp_path
):
    await runner_factory()
    task = await make_task(command=sh('pwd; echo "$GREETING"; echo "$BATCHDECK_EXECUTION_ID $BATCHDECK_ACTION_INDEX '
                                      '$BATCHDECK_ATTEMPT $BATCHDECK_ORG"'),
                           env={"GREETING": "hello there"}, cwd=str(tmp_path))

    execution = await wait_exec(await start_task(task["id"]))

    assert execution["status"] == "succeeded"
    assert await log_messages(exec_events, execution["id"], "stdout") == [
        str(tmp_path), "hello there", f"{execution['id']} 0 1 {org}"]


# ---- module tasks -------------------------------------------------------------------


async def test_built_in_modules_noop_sleep_and_shell(api, runner_factory, start_task, wait_exec, exec_events):
    await runner_factory()
    noop = await api.call("task", "create", {"name": "noop", "module": "noop"})
    nap = await api.call("task", "create", {"name": "nap", "module": "sleep", "params": {"seconds": 0.2}})
    script = await api.call("task", "create", {"name": "script", "module": "shell",
                                               "params": {"script": "echo from-shell; echo oops >&2"}})
    failing = await api.call("task", "create", {"name": "failing", "module": "shell",
                                                "params": {"script": "exit 4"}})

    ids = [await start_task(t["id"]) for t in (noop, nap, script, failing)]
    done = [await wait_exec(i) for i in ids]

    assert [e["status"] for e in done] == ["succeeded", "succeeded", "succeeded", "failed"]
    assert done[1]["result"] == {"slept": 0.2}
    assert done[1]["duration_ms"] >= 150
    assert done[2]["result"] == {"exit_code": 0}
    lines = [e.data for e in await exec_events(ids[2], "log") if e.data["stream"] != "runner"]
    assert [(line["msg"], line["stream"], line["level"]) for line in lines] == [
        ("from-shell", "stdout", "info"), ("oops", "stderr", "warning")]
    assert "4" in done[3]["error"]


async def test_a_module_handlers_return_value_becomes_the_result(api, runner_factory, start_task, wait_exec,
                                                                exec_events):
    runner = await runner_factory()

    @module("answer", "Answers", params=[])
    async def answer(ctx):
        ctx.log("thinking")
        ctx.progress(50, "half way")
        return {"answer": 42, "context": ctx.context}

    runner.modules["answer"] = answer
    task = await api.call("task", "create", {"name": "answer", "module": "answer"})

    execution = await wait_exec(await start_task(task["id"], context={"who": "me"}))

    assert execution["status"] == "succeeded", execution
    assert execution["result"] == {"answer": 42, "context": {"who": "me"}}
    assert "thinking" in await log_messages(exec_events, execution["id"], "stdout")
    progress = [e.data for e in await exec_events(execution["id"], "progress")]
    assert [(p["percent"], p["text"]) for p in progress] == [(50.0, "half way")]


async def test_module_params_that_do_not_fit_fail_the_action_clearly(
    api, runner_factory, start_task, wait_exec
):
    # Created and started before any runner advertises the module, so only the runner checks.
    task = await api.call("task", "create", {"name": "nap", "module": "sleep", "params": {"seconds": "abc"}})
    execution_id = await start_task(task["id"])
    await runner_factory()

    execution = await wait_exec(execution_id)

    assert execution["status"] == "failed"
    assert "seconds" in execution["error"] and "number" in execution["error"]
    assert "sleep" in execution["error"]


async def test_an_unknown_module_fails_clearly(api, runner_factory, start_task, wait_exec):
    task = await api.call("task", "create", {"name": "ghost", "module": "no_such_module"})
    runner = await runner_factory()

    execution = await wait_exec(await start_task(task["id"]))

    assert execution["status"] == "failed"
    assert "no_such_module" in execution["error"]
    assert runner.id in execution["error"]


async def test_module_state_is_kept_between_runs(api, runner_factory, start_task, wait_exec):
    runner = await runner_factory()
    seen: list[Any] = []

    @module("counter", "Counts its runs in its state", params=[])
    async def counter(ctx):
        seen.append(dict(ctx.state))
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"n": ctx.state["n"]}

    runner.modules["counter"] = counter
    task = await api.call("task", "create", {"name": "counter", "module": "counter"})

    first = await wait_exec(await start_task(task["id"]))
    second = await wait_exec(await start_task(task["id"]))

    assert (first["status"], second["status"]) == ("succeeded", "succeeded")
    assert seen == [{}, {"n": 1}]
    assert second["result"] == {"n": 2}
    stored = await api.call("task", "get", {"id": task["id"]})
    assert stored["state"] == {"n": 2}
    assert stored["start_count"] == 2


async def test_a_failed_module_run_does_not_change_the_state(api, runner_factory, start_task, wait_exec):
    runner = await runner_factory()

    @module("flaky", "Writes state, then fails", params=[])
    async def flaky(ctx):
        ctx.state["touched"] = True
        raise ValueError("broken on purpose")

    runner.modules["flaky"] = flaky
    task = await api.call("task", "create", {"name": "flaky", "module": "flaky"})

    execution = await wait_exec(await start_task(task["id"]))

    assert execution["status"] == "failed"
    assert "ValueError: broken on purpose" in execution["error"]
    assert (await api.call("task", "get", {"id": task["id"]}))["state"] == {}


# ---- registry: task.modules and runner.list -------------------------------------------


async def test_task_modules_lists_what_a_live_runner_advertises(api, runner_factory):
    assert (await api.call("task", "modules", {}))["modules"] == []
    await runner_factory()

    modules = {m["name"]: m for m in (await api.call("task", "modules", {}))["modules"]}

    assert {"noop", "sleep", "shell"} <= set(modules)
    assert modules["noop"]["params"] == []
    (seconds,) = modules["sleep"]["params"]
    assert (seconds["name"], seconds["type"], seconds["default"]) == ("seconds", "number", 1)
    (script,) = modules["shell"]["params"]
    assert (script["name"], script["type"], script["required"]) == ("script", "string", True)
    assert all(m["description"] for m in modules.values())


async def test_module_params_of_a_start_or_a_batch_action_are_checked_against_the_live_schema(
        api, runner_factory):
    await runner_factory()
    task = await api.call("task", "create", {"name": "nap", "kind": "module", "module": "sleep",
                                             "params": {"seconds": 1}, "overridable": [{"name": "seconds"}]})
    # `seconds` may be set by a start (a string, as declared), but the module wants a number
    refused = await expect_error(400, api.call("task", "start", {"id": task["id"], "params": {"seconds": "abc"}}))
    assert "params do not fit module 'sleep'" in refused.message and "'seconds' must be number" in refused.message
    assert (await api.call("exec", "list", {"filter": {"task_id": task["id"]}}))["total"] == 0  # nothing queued
    assert (await api.call("task", "start", {"id": task["id"], "params": {}}))["execution_id"]

    bad_action = {"name": "b", "cron_expression": "@daily", "is_enabled": False, "run_on_startup": False,
                  "actions": [{"task_id": task["id"], "params": {"seconds": "soon"}}]}
    refused = await expect_error(400, api.call("batch", "create", bad_action))
    assert refused.message.startswith(f"action 0 (task {task['id']!r}): params do not fit module 'sleep'")
    assert (await api.call("batch", "list", {}))["total"] == 0


async def test_runner_list_shows_the_runner_with_pools_modules_and_running(
    api, runner_factory, make_task, start_task, wait_exec, monkeypatch
):
    monkeypatch.setattr("runner.service.HEARTBEAT_SECONDS", 0.2)
    listing = await runner_factory(pools=["default", "gpu"], concurrency=3, name="r-list")

    (item,) = (await api.call("runner", "list", {}))["items"]
    assert item["id"] == "r-list"
    assert item["pools"] == ["default", "gpu"]
    assert item["concurrency"] == 3
    assert item["running"] == []
    assert {"noop", "sleep", "shell"} <= {m["name"] for m in item["modules"]}
    assert item["pid"] == os.getpid()
    assert item["heartbeat_at"] and item["started_at"]

    await runner_factory.stop(listing)
    assert (await api.call("runner", "list", {}))["items"] == []

    await runner_factory(name="r-runs")

    async def listed() -> dict[str, Any]:
        (runner,) = (await api.call("runner", "list", {}))["items"]
        assert runner["id"] == "r-runs"
        return runner

    task = await make_task(command=["sleep", "30"])
    execution_id = await start_task(task["id"])
    await wait_exec(execution_id, "running")
    assert await eventually(lambda: _running_is(listed, [execution_id]), timeout=3.0)

    await api.call("exec", "cancel", {"id": execution_id})
    await wait_exec(execution_id)
    assert await eventually(lambda: _running_is(listed, []), timeout=3.0)


async def _running_is(listed, expected: list[str]) -> bool:
    return (await listed())["running"] == expected


async def test_a_runner_serving_two_pools_runs_work_of_both_at_once(
    api, runner_factory, make_task, start_task, wait_exec
):
    # Room for two runs: one on each pool must run side by side, neither waiting for the other.
    await runner_factory(pools=["default", "gpu"], concurrency=2)
    on_default = await make_task(name="on-default", command=["sleep", "2"])
    on_gpu = await make_task(name="on-gpu", command=["sleep", "2"], pool="gpu")

    ids = await asyncio.gather(start_task(on_default["id"]), start_task(on_gpu["id"]))

    async def both_running() -> bool:
        executions = [await api.call("exec", "get", {"id": i}) for i in ids]
        return [e["status"] for e in executions] == ["running", "running"]

    together = await eventually(both_running, timeout=1.5)
    done = [await wait_exec(i, timeout=8.0) for i in ids]
    assert [(e["status"], e["pool"]) for e in done] == [("succeeded", "default"), ("succeeded", "gpu")]
    assert together, "with room for two, the run on one pool waited for the run on the other"


# ---- two runners, one pool -----------------------------------------------------------


async def test_two_runners_share_a_pool_and_run_everything_exactly_once(
    api, nc, org, runner_factory, make_task, start_task, tmp_path
):
    ran = tmp_path / "ran"
    first = await runner_factory(name="r-one")
    second = await runner_factory(name="r-two")
    task = await make_task(command=sh(f'echo "$BATCHDECK_EXECUTION_ID" >> {ran}; sleep 0.1'))

    ids = await asyncio.gather(*(start_task(task["id"]) for _ in range(40)))

    async def all_final() -> list[dict[str, Any]] | None:
        page = await api.call("exec", "list", {"per_page": 100})
        done = [e for e in page["items"] if e["status"] not in ("queued", "running")]
        return page["items"] if len(done) == 40 else None

    executions = await eventually(all_final, timeout=30.0, interval=0.2)
    assert executions, "the 40 executions did not all finish within 30 s"
    assert sorted(e["id"] for e in executions) == sorted(ids)
    assert {e["status"] for e in executions} == {"succeeded"}
    assert {e["attempt"] for e in executions} == {1}
    lines = ran.read_text().split()
    assert len(lines) == 40 and sorted(lines) == sorted(ids), "some execution ran twice or never"
    by_runner = {e["runner_id"] for e in executions}
    assert by_runner == {first.id, second.id}
    assert (await api.call("task", "get", {"id": task["id"]}))["start_count"] == 40

    async def all_acked() -> bool:
        claim = await nc.jetstream().consumer_info("BD_RUNS", consumer_name(org, "default"))
        return (claim.num_pending, claim.num_ack_pending) == (0, 0)

    assert await eventually(all_acked, timeout=3.0), "runs left on the queue or unacked"


# ---- log quotas and the runner's rate ---------------------------------------------------


async def test_output_past_the_log_quota_is_counted_not_kept_and_the_process_runs_on(
    runner_factory, make_task, start_task, wait_exec, exec_events, tmp_path
):
    await runner_factory()
    done = tmp_path / "done"
    task = await make_task(command=sh(f"for i in $(seq 1 500); do echo line $i; done; echo finished > {done}"),
                           log_max_lines=20)

    execution = await wait_exec(await start_task(task["id"]))

    assert execution["status"] == "succeeded" and done.read_text() == "finished\n"
    assert execution["log_dropped_lines"] == 480
    assert execution["log_dropped_bytes"] == sum(len(f"line {i}") for i in range(21, 501))
    lines = [e.data for e in await exec_events(execution["id"], "log")]
    assert [line["msg"] for line in lines[:20]] == [f"line {i}" for i in range(1, 21)]
    marker = lines[20]
    assert len(lines) == 21 and marker["stream"] == "runner" and marker["level"] == "warning"
    assert marker["msg"].startswith("log cut: 480 more line(s)") and "up to 20 lines" in marker["msg"]


async def test_the_byte_quota_cuts_a_run_of_long_lines(runner_factory, make_task, start_task, wait_exec, exec_events):
    await runner_factory()
    task = await make_task(command=[sys.executable, "-c", "print(('x' * 1000 + '\\n') * 100, end='')"],
                           log_max_bytes=10_000)

    execution = await wait_exec(await start_task(task["id"]))

    assert execution["status"] == "succeeded"
    kept = [e.data for e in await exec_events(execution["id"], "log") if e.data["stream"] == "stdout"]
    assert len(kept) == 10 and execution["log_dropped_lines"] == 90
    assert execution["log_dropped_bytes"] == 90 * 1000


async def test_a_task_may_not_ask_for_more_log_than_the_control_plane_allows(api):
    error = await expect_error(400, api.call("task", "create", {"name": "chatty", "command": ["true"],
                                                                "log_max_lines": 10_000_000}))
    assert "`log_max_lines` is 10000000; at most 1000000" in error.message


async def test_a_run_over_the_runners_rate_is_slowed_down_not_cut(
    runner_factory, make_task, start_task, wait_exec, exec_events
):
    """The rate holds the process back (its pipe fills) instead of dropping lines."""
    from runner.log_limits import Rate

    runner = await runner_factory()
    runner.log_rate = Rate(lines_per_second=200, bytes_per_second=0)
    task = await make_task(command=sh("for i in $(seq 1 600); do echo $i; done"))

    started = asyncio.get_running_loop().time()
    execution = await wait_exec(await start_task(task["id"]), timeout=30)
    took = asyncio.get_running_loop().time() - started

    assert execution["status"] == "succeeded" and execution["log_dropped_lines"] == 0
    assert len(await exec_events(execution["id"], "log")) == 600
    assert took >= 1.5, f"600 lines at 200 a second (the first 200 at once) took {took:.2f} s"
