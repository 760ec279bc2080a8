"""The `batchdeck` command as a user runs it: real subprocesses against a real stack.

Tests that talk to the session's broker are async and wait on their subprocesses
with asyncio: the broker lives on the test event loop, which must keep running.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.server import EmbeddedServer, free_port
from processes import up_banner

BATCHDECK = [sys.executable, "-m", "batchdeck"]


def cli(*args: str, url: str, org: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATCHDECK_NATS_URL": url, "BATCHDECK_ORG": org}
    return subprocess.run([*BATCHDECK, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture
def run(nats_server: EmbeddedServer, broker, org: str):
    """`await run("task", "list")` against the session's stack, in this test's org."""

    async def call(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "BATCHDECK_NATS_URL": nats_server.url, "BATCHDECK_ORG": org}
        process = await asyncio.create_subprocess_exec(
            *BATCHDECK, *args, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), 60)
        return subprocess.CompletedProcess(list(args), process.returncode, out.decode(), err.decode())

    return call


async def test_task_lifecycle_through_the_cli(run, tmp_path: Path):
    created = await run("task", "create", "--name", "greet", "--id", "greet", "--param", "who=ops", "--json",
                  "--", "echo", "hello {{ who }}")
    assert created.returncode == 0, created.stderr
    task = json.loads(created.stdout)
    assert task["command"] == ["echo", "hello {{ who }}"] and task["params"] == {"who": "ops"}

    listed = await run("task", "list")
    assert listed.returncode == 0 and "greet" in listed.stdout and "echo hello {{ who }}" in listed.stdout

    updated = await run("task", "update", "greet", "--retries", "3", "--json")
    assert json.loads(updated.stdout)["retries"] == 3

    stale = await run("task", "update", "greet", "--version", "1", "--retries", "4")
    assert stale.returncode == 1 and "409" in stale.stderr

    started = await run("task", "start", "greet", "--json")
    execution_id = json.loads(started.stdout)["execution_id"]
    shown = await run("exec", "get", execution_id, "--json")
    assert json.loads(shown.stdout)["status"] == "queued"
    assert (await run("exec", "cancel", execution_id)).returncode == 0
    assert json.loads((await run("exec", "get", execution_id, "--json")).stdout)["status"] == "canceled"

    deleted = await run("task", "delete", "greet")
    assert deleted.returncode == 0 and "deleted task greet" in deleted.stdout
    assert "greet" not in (await run("task", "list")).stdout


async def test_batch_from_a_toml_file(run, tmp_path: Path):
    await run("task", "create", "--name", "step", "--id", "step", "--", "true")
    definition = tmp_path / "nightly.toml"
    definition.write_text(
        'id = "nightly"\nname = "Nightly"\ncron_expression = "0 3 * * *"\ntimezone = "Europe/Berlin"\n'
        "is_enabled = true\nrun_on_startup = false\n\n[[actions]]\ntask_id = \"step\"\n"
    )
    created = await run("batch", "create", "-f", str(definition), "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["next_run_at"]

    refused = await run("batch", "delete", "nightly")
    assert refused.returncode == 1 and "enabled" in refused.stderr

    disabled = await run("batch", "disable", "nightly", "--json")
    assert json.loads(disabled.stdout)["next_run_at"] is None
    assert (await run("batch", "delete", "nightly")).returncode == 0


async def test_batch_from_flags_and_json_on_stdin(run):
    await run("task", "create", "--name", "step", "--id", "step", "--", "true")
    flags = await run("batch", "create", "--name", "hourly", "--cron", "@hourly", "--task", "step", "--json")
    assert flags.returncode == 0, flags.stderr
    batch = json.loads(flags.stdout)
    assert batch["is_enabled"] is True and batch["run_on_startup"] is False
    body = json.dumps({"name": "weekdays", "schedule": {"hours": [8], "weekdays": [1, 2, 3, 4, 5]},
                       "is_enabled": False, "run_on_startup": False, "actions": [{"task_id": "step"}]})
    piped = await run("batch", "create", "-f", "-", "--json", stdin=body)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["schedule"]["hours"] == [8]


async def test_api_errors_exit_1_with_the_message(run):
    missing = await run("task", "get", "nope")
    assert missing.returncode == 1
    assert "404" in missing.stderr and "nope" in missing.stderr
    bad_cron = await run("batch", "create", "--name", "x", "--cron", "61 * * * *", "--task", "t")
    assert bad_cron.returncode == 1 and "cron_expression" in bad_cron.stderr


async def test_usage_errors_exit_2(run):
    assert (await run("task", "frobnicate")).returncode == 2
    assert (await run("task", "create", "--param", "no-equals-sign", "--name", "x", "--", "true")).returncode == 2
    assert (await run("task", "list", "--org", "Not Valid")).returncode == 2
    assert (await run("runner", "--name", "has space")).returncode == 2
    assert (await run("runner", "--pool", "GPU")).returncode == 2
    assert (await run("runner", "--concurrency", "0")).returncode == 2


@pytest.mark.parametrize("secret", [["--nats", "nats://acme-runner:hunter2@127.0.0.1:4222"],
                                    ["--nats=nats://127.0.0.1:4223,nats://acme-runner:hunter2@127.0.0.1:4222"],
                                    ["--token", "hunter2"]])
def test_a_runner_refuses_credentials_on_its_command_line(org, secret):
    """Any process on the machine, its tasks first, reads a runner's command line."""
    result = cli("runner", *secret, url="nats://127.0.0.1:1", org=org)
    assert result.returncode == 2
    assert "readable by every process" in result.stderr and "BATCHDECK_NATS_URL" in result.stderr


def test_unreachable_server_exits_1_quickly(org):
    started = time.monotonic()
    result = cli("task", "list", url=f"nats://127.0.0.1:{free_port()}", org=org)
    assert result.returncode == 1
    assert "cannot reach NATS" in result.stderr
    assert time.monotonic() - started < 20


def _start_up(data_dir: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*BATCHDECK, "up", "--headless", "--data-dir", str(data_dir), "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_api(up: subprocess.Popen[str], url: str) -> subprocess.CompletedProcess[str]:
    """Wait for the banner `up` prints once everything is started (it must name the
    NATS URL), then list tasks."""
    assert url in up_banner(up)
    return cli("task", "list", "--json", url=url, org="default")


def _stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    return process.returncode, out


def test_up_answers_the_api_and_keeps_definitions_across_a_restart(tmp_path: Path):
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    up = _start_up(tmp_path, port, "--demo")
    try:
        ready = _wait_for_api(up, url)
        assert ready.returncode == 0, ready.stderr
        names = {t["id"] for t in json.loads(ready.stdout)["items"]}
        assert {"demo-hello", "demo-count", "demo-disk"} <= names
        batches = json.loads(cli("batch", "list", "--json", url=url, org="default").stdout)["items"]
        assert {b["id"] for b in batches} >= {"demo-every-minute", "demo-nightly", "demo-workdays"}
        # the run_on_startup demo batch runs at once, not at the next minute
        heartbeat = json.loads(cli("exec", "list", "--filter", "batch_id=demo-every-minute", "--json",
                                   url=url, org="default").stdout)
        assert any(item["source"] == "manual" for item in heartbeat["items"]), heartbeat
        created = cli("task", "create", "--name", "mine", "--id", "mine", "--", "true", url=url, org="default")
        assert created.returncode == 0, created.stderr
        # its runners execute work: the demo task runs to success
        started = cli("task", "start", "demo-hello", "--json", url=url, org="default")
        execution_id = json.loads(started.stdout)["execution_id"]
        deadline = time.monotonic() + 30
        while True:
            shown = json.loads(cli("exec", "get", execution_id, "--json", url=url, org="default").stdout)
            if shown["status"] not in ("queued", "running") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert shown["status"] == "succeeded", shown
        assert shown["runner_id"]
    finally:
        code, _ = _stop(up)
    assert code == 0

    again = _start_up(tmp_path, port, "--demo")  # --demo again must not duplicate or fail
    try:
        ready = _wait_for_api(again, url)
        assert ready.returncode == 0, ready.stderr
        ids = [t["id"] for t in json.loads(ready.stdout)["items"]]
        assert "mine" in ids and ids.count("demo-hello") == 1
    finally:
        code, _ = _stop(again)
    assert code == 0
    with pytest.raises(OSError):  # the embedded server went down with it
        import socket

        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_up_records_where_it_runs_and_commands_with_no_flag_find_it(tmp_path: Path):
    """A second terminal: no --nats, no BATCHDECK_NATS_URL, no --org, and it reaches the
    system `up` started, in its org. Flags and variables still win; the port stays the same
    across restarts; a stopped `up` is named as such."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("BATCHDECK_NATS_URL", "BATCHDECK_ORG")}
    env["BATCHDECK_DATA_DIR"] = str(data_dir)

    def batchdeck(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BATCHDECK, *args], env={**env, **extra}, capture_output=True, text=True, timeout=60)

    def start_up() -> tuple[subprocess.Popen[str], str]:
        up = subprocess.Popen([*BATCHDECK, "up", "--headless", "--runners", "0", "--org", "acme"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        banner = up_banner(up)
        return up, re.search(r"NATS on (nats://\S+)", banner).group(1)

    up, url = start_up()
    try:
        context = json.loads((data_dir / "context.json").read_text())
        assert context["url"] == url and context["org"] == "acme" and context["pid"] == up.pid
        created = batchdeck("task", "create", "--name", "mine", "--id", "mine", "--", "true")
        assert created.returncode == 0, created.stderr
        assert cli("task", "get", "mine", url=url, org="acme").returncode == 0  # in up's org
        assert cli("task", "get", "mine", url=url, org="default").returncode == 1
        elsewhere = f"nats://127.0.0.1:{free_port()}"
        assert batchdeck("task", "list", "--nats", elsewhere).returncode == 1  # a flag wins
        assert batchdeck("task", "list", BATCHDECK_NATS_URL=elsewhere).returncode == 1  # and so does the variable
        assert batchdeck("task", "list", "--org", "default", "--json").stdout.count('"mine"') == 0
        second = batchdeck("up", "--headless", "--runners", "0")
        assert second.returncode == 1 and "already runs on" in second.stderr, second.stderr
    finally:
        assert _stop(up)[0] == 0

    stopped = batchdeck("task", "list")
    assert stopped.returncode == 1
    assert "context.json" in stopped.stderr and "has stopped" in " ".join(stopped.stderr.split()), stopped.stderr

    again, url_again = start_up()
    try:
        assert url_again == url  # the same port: what a first terminal exported stays true
        assert json.loads(batchdeck("task", "get", "mine", "--json").stdout)["id"] == "mine"
    finally:
        assert _stop(again)[0] == 0


def test_stopping_up_says_what_it_waits_for_and_a_second_signal_hands_the_runs_back(tmp_path: Path):
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    up = _start_up(tmp_path, port, "--runners", "1")
    try:
        assert _wait_for_api(up, url).returncode == 0
        assert cli("task", "create", "--name", "long", "--id", "long", "--", "sleep", "120", url=url,
                   org="default").returncode == 0
        execution_id = json.loads(cli("task", "start", "long", "--json", url=url, org="default").stdout)["execution_id"]
        deadline = time.monotonic() + 30
        while json.loads(cli("exec", "get", execution_id, "--json", url=url, org="default").stdout)["status"] != "running":
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.2)

        up.send_signal(signal.SIGTERM)
        said = b""
        while b"Ctrl-C hands them back now" not in said and up.poll() is None:
            ready, _, _ = select.select([up.stdout], [], [], 1.0)
            if ready:
                said += os.read(up.stdout.fileno(), 65536)
        assert b"waiting for 1 running run to finish, up to 30 s" in said, said
        up.send_signal(signal.SIGINT)  # as Ctrl-C
        out, err = up.communicate(timeout=25)  # well inside the 30 s drain: it did not wait for it
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 0, err
    assert "handing the running runs back" in out
    assert "handing back 1 run(s) now" in err  # the runner's own log


async def test_the_first_hour_rough_edges_of_the_cli(run):
    # a sort field with its `-` (descending) after a space, as the README prints it
    await run("task", "create", "--name", "t", "--id", "t", "--", "true")
    for _ in range(2):
        await run("task", "start", "t")
    listed = await run("exec", "list", "--filter", "status=queued", "--filter", "status=running",
                       "--sort", "-queued_at", "--json")
    assert listed.returncode == 0, listed.stderr
    times = [item["queued_at"] for item in json.loads(listed.stdout)["items"]]
    assert len(times) == 2 and times == sorted(times, reverse=True)
    # a batch without a task is a usage error that names the flag, not the API's field
    lonely = await run("batch", "create", "--name", "b", "--cron", "@daily")
    assert lonely.returncode == 2 and "--task TASK_ID" in lonely.stderr and "actions`" not in lonely.stderr
    assert "list batches" in (await run("batch", "--help")).stdout
    # a module no live runner has: saved, with a word about it
    saved = await run("task", "create", "--name", "g", "--id", "g", "--module", "greet", "--param", "who=ops")
    assert saved.returncode == 0, saved.stderr
    assert "warning: no live runner of org" in saved.stderr and "has module 'greet'" in saved.stderr


def test_a_sort_value_is_attached_only_where_it_is_a_sort_value():
    from batchdeck.commands import attach_sort_values

    assert attach_sort_values(["exec", "list", "--sort", "-queued_at", "--json"]) == [
        "exec", "list", "--sort=-queued_at", "--json"]
    assert attach_sort_values(["exec", "list", "--sort", "name"]) == ["exec", "list", "--sort", "name"]
    # after `--` it is the task's command line: left alone
    assert attach_sort_values(["task", "create", "--", "sort", "--sort", "-r"]) == [
        "task", "create", "--", "sort", "--sort", "-r"]


async def test_batch_next_and_triggers_through_the_cli(run):
    assert (await run("task", "create", "--name", "t", "--id", "t", "--", "true")).returncode == 0
    created = await run("batch", "create", "--name", "berlin", "--id", "berlin", "--cron", "30 2 * * *",
                        "--timezone", "Europe/Berlin", "--task", "t", "--no-enabled")
    assert created.returncode == 0, created.stderr

    upcoming = await run("batch", "next", "berlin", "--count", "3")
    assert upcoming.returncode == 0, upcoming.stderr
    assert "timezone Europe/Berlin" in upcoming.stdout and "disabled" in upcoming.stdout
    rows = [line for line in upcoming.stdout.splitlines() if line[:1] in "123"]
    assert len(rows) == 3 and all("CET" in r or "CEST" in r for r in rows), upcoming.stdout
    as_json = json.loads((await run("batch", "next", "berlin", "--count", "2", "--json")).stdout)
    assert len(as_json["items"]) == 2 and as_json["cron"] == "30 2 * * *"
    assert (await run("batch", "next", "berlin", "--count", "0")).returncode == 2

    started = json.loads((await run("batch", "start", "berlin", "--json")).stdout)
    fired = await run("batch", "triggers", "berlin")
    assert fired.returncode == 0, fired.stderr
    assert started["execution_id"] in fired.stdout and "manual" in fired.stdout
    assert (await run("batch", "triggers", "ghost")).returncode == 1


async def test_a_start_with_an_idempotency_key_runs_once_however_often_it_is_sent(run):
    assert (await run("task", "create", "--name", "t", "--id", "once", "--", "true")).returncode == 0
    first = json.loads((await run("task", "start", "once", "--idempotency-key", "deploy-4711", "--json")).stdout)
    again = await run("task", "start", "once", "--idempotency-key", "deploy-4711")
    assert again.returncode == 0, again.stderr
    assert f"already started execution {first['execution_id']}" in again.stdout
    assert first["duplicate"] is False
    listed = json.loads((await run("exec", "list", "--filter", "task_id=once", "--json")).stdout)
    assert listed["total"] == 1
    refused = await run("task", "start", "once", "--idempotency-key", "has space")
    assert refused.returncode == 1 and "idempotency_key" in refused.stderr


async def test_notify_rules_from_flags_and_their_errors(run):
    created = await run("task", "create", "--name", "nightly", "--id", "nightly", "--notify", "ops@example.com",
                        "--notify", "https://chat.example.com/hook", "--notify-on", "always", "--json", "--", "true")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["notify"] == {
        "on": "always", "recipients": ["ops@example.com", "https://chat.example.com/hook"]}
    batch = await run("batch", "create", "--name", "n", "--cron", "@daily", "--task", "nightly",
                      "--notify", "team@example.com", "--json")
    assert json.loads(batch.stdout)["notify"] == {"on": "failure", "recipients": ["team@example.com"]}

    cleared = await run("task", "update", "nightly", "--no-notify", "--json")
    assert json.loads(cleared.stdout)["notify"] is None
    bad = await run("task", "update", "nightly", "--notify", "not-an-address")
    assert bad.returncode == 1 and "neither an email address" in " ".join(bad.stderr.split())
    lonely = await run("task", "update", "nightly", "--notify-on", "always")
    assert lonely.returncode == 2 and "--notify" in lonely.stderr


async def test_the_notifier_refuses_bad_settings_before_connecting(run):
    for args, message in ((["--smtp-url", "ftp://mail.example.com"], "scheme"),
                          (["--webhook-secret", "short"], "shorter than 16"),
                          (["--webhook-secret", "x" * 20, "--max-attempts", "0"], "--max-attempts"),
                          (["--webhook-secret", "x" * 20, "--only-org", "Bad Org"], "--only-org")):
        refused = await run("notifier", "--nats", "nats://127.0.0.1:1", *args)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr)
