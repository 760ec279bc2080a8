"""The `batchdeck` command as a user runs it: real subprocesses against a real stack.

Tests that talk to the session's broker are async and wait on their subprocesses
with asyncio: the broker lives on the test event loop, which must keep running.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.server import EmbeddedServer, free_port

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


def _wait_for_api(up: subprocess.Popen[str], url: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Wait for the banner `up` prints once everything is started (it must name the
    NATS URL), then list tasks."""
    deadline = time.monotonic() + timeout
    said = b""
    # os.read, not readline: readline may pull the banner into the file's buffer along
    # with the line before it, and select on the pipe would then wait for more in vain.
    while b"batchdeck is up" not in said and time.monotonic() < deadline and up.poll() is None:
        ready, _, _ = select.select([up.stdout], [], [], 0.2)
        if ready:
            said += os.read(up.stdout.fileno(), 65536)
    seen = said.decode(errors="replace")
    if up.poll() is not None:  # it ended: show all it said, to tell why
        out, err = up.communicate(timeout=10)
        seen += f"{out}\n[exit code {up.returncode}; stderr:]\n{err[-3000:]}"
    assert url in seen and up.poll() is None, seen
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
