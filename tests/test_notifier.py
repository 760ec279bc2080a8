"""The notifier end to end: real runs on the session's nats-server and broker, a real
SMTP server (aiosmtpd) and a real HTTP server in this process, the notifier in-process
on a connection of its own, serving the test's org only (a consumer of its own).

Each test counts what arrived: one email and one POST per recipient and run, never one
per failed try, never twice after a restart.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from nats.js.errors import KeyNotFoundError, NotFoundError

from broker import codec, streams, subjects
from broker.client import ApiClient
from broker.server import EmbeddedServer, free_port
from broker.timestamps import now_iso, to_iso
from broker.types import Execution, Notification
from notifier import webhook
from notifier.claims import delivery_key, target_key
from notifier.email import SmtpSettings
from notifier.destinations import WebhookPolicy
from notifier.service import NotifierService, NotifierSettings

LOOPBACK = WebhookPolicy.parse(["127.0.0.1"])
"""The test receivers listen on loopback, which webhooks may not reach by default."""
from store.service import StoreService

SECRET = b"test-webhook-secret-0123456789"
OPS = "ops@example.com"
FAILING = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25; "
                       "do echo \"line $i\"; done; exit 3"]


async def eventually(probe: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# ---- the receivers ---------------------------------------------------------------------


class Inbox:
    """aiosmtpd handler: every message it accepts, parsed."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.rcpts: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        self.rcpts.append(list(envelope.rcpt_tos))
        return "250 OK"

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [m for m, rcpts in zip(self.messages, self.rcpts, strict=True) if address in rcpts]


class Hook:
    """A local HTTP server; every POST it got (path, headers, body); answers `status`."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.status = 204
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.posts.append((self.path, dict(self.headers.items()), body))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[tuple[str, dict[str, str], bytes]]:
        return [post for post in self.posts if post[0] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def inbox() -> Any:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    handler.port = controller.port
    yield handler
    controller.stop()


@pytest.fixture
def hook() -> Any:
    server = Hook()
    yield server
    server.close()


# ---- the notifier ----------------------------------------------------------------------


class Notifiers:
    """`await notifiers.start(**settings)` runs a NotifierService for the test's org on a
    connection of its own; all are stopped at teardown, and the org's consumer removed."""

    def __init__(self, server: EmbeddedServer, org: str, inbox_port: int | None) -> None:
        self.server = server
        self.org = org
        self.inbox_port = inbox_port
        self.running: list[tuple[NotifierService, Any]] = []

    def settings(self, **overrides: Any) -> NotifierSettings:
        smtp = SmtpSettings.from_url(f"smtp://127.0.0.1:{self.inbox_port}", "batchdeck@example.com") \
            if self.inbox_port else None
        base = dict(smtp=smtp, webhook_secrets={self.org: SECRET}, webhook_policy=LOOPBACK, max_attempts=3,
                    retry_backoff=0.05,
                    webhook_timeout=2.0, org=self.org, lease=30.0)
        return NotifierSettings(**{**base, **overrides})

    async def start(self, name: str | None = None, **overrides: Any) -> NotifierService:
        nc = await nats.connect(self.server.url, name="test-notifier")
        service = NotifierService(nc, self.settings(**overrides), name)
        await service.start()
        self.running.append((service, nc))
        return service

    async def stop(self, service: NotifierService) -> None:
        for entry in list(self.running):
            if entry[0] is service:
                self.running.remove(entry)
                await service.stop(timeout=5.0)
                await entry[1].close()


@pytest_asyncio.fixture
async def notifiers(nats_server, broker, nc, org, inbox) -> AsyncIterator[Notifiers]:
    pool = Notifiers(nats_server, org, inbox.port)
    yield pool
    for service, _ in list(pool.running):
        await pool.stop(service)
    try:
        await nc.jetstream().delete_consumer(streams.EVENTS, f"notifier_{org}")
    except NotFoundError:
        pass


async def deliveries(nc: Any, org: str, execution_id: str, targets: list[str]) -> list[Notification]:
    """The records in KV bd_notifications of the execution's deliveries to `targets`."""
    kv = await nc.jetstream().key_value(streams.NOTIFICATIONS_BUCKET)
    records = []
    for target in targets:
        try:
            entry = await kv.get(f"{org}.{execution_id}.{target_key(target)}")
        except KeyNotFoundError:
            continue
        records.append(codec.decode(entry.value, Notification))
    return records


async def settled(nc: Any, org: str, execution_id: str, targets: list[str]) -> list[Notification]:
    """The deliveries to every one of `targets`, once none is `sending`."""
    async def probe() -> list[Notification]:
        records = await deliveries(nc, org, execution_id, targets)
        return records if len(records) == len(targets) and all(r.status != "sending" for r in records) else []

    return await eventually(probe, f"settled deliveries of {execution_id} to {targets}")


# ---- tests ---------------------------------------------------------------------------


async def test_a_failing_task_sends_one_email_and_one_signed_post_after_its_last_retry(
        notifiers, inbox, hook, api, make_task, runner_factory, start_task, wait_exec, nc, org):
    await notifiers.start()
    await runner_factory()
    task = await make_task(name="Nightly export", command=FAILING, retries=2, retry_backoff_sec=0,
                           notify={"on": "failure", "recipients": [OPS, f"{hook.url}/chat"]})
    execution_id = await start_task(task["id"])
    execution = await wait_exec(execution_id)
    assert execution["status"] == "failed"

    records = await settled(nc, org, execution_id, [OPS, f"{hook.url}/chat"])
    assert {(r.channel, r.target, r.status, r.attempts) for r in records} == {
        ("email", OPS, "sent", 1), ("webhook", f"{hook.url}/chat", "sent", 1)}
    await asyncio.sleep(1.0)  # room for a wrong second message
    assert len(inbox.to(OPS)) == 1 and len(hook.to("/chat")) == 1

    mail = inbox.to(OPS)[0]
    assert mail["Subject"] == f"[batchdeck] failed: Nightly export ({org})"
    text = mail.get_content().replace("\r\n", "\n")
    # the last 20 lines of the log (of its third try): up to the runner's closing line
    assert "line 7\n" in text and "line 25\n" in text and "line 6\n" not in text
    assert "action 0 failed: exited with code 3" in text
    assert execution_id in text and " 3" in text  # the exit code
    assert f"batchdeck logs {execution_id} --org {org}" in text

    _, headers, body = hook.to("/chat")[0]
    assert webhook.verify(SECRET, body, headers[webhook.SIGNATURE_HEADER])
    assert not webhook.verify(b"another secret of the same size!", body, headers[webhook.SIGNATURE_HEADER])
    posted = codec.decode(body, Execution)
    assert (posted.id, posted.status) == (execution_id, "failed")
    assert headers[webhook.EVENT_HEADER] == "execution.failed"
    # retries ran inside the one execution: its actions tried three times, one report
    assert execution["actions"][0]["exit_code"] == 3


async def test_failure_rules_ignore_successes_and_always_rules_report_them(
        notifiers, inbox, hook, make_task, runner_factory, start_task, wait_exec, nc, org):
    await notifiers.start()
    await runner_factory()
    quiet = await make_task(name="quiet", notify={"on": "failure", "recipients": [f"{hook.url}/quiet"]})
    chatty = await make_task(name="chatty", notify={"on": "always", "recipients": [f"{hook.url}/always"]})
    quiet_run = await start_task(quiet["id"])
    assert (await wait_exec(quiet_run))["status"] == "succeeded"
    chatty_run = await start_task(chatty["id"])
    assert (await wait_exec(chatty_run))["status"] == "succeeded"

    await settled(nc, org, chatty_run, [f"{hook.url}/always"])
    await eventually(lambda: hook.to("/always"), "the always-rule POST")
    assert codec.decode(hook.to("/always")[0][2], Execution).status == "succeeded"
    assert hook.to("/quiet") == [] and await deliveries(nc, org, quiet_run, [f"{hook.url}/quiet"]) == []


async def test_a_batch_rule_and_its_tasks_rules_send_one_message_per_recipient(
        notifiers, inbox, hook, api, make_task, make_batch, runner_factory, wait_exec, nc, org):
    await notifiers.start()
    await runner_factory()
    broken = await make_task(name="broken", command=["sh", "-c", "exit 1"],
                             notify={"recipients": [OPS, f"{hook.url}/task-owner"]})
    batch = await make_batch([broken["id"]], name="Nightly report",
                             notify={"on": "failure", "recipients": [OPS, f"{hook.url}/team"]})
    execution_id = (await api.call("batch", "start", {"id": batch["id"]}))["execution_id"]
    assert (await wait_exec(execution_id))["status"] == "failed"

    records = {r.target: r for r in await settled(nc, org, execution_id, [OPS, f"{hook.url}/task-owner", f"{hook.url}/team"])}
    assert set(records) == {OPS, f"{hook.url}/task-owner", f"{hook.url}/team"}
    assert records[OPS].rules == [f"batch:{batch['id']}", f"task:{broken['id']}"]
    await asyncio.sleep(0.5)
    assert len(inbox.to(OPS)) == 1
    assert inbox.to(OPS)[0]["Subject"] == f"[batchdeck] failed: Nightly report ({org})"
    assert len(hook.to("/task-owner")) == 1 and len(hook.to("/team")) == 1


async def test_an_unreachable_webhook_is_retried_then_recorded_failed(
        notifiers, make_task, runner_factory, start_task, wait_exec, nc, org):
    events = await nc.jetstream().subscribe(subjects.notify_event(org, "*"), ordered_consumer=True)
    await notifiers.start(max_attempts=3, retry_backoff=0.05)
    await runner_factory()
    nowhere = f"http://127.0.0.1:{free_port()}/hook"
    task = await make_task(name="doomed", command=["false"], notify={"recipients": [nowhere]})
    execution_id = await start_task(task["id"])
    await wait_exec(execution_id)

    (record,) = await settled(nc, org, execution_id, [nowhere])
    assert (record.status, record.attempts) == ("failed", 3)
    assert record.error and "127.0.0.1" in record.error
    event = codec.decode((await events.next_msg(timeout=10)).data, Notification)
    assert (event.execution_id, event.target, event.status, event.attempts) == (execution_id, nowhere, "failed", 3)
    await events.unsubscribe()


async def test_a_refused_post_is_not_retried(notifiers, hook, make_task, runner_factory, start_task, wait_exec,
                                            nc, org):
    hook.status = 404
    await notifiers.start(max_attempts=5)
    await runner_factory()
    task = await make_task(name="doomed", command=["false"], notify={"recipients": [f"{hook.url}/gone"]})
    execution_id = await start_task(task["id"])
    (record,) = await settled(nc, org, execution_id, [f"{hook.url}/gone"])
    assert (record.status, record.attempts) == ("failed", 1) and "404" in (record.error or "")
    assert len(hook.to("/gone")) == 1


async def test_a_restarted_notifier_sends_nothing_twice(
        notifiers, inbox, hook, make_task, runner_factory, start_task, wait_exec, nc, org):
    first = await notifiers.start(name="first")
    await runner_factory()
    task = await make_task(name="flaky", command=["false"], notify={"recipients": [OPS, f"{hook.url}/chat"]})
    execution_id = await start_task(task["id"])
    final = await wait_exec(execution_id)
    await settled(nc, org, execution_id, [OPS, f"{hook.url}/chat"])
    await notifiers.stop(first)

    # The run's final state comes again (as after a crash before the ack) to a new instance.
    await nc.jetstream().publish(subjects.exec_event(org, execution_id, "state"), json.dumps(final).encode())
    second = await notifiers.start(name="second")
    await eventually(lambda: second.counters.final >= 1, "the second notifier to read the state again")
    await asyncio.sleep(0.5)
    assert len(inbox.to(OPS)) == 1 and len(hook.to("/chat")) == 1
    assert {r.notifier for r in await deliveries(nc, org, execution_id, [OPS, f"{hook.url}/chat"])} == {"first"}


async def test_a_delivery_left_sending_by_a_dead_instance_is_taken_over_once(
        notifiers, inbox, make_task, runner_factory, start_task, wait_exec, nc, org):
    """A notifier killed mid-delivery leaves its claim `sending`: once the lease has run
    out another instance finishes it; before that, it leaves it alone."""
    await runner_factory()
    task = await make_task(name="orphan", command=["false"], notify={"recipients": [OPS]})
    execution_id = await start_task(task["id"])
    final = await wait_exec(execution_id)
    kv = await nc.jetstream().key_value(streams.NOTIFICATIONS_BUCKET)
    stale = Notification(org=org, execution_id=execution_id, channel="email", target=OPS, rules=[f"task:{task['id']}"],
                         execution_status="failed", status="sending", attempts=1, notifier="dead",
                         created_at=to_iso_seconds_ago(120), updated_at=to_iso_seconds_ago(120))
    await kv.put(delivery_key(stale), codec.encode(stale))

    await notifiers.start(name="heir", lease=60.0)
    await nc.jetstream().publish(subjects.exec_event(org, execution_id, "state"), json.dumps(final).encode())
    (record,) = await settled(nc, org, execution_id, [OPS])
    assert (record.status, record.notifier, record.attempts) == ("sent", "heir", 2)
    assert len(inbox.to(OPS)) == 1


async def test_a_fresh_claim_of_another_instance_is_left_to_it(
        notifiers, inbox, make_task, runner_factory, start_task, wait_exec, nc, org):
    await runner_factory()
    task = await make_task(name="held", command=["false"], notify={"recipients": [OPS]})
    execution_id = await start_task(task["id"])
    final = await wait_exec(execution_id)
    kv = await nc.jetstream().key_value(streams.NOTIFICATIONS_BUCKET)
    held = Notification(org=org, execution_id=execution_id, channel="email", target=OPS, execution_status="failed",
                        notifier="busy-one", created_at=now_iso(), updated_at=now_iso())
    await kv.put(delivery_key(held), codec.encode(held))

    service = await notifiers.start(name="polite", lease=60.0)
    await nc.jetstream().publish(subjects.exec_event(org, execution_id, "state"), json.dumps(final).encode())
    await eventually(lambda: service.counters.final >= 1, "the state read")
    await asyncio.sleep(0.5)
    assert inbox.to(OPS) == []
    (record,) = await deliveries(nc, org, execution_id, [OPS])
    assert (record.status, record.notifier) == ("sending", "busy-one")


async def test_the_store_records_every_delivery_for_sql(
        nats_server, notifiers, inbox, hook, make_task, runner_factory, start_task, wait_exec, nc, org,
        tmp_path: Path):
    store_nc = await nats.connect(nats_server.url, name="test-store")
    store = StoreService(store_nc, tmp_path / "history.duckdb")
    await store.start()
    try:
        await notifiers.start()
        await runner_factory()
        task = await make_task(name="nightly", command=["false"], notify={"recipients": [OPS, f"{hook.url}/chat"]})
        execution_id = await start_task(task["id"])
        await wait_exec(execution_id)
        await settled(nc, org, execution_id, [OPS, f"{hook.url}/chat"])
        api = ApiClient(nc, org)
        sql = ("SELECT n.channel, n.target, n.status, n.attempts, e.status AS run_status FROM notifications n "
               "JOIN executions e ON e.id = n.execution_id WHERE n.execution_id = ? ORDER BY n.channel")

        async def rows() -> list[list[Any]]:
            reply = await api.call("history", "sql", {"sql": sql, "params": [execution_id]})
            return reply["rows"] if len(reply["rows"]) == 2 else []

        assert await eventually(rows, "both deliveries in history") == [
            ["email", OPS, "sent", 1, "failed"], ["webhook", f"{hook.url}/chat", "sent", 1, "failed"]]
    finally:
        await store.stop()
        await store_nc.close()


async def test_recipients_must_be_addresses_or_urls(api):
    from broker.errors import ApiError

    for bad in ("not an address", "ftp://example.com/x", "https://user:pw@example.com/hook", "a@b"):
        with pytest.raises(ApiError) as refused:
            await api.call("task", "create", {"name": "x", "command": ["true"], "notify": {"recipients": [bad]}})
        assert refused.value.code == 400 and "neither an email address" in refused.value.message
    with pytest.raises(ApiError) as refused:
        await api.call("batch", "create", {"name": "b", "cron_expression": "0 3 * * *", "is_enabled": False,
                                           "run_on_startup": False, "actions": [{"task_id": "nope"}],
                                           "notify": {"recipients": ["bad"]}})
    assert refused.value.code == 400


def to_iso_seconds_ago(seconds: float) -> str:
    from datetime import datetime, timedelta, timezone

    return to_iso(datetime.now(timezone.utc) - timedelta(seconds=seconds))


def test_up_with_smtp_and_a_webhook_secret_tells_of_a_failing_batch_once_and_sql_shows_it(
        tmp_path: Path, inbox, hook):
    """The issue's "done when": a failing batch puts one email in the inbox and one signed
    POST on the webhook, and `batchdeck sql` shows both deliveries; through `up` and the CLI."""
    from test_cli import _start_up, _stop, _wait_for_api, cli

    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    up = _start_up(tmp_path / "data", port, "--runners", "1", "--smtp-url", f"smtp://127.0.0.1:{inbox.port}",
                   "--smtp-from", "batchdeck@example.com", "--webhook-secret", SECRET.decode(),
                   "--webhook-allow", "127.0.0.1")
    try:
        assert _wait_for_api(up, url).returncode == 0
        steps = (("task", "create", "--name", "export", "--id", "export", "--", "sh", "-c", "echo exporting; exit 4"),
                 ("batch", "create", "--name", "Nightly batch", "--id", "nightly", "--cron", "0 3 * * *",
                  "--task", "export", "--notify", OPS, "--notify", f"{hook.url}/chat"),
                 ("batch", "start", "nightly"))
        for args in steps:
            done = cli(*args, url=url, org="default")
            assert done.returncode == 0, done.stderr

        deadline = time.monotonic() + 30
        while not (inbox.to(OPS) and hook.to("/chat")) and time.monotonic() < deadline:
            time.sleep(0.1)
        sql = "SELECT channel, target, status FROM notifications ORDER BY channel"
        rows: list[Any] = []
        while len(rows) < 2 and time.monotonic() < deadline:
            rows = json.loads(cli("sql", "--json", sql, url=url, org="default").stdout)["rows"]
            time.sleep(0.2)
        time.sleep(0.5)
        assert len(inbox.to(OPS)) == 1 and len(hook.to("/chat")) == 1
        assert inbox.to(OPS)[0]["Subject"] == "[batchdeck] failed: Nightly batch (default)"
        assert f"--nats {url}" in inbox.to(OPS)[0].get_content()
        _, headers, body = hook.to("/chat")[0]
        assert webhook.verify(SECRET, body, headers[webhook.SIGNATURE_HEADER])
        assert rows == [["email", OPS, "sent"], ["webhook", f"{hook.url}/chat", "sent"]], rows
    finally:
        code, _ = _stop(up)
    assert code == 0
