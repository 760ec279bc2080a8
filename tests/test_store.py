"""The store against real parts: a nats-server of the test's own, the broker, runners
executing real processes, a DuckDB file in tmp_path, and `batchdeck store` / `batchdeck
sql` / `batchdeck logs` as real subprocesses.

The ingest is one durable consumer (`store_history`) per NATS server, so every test here
gets a server of its own (never the session's): two stores on one server would share it.
The store ingests asynchronously: tests poll the history API with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import nats
import pytest
import pytest_asyncio
from expectations import eventually, expect_error, parse_time

from broker import codec, subjects, streams
from broker.client import ApiClient
from broker.server import EmbeddedServer
from broker.service import ControlPlane
from broker.timestamps import parse_iso, to_iso
from broker.types import Notification
from runner.service import RunnerService
from store.limits import StoreLimits
from store.service import StoreService

ACME = "acme"
GLOBEX = "globex"
NEVER_SOON = "0 0 1 1 *"
FINAL = frozenset({"succeeded", "failed", "canceled", "timed_out", "lost", "skipped"})
BATCHDECK = [sys.executable, "-m", "batchdeck"]


# ---- helpers ------------------------------------------------------------------------


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def at(text: str | None) -> datetime | None:
    """A time from a reply, whatever its fraction digits (None stays None)."""
    return None if text is None else parse_iso(text)


class Stack:
    """A nats-server, a broker and an API client of the test's own; a store (in
    process) and runners started on demand, each on a connection of its own."""

    def __init__(self, server: EmbeddedServer, nc: Any, db: Path) -> None:
        self.server = server
        self.nc = nc
        self.js = nc.jetstream()
        self.db = db
        self.store: StoreService | None = None
        self._store_nc: Any = None
        self._runners: list[tuple[RunnerService, Any]] = []

    @property
    def url(self) -> str:
        return self.server.url

    def api(self, org: str = ACME) -> ApiClient:
        return ApiClient(self.nc, org)

    async def start_store(self, limits: StoreLimits = StoreLimits()) -> StoreService:
        self._store_nc = await nats.connect(self.url, name="test-store")
        self.store = StoreService(self._store_nc, self.db, limits=limits)
        await self.store.start()
        return self.store

    async def stop_store(self) -> None:
        if self.store is not None:
            await self.store.stop()
            await self._store_nc.close()
            self.store = self._store_nc = None

    async def runner(self, org: str = ACME) -> RunnerService:
        client = await nats.connect(self.url, name=f"test-runner-{org}")
        runner = RunnerService(client, org=org, concurrency=4, ack_wait=3.0, grace=1.0, drain_timeout=1.0)
        await runner.start()
        self._runners.append((runner, client))
        return runner

    async def close(self) -> None:
        for runner, client in self._runners:
            with contextlib.suppress(Exception):
                await runner.stop()
            await client.close()
        await self.stop_store()

    async def sql(self, text: str, params: list[Any] | None = None, org: str = ACME) -> list[dict[str, Any]]:
        """`history.sql` rows as dicts."""
        reply = await self.api(org).call("history", "sql", {"sql": text, "params": params or []})
        return [dict(zip(reply["columns"], row, strict=True)) for row in reply["rows"]]

    async def task(self, org: str = ACME, **fields: Any) -> dict[str, Any]:
        return await self.api(org).call("task", "create", {"name": "job", "command": ["true"], **fields})

    async def run(self, task_id: str, org: str = ACME, timeout: float = 20.0, **body: Any) -> dict[str, Any]:
        """Start a task and wait (exec.get) until its execution is final."""
        started = await self.api(org).call("task", "start", {"id": task_id, **body})
        return await self.final(started["execution_id"], org, timeout)

    async def final(self, execution_id: str, org: str = ACME, timeout: float = 20.0) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            execution = await self.api(org).call("exec", "get", {"id": execution_id})
            return execution if execution["status"] in FINAL else None

        return await eventually(probe, timeout, 0.05, f"execution {execution_id} final")

    async def stored(self, execution_id: str, org: str = ACME, timeout: float = 15.0) -> dict[str, Any]:
        """The execution's history row once the store holds its final state."""
        async def probe() -> dict[str, Any] | None:
            rows = await self.sql("SELECT * FROM executions WHERE id = ? AND status IN "
                                  "('succeeded', 'failed', 'canceled', 'timed_out', 'lost', 'skipped')",
                                  [execution_id], org)
            return rows[0] if rows else None

        return await eventually(probe, timeout, 0.1, f"execution {execution_id} final in the store")

    async def publish_lines(self, org: str, execution_id: str, count: int, chunk: int = 1000, first: int = 1,
                            msg: str = "") -> None:
        """`count` log lines (idx first..first+count-1) published straight to BD_EVENTS, as
        a runner does: one Nats-Msg-Id per line, acks awaited a chunk at a time."""
        subject = f"bd.{org}.evt.exec.{execution_id}.log"
        last = first + count - 1
        for start in range(first, last + 1, chunk):
            futures = []
            for idx in range(start, min(start + chunk, last + 1)):
                line = {"idx": idx, "ts": to_iso(datetime.now(UTC)), "level": "info", "stream": "stdout",
                        "action_index": 0, "msg": f"line {idx}{msg}", "execution_id": execution_id}
                futures.append(await self.js.publish_async(subject, json.dumps(line).encode(),
                                                           headers={"Nats-Msg-Id": f"{execution_id}.log.{idx}"}))
            await asyncio.gather(*futures)


@contextlib.asynccontextmanager
async def _stack(tmp_path: Path, with_store: bool,
                 stream_limits: streams.StreamLimits = streams.StreamLimits()) -> AsyncIterator[Stack]:
    server = EmbeddedServer(tmp_path / "nats")
    await server.astart()
    nc = await nats.connect(server.url, name="test-client")
    plane = ControlPlane(nc, nc.jetstream(), stream_limits=stream_limits)
    await plane.start()
    stack = Stack(server, nc, tmp_path / "h.duckdb")
    try:
        if with_store:
            await stack.start_store()
        yield stack
    finally:
        await stack.close()
        await plane.stop()
        await nc.close()
        await server.astop()


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """Server, broker and an in-process store on tmp_path/h.duckdb."""
    async with _stack(tmp_path, with_store=True) as built:
        yield built


@pytest_asyncio.fixture
async def bare_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """Server and broker; no store (the test runs `batchdeck store` itself)."""
    async with _stack(tmp_path, with_store=False) as built:
        yield built


async def batchdeck(stack: Stack, *args: str, org: str = ACME, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run the `batchdeck` command against the stack; (exit code, stdout, stderr)."""
    env = {**os.environ, "BATCHDECK_NATS_URL": stack.url, "BATCHDECK_ORG": org, "COLUMNS": "200"}
    process = await asyncio.create_subprocess_exec(
        *BATCHDECK, *args, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"batchdeck {' '.join(args)} did not exit within {timeout:g} s")
    return process.returncode, out.decode(), err.decode()


async def spawn_store(url: str, db: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as sink:
        return await asyncio.create_subprocess_exec(
            *BATCHDECK, "store", "--nats", url, "--db", str(db), stdin=asyncio.subprocess.DEVNULL,
            stdout=sink, stderr=sink,
        )


# ---- ingest of real runs ------------------------------------------------------------

CHATTY = sh('echo "step 1"; echo "oops 1" >&2; echo "step 2"; echo "error: disk full"; '
            'echo "oops 2" >&2; echo "step 3"')


async def test_a_run_is_in_history_with_its_status_actions_every_log_line_and_its_runner(stack):
    runner = await stack.runner()
    task = await stack.task(name="chatty", command=CHATTY)
    execution = await stack.run(task["id"])
    assert execution["status"] == "succeeded", execution

    row = await stack.stored(execution["id"])
    assert row["status"] == "succeeded"
    assert (row["task_id"], row["source"], row["runner_id"], row["attempt"]) == (task["id"], "manual", runner.id, 1)
    assert row["duration_ms"] == execution["duration_ms"] and row["duration_ms"] >= 0
    for name in ("queued_at", "started_at", "finished_at"):
        assert at(row[name]) == parse_time(execution[name]), name

    actions = await stack.sql("SELECT * FROM execution_actions WHERE execution_id = ?", [execution["id"]])
    assert len(actions) == 1, actions
    action = actions[0]
    assert (action["action_index"], action["task_id"], action["status"], action["exit_code"]) == \
        (0, task["id"], "succeeded", 0)
    assert action["duration_ms"] is not None and 0 <= action["duration_ms"] <= row["duration_ms"]

    lines = await stack.sql("SELECT idx, level, stream, action_index, msg FROM logs WHERE execution_id = ? "
                            "ORDER BY idx", [execution["id"]])
    assert [line["idx"] for line in lines] == list(range(1, 7)), lines
    assert {line["action_index"] for line in lines} == {0}
    # stdout and stderr are read side by side: each keeps its own order
    assert [(line["msg"], line["level"]) for line in lines if line["stream"] == "stdout"] == [
        ("step 1", "info"), ("step 2", "info"), ("error: disk full", "error"), ("step 3", "info")]
    assert [(line["msg"], line["level"]) for line in lines if line["stream"] == "stderr"] == [
        ("oops 1", "warning"), ("oops 2", "warning")]

    async def described() -> list[dict[str, Any]]:  # the heartbeat's host and pools arrive by a KV watch
        rows = await stack.sql("SELECT id, executions, host, pools, first_seen, last_seen FROM runners")
        return rows if rows and rows[0]["host"] else []

    runners = await eventually(described, what="the runner's host and pools")
    assert [(r["id"], r["executions"]) for r in runners] == [(runner.id, 1)], runners
    assert runners[0]["host"] == runner.describe().host and runners[0]["pools"] == ["default"]
    assert at(runners[0]["first_seen"]) <= parse_time(execution["started_at"])
    assert at(runners[0]["last_seen"]) >= parse_time(execution["finished_at"])


async def test_triggers_and_every_definition_version_are_in_history(stack):
    api = stack.api()
    task = await stack.task(name="step")
    batch = await api.call("batch", "create", {
        "name": "nightly", "cron_expression": NEVER_SOON, "is_enabled": True, "run_on_startup": False,
        "concurrency": "allow", "actions": [{"task_id": task["id"]}],
    })
    manual = await api.call("batch", "start", {"id": batch["id"]})

    # A cron tick as a scheduler replica publishes it to BD_TRIGGERS, fired 2 s late.
    scheduled = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=3)
    tick = {"trigger_id": f"tick{uuid.uuid4().hex[:12]}", "batch_id": batch["id"], "source": "cron",
            "scheduled_at": to_iso(scheduled), "fired_at": to_iso(scheduled + timedelta(milliseconds=2000))}
    await stack.js.publish(f"bd.{ACME}.trigger.{batch['id']}", json.dumps(tick).encode(),
                           headers={"Nats-Msg-Id": f"{ACME}.{batch['id']}@{tick['scheduled_at']}"})

    await api.call("task", "update", {"id": task["id"], "name": "step two"})
    await api.call("batch", "update", {"id": batch["id"], "description": "now documented"})

    async def caught_up() -> bool:
        counts = (await stack.sql("SELECT (SELECT count(*) FROM triggers) AS triggers, "
                                  "(SELECT count(*) FROM tasks) AS tasks, (SELECT count(*) FROM batches) AS batches"))[0]
        return counts == {"triggers": 2, "tasks": 2, "batches": 2}

    await eventually(caught_up, what="2 triggers, 2 task versions, 2 batch versions")

    triggers = {t["source"]: t for t in await stack.sql("SELECT * FROM triggers")}
    by_hand = triggers["manual"]
    assert (by_hand["trigger_id"], by_hand["batch_id"], by_hand["execution_id"], by_hand["status"]) == \
        (manual["trigger_id"], batch["id"], manual["execution_id"], "queued")
    assert by_hand["scheduled_at"] is None and by_hand["fired_at"] is not None
    assert by_hand["lag_ms"] is None  # nothing was scheduled: no lag
    cron = triggers["cron"]
    assert (cron["trigger_id"], cron["batch_id"], cron["status"]) == (tick["trigger_id"], batch["id"], "queued")
    assert at(cron["scheduled_at"]) == parse_time(tick["scheduled_at"])
    assert at(cron["fired_at"]) == parse_time(tick["fired_at"])
    assert cron["lag_ms"] == 2000
    executions = await stack.sql("SELECT id, source, trigger_id FROM executions WHERE batch_id = ?", [batch["id"]])
    assert {(e["id"], e["source"], e["trigger_id"]) for e in executions} == {
        (manual["execution_id"], "manual", manual["trigger_id"]), (cron["execution_id"], "cron", tick["trigger_id"])}

    tasks = await stack.sql("SELECT * FROM tasks WHERE id = ? ORDER BY version", [task["id"]])
    assert [(t["version"], t["name"], t["change"]) for t in tasks] == [(1, "step", "created"), (2, "step two", "updated")]
    assert json.loads(tasks[1]["command"]) == ["true"]
    assert tasks[0]["valid_to"] is not None and tasks[0]["valid_to"] == tasks[1]["valid_from"]
    assert at(tasks[0]["valid_from"]) <= at(tasks[0]["valid_to"])
    assert tasks[1]["valid_to"] is None

    batches = await stack.sql("SELECT * FROM batches WHERE id = ? ORDER BY version", [batch["id"]])
    assert [(b["version"], b["change"], b["cron_expression"], b["is_enabled"]) for b in batches] == [
        (1, "created", NEVER_SOON, True), (2, "updated", NEVER_SOON, True)]
    assert json.loads(batches[1]["definition"])["description"] == "now documented"
    assert batches[0]["valid_to"] is not None and batches[0]["valid_to"] == batches[1]["valid_from"]
    assert batches[1]["valid_to"] is None


async def test_an_untraced_run_leaves_no_rows(stack):
    await stack.runner()
    hidden_task = await stack.task(name="hidden", command=sh("echo secret 1; echo secret 2"), trace=False)
    hidden = await stack.run(hidden_task["id"])
    assert hidden["status"] == "succeeded"

    # Its events are on the stream, marked; wait for its final one before the next run.
    async def final_event() -> Any:
        msg = await stack.js.get_last_msg("BD_EVENTS", f"bd.{ACME}.evt.exec.{hidden['id']}.state")
        return msg if json.loads(msg.data)["status"] == "succeeded" else None

    msg = await eventually(final_event, what="the untraced run's final state event")
    assert (msg.headers or {}).get("Bd-Trace") == "false"

    # A traced run after it: once the store holds it, the store has read past the other.
    shown_task = await stack.task(name="shown", command=sh("echo visible"))
    shown = await stack.run(shown_task["id"])
    await stack.stored(shown["id"])

    for table, column in (("executions", "id"), ("execution_actions", "execution_id"), ("logs", "execution_id")):
        rows = await stack.sql(f"SELECT count(*) AS n FROM {table} WHERE {column} = ?", [hidden["id"]])
        assert rows == [{"n": 0}], table
    assert await stack.sql("SELECT count(*) AS n FROM logs WHERE msg LIKE 'secret%'") == [{"n": 0}]
    assert await stack.sql("SELECT msg FROM logs") == [{"msg": "visible"}]
    await expect_error(404, stack.api().call("exec", "logs", {"id": hidden["id"]}))  # not in the history
    assert [r["executions"] for r in await stack.sql("SELECT executions FROM runners")] == [1]


# ---- exactly once across restarts ---------------------------------------------------

COUNTS = ("SELECT (SELECT count(*) FROM executions) AS executions, (SELECT count(*) FROM logs) AS logs, "
          "(SELECT count(*) FROM execution_actions) AS actions, (SELECT count(*) FROM tasks) AS tasks, "
          "(SELECT coalesce(sum(executions), 0) FROM runners) AS runner_runs")


async def test_a_restarted_store_keeps_each_row_once_and_ingests_what_came_meanwhile(stack):
    await stack.runner()
    task = await stack.task(name="three", command=sh("echo a; echo b; echo c"))
    first = await stack.run(task["id"])
    await stack.stored(first["id"])
    before = (await stack.sql(COUNTS))[0]
    assert before == {"executions": 1, "logs": 3, "actions": 1, "tasks": 1, "runner_runs": 1}

    # Restart with nothing new: every row is still there once.
    await stack.stop_store()
    await stack.start_store()
    await asyncio.sleep(1.5)  # more than one fetch round of the new ingest
    assert (await stack.sql(COUNTS))[0] == before

    # Runs while the store is down are ingested when it is back.
    await stack.stop_store()
    second = await stack.run(task["id"])
    third = await stack.run(task["id"])
    await stack.start_store()
    await stack.stored(third["id"])
    await stack.stored(second["id"])
    assert (await stack.sql(COUNTS))[0] == {"executions": 3, "logs": 9, "actions": 3, "tasks": 1, "runner_runs": 3}

    # ... and what comes after the restart too.
    fourth = await stack.run(task["id"])
    await stack.stored(fourth["id"])
    assert (await stack.sql(COUNTS))[0] == {"executions": 4, "logs": 12, "actions": 4, "tasks": 1, "runner_runs": 4}
    per_run = await stack.sql("SELECT execution_id, count(*) AS n, count(DISTINCT idx) AS distinct_idx, "
                              "min(idx) AS lo, max(idx) AS hi FROM logs GROUP BY execution_id")
    assert len(per_run) == 4
    assert all((r["n"], r["distinct_idx"], r["lo"], r["hi"]) == (3, 3, 1, 3) for r in per_run), per_run


async def test_kill_9_in_the_middle_of_a_burst_loses_and_doubles_no_line(bare_stack, tmp_path):
    stack = bare_stack
    log = tmp_path / "store.log"
    api = stack.api()
    execution_id = f"burst-{uuid.uuid4().hex[:12]}"
    count_sql = {"sql": "SELECT count(*), count(DISTINCT idx), min(idx), max(idx) FROM logs WHERE execution_id = ?",
                 "params": [execution_id]}

    async def stored_lines() -> int:
        return (await api.call("history", "sql", count_sql))["rows"][0][0]

    store = await spawn_store(stack.url, stack.db, log)
    burst: asyncio.Task[None] | None = None
    try:
        await eventually(lambda: api.call("history", "sql", {"sql": "SELECT 1"}), 20, what="the store serving")
        # The last lines of the burst go out only after the kill: however fast the store
        # ingests, it is killed with the burst unfinished.
        burst = asyncio.create_task(stack.publish_lines(ACME, execution_id, 15_000))
        await eventually(stored_lines, 20, 0.02, "some of the burst stored")
        at_kill = await stored_lines()
        store.send_signal(signal.SIGKILL)
        assert await store.wait() == -signal.SIGKILL
        await burst
        await stack.publish_lines(ACME, execution_id, 5_000, first=15_001)
        assert 0 < at_kill <= 15_000

        store = await spawn_store(stack.url, stack.db, log)

        async def complete() -> list[Any] | None:
            row = (await api.call("history", "sql", count_sql))["rows"][0]
            return row if row[0] >= 20_000 else None

        await eventually(complete, 40, 0.2, "all 20000 lines stored after the restart")
        await asyncio.sleep(1.0)  # nothing more arrives later either
        assert (await api.call("history", "sql", count_sql))["rows"] == [[20_000, 20_000, 1, 20_000]]
    finally:
        if burst is not None and not burst.done():
            burst.cancel()
        if store.returncode is None:
            store.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(store.wait(), 15)
            except TimeoutError:
                store.kill()
                await store.wait()
    assert store.returncode == 0, log.read_text()[-3000:]


async def test_the_ingest_reads_events_as_raw_bytes_not_through_nats_py_message_objects(stack):
    """store.raw_inbox wraps nats-py's private protocol parser (`Client._ps`); should a
    nats-py release change it, the ingest still works, through nats-py's Msg objects,
    but several times slower. This test is what notices."""
    execution_id = f"raw-{uuid.uuid4().hex[:12]}"
    await stack.publish_lines(ACME, execution_id, 2000)

    async def all_stored() -> bool:
        rows = await stack.sql("SELECT count(*) AS n, count(DISTINCT idx) AS d FROM logs WHERE execution_id = ?",
                               [execution_id])
        return rows == [{"n": 2000, "d": 2000}]

    await eventually(all_stored, 20, what="the 2000 lines stored")
    inbox = stack.store.ingest.puller.inbox
    assert inbox.converted == 0, "events came through nats-py's Msg path: store.raw_inbox's hook is not called"
    assert inbox.raw >= 2000


async def test_log_text_of_any_kind_is_stored_exactly_as_published(stack):
    """Log columns reach DuckDB as JSON arrays: text that looks like JSON, quotes, NUL,
    line separators and astral characters must come out as they went in; a line whose
    time cannot be read is kept, with no time."""
    execution_id = f"odd-{uuid.uuid4().hex[:12]}"
    texts = ['nul \x00 inside', 'quotes \' " \\ and a backslash', 'emoji \U0001F600 sep \u2028 end',
             '["a", 1]', 'null', '', "x" * 5000]
    subject = f"bd.{ACME}.evt.exec.{execution_id}.log"
    for idx, text in enumerate(texts, start=1):
        line = {"idx": idx, "ts": "not a time" if idx == 2 else to_iso(datetime.now(UTC)), "level": "info",
                "stream": "stdout", "action_index": 0, "msg": text, "execution_id": execution_id}
        await stack.js.publish(subject, json.dumps(line).encode(), headers={"Nats-Msg-Id": f"{execution_id}.{idx}"})

    async def stored() -> list[dict[str, Any]]:
        rows = await stack.sql("SELECT idx, ts, msg FROM logs WHERE execution_id = ? ORDER BY idx", [execution_id])
        return rows if len(rows) == len(texts) else []

    rows = await eventually(stored, 20, what="the odd lines stored")
    assert [row["msg"] for row in rows] == texts
    assert rows[1]["ts"] is None and all(row["ts"] is not None for i, row in enumerate(rows) if i != 1)


# ---- notifications ------------------------------------------------------------------


def delivery(execution_id: str, target: str, org: str = ACME, **fields: Any) -> Notification:
    """A settled delivery as the notifier publishes it: sent now, unless `fields` say otherwise."""
    now = to_iso(datetime.now(UTC))
    record: dict[str, Any] = {
        "org": org, "execution_id": execution_id, "channel": "webhook" if "://" in target else "email",
        "target": target, "rules": ["batch:nightly"], "execution_status": "failed", "status": "sent", "attempts": 1,
        "notifier": "notifier-1", "created_at": now, "updated_at": now, "sent_at": now, **fields,
    }
    return Notification(**record)


async def publish_notify(stack: Stack, record: Notification | bytes, msg_id: str, org: str = ACME,
                         execution_id: str | None = None, headers: dict[str, str] | None = None) -> None:
    """A notify event straight to BD_EVENTS, as the notifier publishes it (or any body)."""
    if isinstance(record, Notification):
        org, execution_id, body = record.org, record.execution_id, codec.encode(record)
    else:
        body = record
    await stack.js.publish(subjects.notify_event(org, execution_id), body,
                           headers={"Nats-Msg-Id": msg_id, **(headers or {})})


async def notifications(stack: Stack, count: int, org: str = ACME, where: str = "true",
                        params: list[Any] | None = None) -> list[dict[str, Any]]:
    """The org's notification rows matching `where`, once there are `count` of them (by target)."""
    async def probe() -> list[dict[str, Any]]:
        rows = await stack.sql(f"SELECT * FROM notifications WHERE {where} ORDER BY target", params, org)
        return rows if len(rows) == count else []

    return await eventually(probe, 20, what=f"{count} notification rows where {where}")


async def test_each_recipient_of_a_run_is_one_notifications_row_holding_its_last_outcome(stack):
    execution_id = f"n-{uuid.uuid4().hex[:12]}"
    email = delivery(execution_id, "ops@acme.example", rules=["batch:nightly", "task:load"])
    hook = delivery(execution_id, "https://hooks.acme.example/batchdeck", status="failed", attempts=5, sent_at=None,
                    error="503 Service Unavailable")
    await publish_notify(stack, email, f"{execution_id}.email.sent.1")
    await publish_notify(stack, hook, f"{execution_id}.hook.failed.5")

    rows = await notifications(stack, 2)
    assert [(r["execution_id"], r["channel"], r["target"], r["status"]) for r in rows] == [
        (execution_id, "webhook", hook.target, "failed"), (execution_id, "email", email.target, "sent")]
    failed, sent = rows
    fields = ("org", "rules", "execution_status", "attempts", "error", "notifier")
    assert [sent[name] for name in fields] == [ACME, ["batch:nightly", "task:load"], "failed", 1, None, "notifier-1"]
    assert at(sent["created_at"]) == parse_iso(email.created_at) and at(sent["sent_at"]) == parse_iso(email.sent_at)
    assert (failed["attempts"], failed["error"], failed["sent_at"]) == (5, "503 Service Unavailable", None)

    # A notifier crashed after giving up and another sent it again: still one row, the later values.
    resent = delivery(execution_id, hook.target, attempts=1, notifier="notifier-2")
    await publish_notify(stack, resent, f"{execution_id}.hook.sent.1")
    rows = await notifications(stack, 1, where="target = ? AND status = 'sent'", params=[hook.target])
    assert (rows[0]["attempts"], rows[0]["error"], rows[0]["notifier"]) == (1, None, "notifier-2")
    assert at(rows[0]["sent_at"]) == parse_iso(resent.sent_at)
    assert await stack.sql("SELECT count(*) AS n FROM notifications") == [{"n": 2}]


async def test_a_malformed_or_untraced_notify_event_is_skipped_and_the_ingest_goes_on(stack):
    execution_id = f"bad-{uuid.uuid4().hex[:12]}"
    good = codec.to_builtins(delivery(execution_id, "ops@acme.example"))
    skipped = {
        "not json": b"{not json",
        "an unknown channel": codec.encode({**good, "channel": "pigeon", "target": "coo@acme.example"}),
        "no target": codec.encode({k: v for k, v in good.items() if k != "target"}),
        "attempts as text": codec.encode({**good, "attempts": "five", "target": "five@acme.example"}),
    }
    for what, body in skipped.items():
        await publish_notify(stack, body, f"{execution_id}.{what}", execution_id=execution_id)
    await publish_notify(stack, delivery(execution_id, "hidden@acme.example"), f"{execution_id}.untraced",
                         headers={"Bd-Trace": "false"})
    # A count no INTEGER holds: the row is kept, without it (never a failed batch).
    await publish_notify(stack, delivery(execution_id, "huge@acme.example", attempts=2 ** 40), f"{execution_id}.huge")
    await publish_notify(stack, delivery(execution_id, "ops@acme.example"), f"{execution_id}.good")

    rows = await notifications(stack, 2)
    assert [(r["target"], r["attempts"]) for r in rows] == [("huge@acme.example", None), ("ops@acme.example", 1)]
    await asyncio.sleep(0.5)  # nothing else arrives later
    assert await stack.sql("SELECT count(*) AS n FROM notifications") == [{"n": 2}]
    assert stack.store.ingest.skipped == 1  # the untraced one, unread

    # The ingest goes on with the next events.
    after = delivery(execution_id, "after@acme.example")
    await publish_notify(stack, after, f"{execution_id}.after")
    await notifications(stack, 3)


async def test_another_orgs_notifications_are_not_visible(stack):
    execution_id = f"o-{uuid.uuid4().hex[:12]}"  # the same execution id in both orgs
    await publish_notify(stack, delivery(execution_id, "boss@globex.example", org=GLOBEX), f"{GLOBEX}.{execution_id}")
    # A body naming acme on globex's subject is refused: an event's org is its subject's.
    forged = codec.encode(delivery(execution_id, "forged@acme.example", org=ACME))
    await publish_notify(stack, forged, f"{GLOBEX}.{execution_id}.forged", org=GLOBEX, execution_id=execution_id)
    await publish_notify(stack, delivery(execution_id, "ops@acme.example"), f"{ACME}.{execution_id}")

    mine = await notifications(stack, 1)  # read in order: globex's events are stored by now
    assert [(r["org"], r["target"]) for r in mine] == [(ACME, "ops@acme.example")]
    assert await stack.sql("SELECT count(*) AS n FROM notifications WHERE org = ? OR target LIKE '%globex%'",
                           [GLOBEX]) == [{"n": 0}]
    theirs = await notifications(stack, 1, GLOBEX)
    assert [(r["org"], r["target"]) for r in theirs] == [(GLOBEX, "boss@globex.example")]
    assert await stack.sql("SELECT count(*) AS n FROM notifications WHERE target LIKE 'forged%'") == [{"n": 0}]
    assert stack.store.ingest.refusals.count("org") == 1


# ---- exec.logs and batch.results ----------------------------------------------------


async def test_exec_logs_pages_by_offset_orders_and_filters_by_time(stack):
    await stack.runner()
    script = 'for i in $(seq 1 15); do echo "line $i"; done; sleep 0.4; for i in $(seq 16 30); do echo "line $i"; done'
    task = await stack.task(name="thirty", command=sh(script))
    execution = await stack.run(task["id"])
    await stack.stored(execution["id"])
    api = stack.api()

    async def logs(**body: Any) -> list[dict[str, Any]]:
        return (await api.call("exec", "logs", {"id": execution["id"], **body}))["items"]

    every = await logs()
    assert [line["idx"] for line in every] == list(range(1, 31))
    assert [line["msg"] for line in every] == [f"line {i}" for i in range(1, 31)]
    assert all(line["execution_id"] == execution["id"] and line["stream"] == "stdout" for line in every)

    assert [line["idx"] for line in await logs(offset=10, limit=5)] == [11, 12, 13, 14, 15]
    assert [line["idx"] for line in await logs(order="desc", limit=3)] == [30, 29, 28]
    assert [line["idx"] for line in await logs(offset=27, order="desc")] == [30, 29, 28]
    assert await logs(offset=30) == []

    since = every[15]["ts"]  # line 16, printed 0.4 s after line 15
    assert [line["idx"] for line in await logs(since=since)] == list(range(16, 31))
    assert [line["idx"] for line in await logs(since=since, order="desc", limit=2)] == [30, 29]
    later = to_iso(datetime.now(UTC) + timedelta(hours=1))
    assert await logs(since=later) == []

    await expect_error(400, logs(limit=10_001))
    await expect_error(400, logs(limit=0))
    await expect_error(400, logs(since="yesterday"))
    error = await expect_error(404, api.call("exec", "logs", {"id": "no-such-execution"}))
    assert "'no-such-execution' is not in the history" in error.message


async def test_long_lines_come_in_pages_that_fit_a_message_and_the_cli_prints_them_all(stack):
    execution_id = "01LONGLINES000000000000000"
    subject = f"bd.{ACME}.evt.exec.{execution_id}.log"
    long = "x" * 4000
    for idx in range(1, 601):  # 600 lines of 4 KB: 2.4 MB, more than one reply may carry
        line = {"idx": idx, "ts": to_iso(datetime.now(UTC)), "level": "info", "stream": "stdout",
                "action_index": 0, "msg": f"{idx} {long}", "execution_id": execution_id}
        await stack.js.publish(subject, json.dumps(line).encode())

    async def all_stored() -> bool:
        rows = await stack.sql("SELECT count(*) AS n FROM logs WHERE execution_id = ?", [execution_id])
        return rows[0]["n"] == 600

    await eventually(all_stored, 20.0, 0.2, "600 long lines stored")
    page = await stack.api().call("exec", "logs", {"id": execution_id, "limit": 1000})
    assert 0 < len(page["items"]) < 600, "one reply cannot hold 2.4 MB"
    assert [line["idx"] for line in page["items"]] == list(range(1, len(page["items"]) + 1))

    code, out, err = await batchdeck(stack, "logs", execution_id, "--json")
    assert code == 0, err
    assert [json.loads(line)["idx"] for line in out.splitlines()] == list(range(1, 601))


async def test_batch_results_pages_the_batchs_runs_newest_first(stack):
    await stack.runner()
    api = stack.api()
    task = await stack.task(name="exit", command=sh("exit {{ code }}"))
    batch = await api.call("batch", "create", {
        "name": "sometimes", "cron_expression": NEVER_SOON, "is_enabled": False, "run_on_startup": False,
        "actions": [{"task_id": task["id"]}],
    })

    # Known to the store before it ever ran: an empty page, not 404.
    async def known() -> Any:
        return await api.call("batch", "results", {"id": batch["id"]})

    empty = await eventually(known, what="the batch in the store")
    assert (empty["items"], empty["total"]) == ([], 0)

    failed_id = (await api.call("batch", "start", {"id": batch["id"], "context": {"code": 3}}))["execution_id"]
    assert (await stack.final(failed_id))["status"] == "failed"
    ok_id = (await api.call("batch", "start", {"id": batch["id"], "context": {"code": 0}}))["execution_id"]
    assert (await stack.final(ok_id))["status"] == "succeeded"
    await stack.stored(failed_id)
    await stack.stored(ok_id)

    page = await api.call("batch", "results", {"id": batch["id"]})
    assert [item["id"] for item in page["items"]] == [ok_id, failed_id]
    assert (page["total"], page["page"]) == (2, 1)
    newest, oldest = page["items"]
    assert (newest["status"], newest["batch_id"], newest["context"]) == ("succeeded", batch["id"], {"code": 0})
    assert (oldest["status"], oldest["context"]) == ("failed", {"code": 3})

    failures = await api.call("batch", "results", {"id": batch["id"], "filter": {"status": "failed"}})
    assert [item["id"] for item in failures["items"]] == [failed_id] and failures["total"] == 1
    second_page = await api.call("batch", "results", {"id": batch["id"], "per_page": 1, "page": 2})
    assert [item["id"] for item in second_page["items"]] == [failed_id]
    oldest_first = await api.call("batch", "results", {"id": batch["id"], "sort": "queued_at"})
    assert [item["id"] for item in oldest_first["items"]] == [failed_id, ok_id]

    await expect_error(404, api.call("batch", "results", {"id": "no-such-batch"}))
    await expect_error(400, api.call("batch", "results", {"id": batch["id"], "filter": {"nope": 1}}))


async def test_batch_results_orders_runs_of_one_second_by_time(stack):
    """Newest first by `queued_at`, also between runs queued within the same second, one
    of them on the whole second. The states are published as the broker publishes them,
    with chosen times (a real run lands on a whole second once in a thousand)."""
    batch_id = "tight"
    queued = {"on-the-second": "2026-11-20T02:00:00.000Z", "half-past": "2026-11-20T02:00:00.500Z",
              "next-second": "2026-11-20T02:00:01.250Z"}
    for execution_id, queued_at in queued.items():
        state = {"id": execution_id, "org": ACME, "batch_id": batch_id, "name": "tight", "status": "succeeded",
                 "queued_at": queued_at, "started_at": queued_at, "finished_at": queued_at, "duration_ms": 0,
                 "version": 3}
        await stack.js.publish(f"bd.{ACME}.evt.exec.{execution_id}.state", json.dumps(state).encode())
    await eventually(lambda: stack.sql("SELECT count(*) AS n FROM executions HAVING n = 3"), what="3 runs stored")

    api = stack.api()
    newest_first = await api.call("batch", "results", {"id": batch_id})
    assert [item["id"] for item in newest_first["items"]] == ["next-second", "half-past", "on-the-second"], \
        [(item["id"], item["queued_at"]) for item in newest_first["items"]]
    oldest_first = await api.call("batch", "results", {"id": batch_id, "sort": "queued_at"})
    assert [item["id"] for item in oldest_first["items"]] == ["on-the-second", "half-past", "next-second"]
    by_end = await api.call("batch", "results", {"id": batch_id, "sort": "-finished_at"})
    assert [item["id"] for item in by_end["items"]] == ["next-second", "half-past", "on-the-second"]


async def test_exec_history_lists_stored_runs_by_filter_window_sort_and_page_and_exec_list_relays_it(stack):
    """Runs older than the live state's 7 days are listed from the store, with the live
    list's filter, sort and paging, a window on `queued_at`, and only the caller's org."""
    old = {"jan-ok": ("2026-01-05T10:00:00.000Z", "succeeded", 40, ACME),
           "jan-failed": ("2026-01-05T11:00:00.000Z", "failed", None, ACME),
           "feb-lost": ("2026-02-01T00:00:00.000Z", "lost", 7, ACME),
           "other-org": ("2026-01-05T12:00:00.000Z", "failed", 1, "globex")}
    for execution_id, (queued_at, status, duration, org) in old.items():
        state = {"id": execution_id, "org": org, "batch_id": "nightly", "name": "nightly", "status": status,
                 "queued_at": queued_at, "finished_at": queued_at, "duration_ms": duration, "version": 3}
        await stack.js.publish(f"bd.{org}.evt.exec.{execution_id}.state", json.dumps(state).encode())
    await eventually(lambda: stack.sql("SELECT count(*) AS n FROM executions HAVING n = 3"), what="3 runs stored")
    api = stack.api()

    async def ids(verb: str = "history", **body: Any) -> list[str]:
        page = await api.call("exec", verb, body)
        assert page["total"] == len(page["items"]) or body.get("per_page"), page
        return [item["id"] for item in page["items"]]

    assert await ids() == ["feb-lost", "jan-failed", "jan-ok"]
    assert await ids(sort="queued_at") == ["jan-ok", "jan-failed", "feb-lost"]
    assert await ids(filter={"status": ["failed", "lost"]}) == ["feb-lost", "jan-failed"]
    assert await ids(filter={"duration_ms": None}) == ["jan-failed"]
    assert await ids(filter={"duration_ms": 40.0}) == ["jan-ok"]
    assert await ids(filter={"duration_ms": True}) == []  # booleans never equal numbers
    assert await ids(filter={"status": []}) == []
    assert await ids(filter={"queued_at": "2026-01-05T11:00:00+00:00"}) == ["jan-failed"]
    assert await ids(since="2026-01-05T10:30:00Z", until="2026-02-01T00:00:00Z") == ["jan-failed"]
    assert await ids(sort="-duration_ms") == ["jan-ok", "feb-lost", "jan-failed"]  # nulls last
    second = await api.call("exec", "history", {"per_page": 2, "page": 2})
    assert ([i["id"] for i in second["items"]], second["total"], second["pages"]) == (["jan-ok"], 3, 2)

    # exec.list answers from live state unless asked for the history, which it relays.
    task = await stack.task(name="queued-only", command=sh("true"))
    live_id = (await api.call("task", "start", {"id": task["id"]}))["execution_id"]
    assert await ids("list") == [live_id]
    hour = timedelta(hours=1)
    assert await ids("list", since=to_iso(datetime.now(UTC) - hour)) == [live_id]
    assert await ids("list", since=to_iso(datetime.now(UTC) + hour)) == []
    assert await ids("list", until=to_iso(datetime.now(UTC) - hour)) == []
    relayed = await api.call("exec", "list", {"history": True, "filter": {"status": "failed"}})
    assert [i["id"] for i in relayed["items"]] == ["jan-failed"] and relayed["items"][0]["org"] == ACME
    assert await ids("list", history=True, since="2026-02-01T00:00:00Z") == ["feb-lost"]
    assert [i["id"] for i in (await stack.api("globex").call("exec", "history", {}))["items"]] == ["other-org"]
    code, out, err = await batchdeck(stack, "exec", "list", "--history", "--until", "2026-02-01T00:00:00Z",
                                     "--filter", "status=failed", "--json")
    assert code == 0, err
    assert [i["id"] for i in json.loads(out)["items"]] == ["jan-failed"]

    await expect_error(400, api.call("exec", "history", {"filter": {"nope": 1}}))
    await expect_error(400, api.call("exec", "history", {"sort": "-nope"}))
    await expect_error(400, api.call("exec", "history", {"filter": {"status": {"$ne": 1}}}))
    await expect_error(400, api.call("exec", "list", {"history": True, "since": "last tuesday"}))
    await expect_error(400, api.call("exec", "list", {"until": "soon"}))
    await expect_error(400, api.call("exec", "history", {"history": True}))

    await stack.stop_store()
    await expect_error(503, api.call("exec", "list", {"history": True}))


# ---- history.sql --------------------------------------------------------------------

REFUSED = {
    "SELECT * FROM bd_history.logs": "plain table names",
    "SELECT * FROM read_csv('/etc/passwd')": "table functions",
    "SELECT * FROM '/etc/passwd'": "unknown table",
    "COPY logs TO '/tmp/batchdeck-leak.csv'": "only SELECT",
    "ATTACH '/tmp/batchdeck-other.duckdb' AS other": "only SELECT",
    "DELETE FROM logs": "only SELECT",
    "SELECT 1; SELECT 2": "exactly one statement",
    "SELECT * FROM ingest_state": "unknown table",
    "SELECT * FROM logs WHERE execution_id IN (SELECT execution_id FROM bd_history.logs)": "plain table names",
}


async def test_history_sql_shows_each_org_only_its_own_rows_and_refuses_what_is_not_a_select(stack):
    runs = {}
    for org in (ACME, GLOBEX):
        await stack.runner(org)
        task = await stack.task(org, name=f"count-{org}", command=sh(f'for i in $(seq 1 101); do echo "{org} $i"; done'))
        runs[org] = await stack.run(task["id"], org)
    for org, execution in runs.items():
        await stack.stored(execution["id"], org)

    for org, other in ((ACME, GLOBEX), (GLOBEX, ACME)):
        async def values(text: str, params: list[Any] | None = None, org: str = org) -> list[list[Any]]:
            return [list(r.values()) for r in await stack.sql(text, params, org)]

        assert await values("SELECT DISTINCT org FROM executions") == [[org]]
        assert await values("SELECT count(*) FROM logs") == [[101]]
        assert await values("SELECT count(*) FROM logs WHERE org = ?", [other]) == [[0]]
        assert await values(f"SELECT count(*) FROM logs WHERE org = '{other}'") == [[0]]
        assert await values("SELECT count(*) FROM logs WHERE execution_id = ?", [runs[other]["id"]]) == [[0]]
        assert await values("SELECT count(*) FROM executions WHERE id = ?", [runs[other]["id"]]) == [[0]]
        union = ("SELECT org FROM executions UNION SELECT org FROM logs UNION SELECT org FROM tasks "
                 "UNION SELECT org FROM runners UNION SELECT org FROM execution_actions")
        assert await values(union) == [[org]]
        assert await values(f"SELECT count(*) FROM logs WHERE execution_id IN "
                            f"(SELECT id FROM executions WHERE org = '{other}')") == [[0]]
        assert await values("WITH everything AS (SELECT * FROM logs) SELECT DISTINCT org FROM everything") == [[org]]
        assert await values("SELECT org, runs FROM task_stats") == [[org, 1]]
        assert await values("SELECT org, runs FROM daily_runs") == [[org, 1]]
        assert await values("SELECT count(*) FROM logs WHERE msg LIKE ?", [f"{other}%"]) == [[0]]

    api = stack.api()
    for text, reason in REFUSED.items():
        error = await expect_error(400, api.call("history", "sql", {"sql": text}))
        assert reason in error.message, (text, error.message)
    assert not Path("/tmp/batchdeck-leak.csv").exists()
    # Refusals leave the store serving.
    assert await stack.sql("SELECT count(*) AS n FROM logs") == [{"n": 101}]

    # Every row of a join counts against the limit: 101 x 101 lines is over 10 000.
    error = await expect_error(400, api.call("history", "sql", {"sql": "SELECT a.idx, b.idx FROM logs a, logs b"}))
    assert "LIMIT" in error.message
    limited = await api.call("history", "sql", {"sql": "SELECT a.idx, b.idx FROM logs a, logs b LIMIT 10000"})
    assert len(limited["rows"]) == 10_000


# ---- the CLI ------------------------------------------------------------------------

LOG_LINE = re.compile(r"^\s*(\d+) +(?:\S+ ago|in \S+) (.*)$")


def printed_lines(stdout: str) -> list[tuple[int, str]]:
    """(idx, msg) of each line `batchdeck logs` printed."""
    lines = []
    for text in stdout.splitlines():
        match = LOG_LINE.match(text)
        assert match, f"not a log line: {text!r}"
        lines.append((int(match.group(1)), match.group(2)))
    return lines


async def test_batchdeck_sql_prints_a_table_json_or_csv_and_fails_on_a_refused_query(stack):
    await stack.runner()
    task = await stack.task(name="greek", command=sh("echo alpha; echo beta; echo gamma"))
    execution = await stack.run(task["id"])
    await stack.stored(execution["id"])
    query = f"SELECT idx, msg FROM logs WHERE execution_id = '{execution['id']}' ORDER BY idx"

    code, out, err = await batchdeck(stack, "sql", query)
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.strip()]
    assert rows[0] == ["idx", "msg"]
    assert rows[1:4] == [["1", "alpha"], ["2", "beta"], ["3", "gamma"]]
    assert rows[4] == ["3", "rows"]

    code, out, err = await batchdeck(stack, "sql", "--json", query)
    assert code == 0, err
    assert json.loads(out) == {"columns": ["idx", "msg"], "rows": [[1, "alpha"], [2, "beta"], [3, "gamma"]]}

    code, out, err = await batchdeck(stack, "sql", "--csv", query)
    assert code == 0, err
    assert list(csv.reader(io.StringIO(out))) == [["idx", "msg"], ["1", "alpha"], ["2", "beta"], ["3", "gamma"]]

    code, out, err = await batchdeck(stack, "sql", "DELETE FROM logs")
    assert code == 1 and out == ""
    assert "error 400" in err and "only SELECT" in err, err
    code, out, err = await batchdeck(stack, "sql", "SELECT * FROM read_csv('/etc/passwd')")
    assert code == 1 and "error 400" in err and "table functions" in err, err


async def test_batchdeck_logs_prints_each_line_once_and_follows_a_run_until_it_ends(stack):
    await stack.runner()
    task = await stack.task(name="greek", command=sh("echo alpha; echo beta; echo gamma"))
    done = await stack.run(task["id"])
    await stack.stored(done["id"])
    code, out, err = await batchdeck(stack, "logs", done["id"])
    assert code == 0, err
    assert printed_lines(out) == [(1, "alpha"), (2, "beta"), (3, "gamma")]

    ticking = await stack.task(name="ticking", command=sh('for i in $(seq 1 10); do echo "tick $i"; sleep 0.2; done'))
    running_id = (await stack.api().call("task", "start", {"id": ticking["id"]}))["execution_id"]
    assert (await stack.api().call("exec", "get", {"id": running_id}))["status"] in ("queued", "running")
    code, out, err = await batchdeck(stack, "logs", running_id, "-f", timeout=30)
    assert code == 0, err
    assert printed_lines(out) == [(i, f"tick {i}") for i in range(1, 11)]
    # It returned because the run ended, not because the stream went quiet once.
    assert (await stack.api().call("exec", "get", {"id": running_id}))["status"] == "succeeded"


async def test_batchdeck_logs_of_an_unknown_run_is_a_404_not_an_empty_log_or_a_hang(stack):
    for follow in ((), ("-f",)):
        code, out, err = await batchdeck(stack, "logs", "01NOSUCHRUN000000000000000", *follow, timeout=30)
        assert code == 1 and out == "", (follow, out, err)
        assert "error 404" in err and "'01NOSUCHRUN000000000000000' not found" in err, err


# ---- export -------------------------------------------------------------------------


async def test_batchdeck_export_writes_parquet_by_table_and_day(stack, tmp_path):
    days = {"e-old": "2026-11-20T08:00:00.000Z", "e-new": "2026-11-22T08:00:00.000Z"}
    for execution_id, queued_at in days.items():
        state = {"id": execution_id, "org": ACME, "task_id": "t", "name": "t", "status": "succeeded",
                 "queued_at": queued_at, "started_at": queued_at, "finished_at": queued_at, "duration_ms": 5,
                 "result": {"rows": 3}, "version": 3}
        await stack.js.publish(f"bd.{ACME}.evt.exec.{execution_id}.state", json.dumps(state).encode())
    await stack.publish_lines(ACME, "e-new", 4500)  # more than one page of history.sql
    await stack.publish_lines(GLOBEX, "other-org", 10)  # not ours: never exported
    await eventually(lambda: stack.sql("SELECT count(*) AS n FROM logs HAVING n = 4500"), 20.0, what="lines stored")
    await eventually(lambda: stack.sql("SELECT count(*) AS n FROM executions HAVING n = 2"), what="runs stored")

    everything, recent = tmp_path / "all", tmp_path / "recent"
    code, out, err = await batchdeck(stack, "export", "--parquet", str(everything), "--json")
    assert code == 0, err
    assert json.loads(out)["rows"]["logs"] == 4500 and json.loads(out)["rows"]["executions"] == 2
    code, _, err = await batchdeck(stack, "export", "--parquet", str(recent), "--since", "2026-11-21")
    assert code == 0, err

    def read(directory: Path, table: str, query: str) -> list[tuple[Any, ...]]:
        files = str(directory / table / "**" / "*.parquet")
        with duckdb.connect() as local:
            return local.execute(query.format(t=f"read_parquet('{files}', hive_partitioning = true)")).fetchall()

    assert read(everything, "executions", "SELECT id, CAST(day AS VARCHAR) FROM {t} ORDER BY id") == [
        ("e-new", "2026-11-22"), ("e-old", "2026-11-20")]
    assert sorted(p.name for p in (everything / "executions").iterdir()) == ["day=2026-11-20", "day=2026-11-22"]
    logs = read(everything, "logs", "SELECT count(*), count(DISTINCT idx), min(idx), max(idx), "
                                   "count(*) FILTER (WHERE org <> 'acme') FROM {t}")
    assert logs == [(4500, 4500, 1, 4500, 0)]
    assert read(everything, "executions", "SELECT result->>'rows' FROM {t} WHERE id = 'e-old'") == [("3",)]
    assert read(recent, "executions", "SELECT id FROM {t}") == [("e-new",)]

    code, _, err = await batchdeck(stack, "export", "--parquet", str(tmp_path / "x"), "--since", "yesterday")
    assert code == 2 and "not a date" in err


async def test_batch_devices_lists_runners_that_ran_the_batch_and_those_eligible_now(stack):
    gone = await stack.runner()
    task = await stack.task(name="once")
    batch = await stack.api().call("batch", "create", {
        "name": "b", "cron_expression": "0 3 * * *", "is_enabled": False, "run_on_startup": False,
        "actions": [{"task_id": task["id"]}]})
    started = await stack.api().call("batch", "start", {"id": batch["id"]})
    await stack.final(started["execution_id"])
    await stack.stored(started["execution_id"])
    await gone.stop()
    now = await stack.runner()

    devices = await stack.api().call("batch", "devices", {"id": batch["id"]})
    assert devices["ran"] == [gone.id]
    assert devices["eligible"] == [now.id]
    assert devices["items"] == sorted([gone.id, now.id])

    await stack.stop_store()  # without a store: only the runners eligible now, `ran` unknown
    devices = await stack.api().call("batch", "devices", {"id": batch["id"]})
    assert devices["ran"] is None and devices["items"] == [now.id]
