"""Roles and tenancy, enforced by the NATS server: one nats-server started from
deploy/nats/auth-server.conf (users and permissions from deploy/nats/auth.conf), the
broker, the store, a scheduler, a notifier and a runner of org `acme` on their service
users, and the org users viewer, operator and admin of `acme` (and of `default`) acting
through the API.

What a user may not do never reaches a service: the server refuses it, and the client
says so at once (403) instead of waiting for a reply that cannot come.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js.api import ConsumerConfig

from broker.client import ApiClient
from broker.connect import ConnectOptions, Denial, connect, denials_of
from broker.errors import ApiError, Forbidden
from broker.server import find_binary, free_port
from broker.service import ControlPlane
from notifier.destinations import WebhookPolicy
from notifier.service import NotifierService, NotifierSettings
from runner.service import RunnerService
from scheduler.service import SchedulerService
from store.service import StoreService

AUTH_SERVER_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "auth-server.conf"
SERVICE_USERS = ("bd-broker", "bd-store", "bd-scheduler", "bd-notifier")
ORG_USERS = tuple(f"{org}-{role}" for org in ("default", "acme") for role in ("viewer", "operator", "admin", "runner"))
PASSWORDS = {user: f"{user}-{secrets.token_hex(8)}" for user in SERVICE_USERS + ORG_USERS}
QUICK = 2.0
"""A refused request must fail well within this (seconds); the API's timeout is 10 s."""


def password_variable(user: str) -> str:
    """The environment variable auth.conf reads the user's password from: bd-broker ->
    BD_PW_BROKER, acme-viewer -> BD_PW_ACME_VIEWER."""
    return "BD_PW_" + user.removeprefix("bd-").replace("-", "_").upper()


class AuthServer:
    """nats-server as deploy/nats/auth-server.conf configures it: port, store directory
    and passwords from its environment, nothing else on its command line."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.log_file = root / "nats-server.log"
        env = {**os.environ, "NATS_PORT": str(self.port), "NATS_STORE_DIR": str(root / "jetstream")}
        env.update({password_variable(user): password for user, password in PASSWORDS.items()})
        # Its log goes to stderr: into the file, with any error in the config.
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen([find_binary(), "--config", str(AUTH_SERVER_CONF)], env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while b"Server is ready" not in (self.log_file.read_bytes() if self.log_file.exists() else b""):
            if self.process.poll() is not None or time.monotonic() > deadline:
                exited = self.process.poll() is not None
                self.stop()
                said = self.log_file.read_text() if self.log_file.exists() else ""
                pytest.fail(f"nats-server did not start from {AUTH_SERVER_CONF.name} "
                            f"({'it exited' if exited else 'not ready in time'}): {said[-2000:]}")
            time.sleep(0.02)

    def url(self, user: str) -> str:
        return f"nats://{user}:{PASSWORDS[user]}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: JetStream flushes its store
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> AuthServer:
    server = AuthServer(tmp_path_factory.mktemp("auth-nats"))
    server.wait_ready()
    yield server
    server.stop()


def inbox_of(user: str) -> str | None:
    """The inbox prefix auth.conf lets the user subscribe to (services keep nats-py's)."""
    return None if user.startswith("bd-") else f"_INBOX_{user.split('-')[0]}"


class Stack:
    """The services, each on a connection of its own service user."""

    def __init__(self) -> None:
        self.connections: dict[str, Client] = {}
        self.plane: ControlPlane | None = None
        self.store: StoreService | None = None
        self.runner: RunnerService | None = None
        self.scheduler: SchedulerService | None = None
        self.notifier: NotifierService | None = None


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(auth_server: AuthServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    stack = Stack()

    async def service_connection(user: str) -> Client:
        nc = await connect(ConnectOptions(url=auth_server.url(user), name=f"test-{user}",
                                          inbox_prefix=inbox_of(user)), service=True)
        stack.connections[user] = nc
        return nc

    try:
        broker_nc = await service_connection("bd-broker")
        stack.plane = ControlPlane(broker_nc, broker_nc.jetstream())
        await stack.plane.start()
        stack.store = StoreService(await service_connection("bd-store"),
                                   tmp_path_factory.mktemp("auth-store") / "history.duckdb")
        await stack.store.start()
        stack.runner = RunnerService(await service_connection("acme-runner"), org="acme", ack_wait=3.0, grace=1.0,
                                     drain_timeout=1.0)
        await stack.runner.start()
        stack.scheduler = SchedulerService(await service_connection("bd-scheduler"))
        await stack.scheduler.start()
        stack.notifier = NotifierService(await service_connection("bd-notifier"),
                                         NotifierSettings(webhook_secrets={"*": secrets.token_bytes(32)},
                                                          webhook_policy=WebhookPolicy.parse(["127.0.0.1"])))
        await stack.notifier.start()
        yield stack
    finally:
        if stack.notifier is not None:
            await stack.notifier.stop()
        if stack.scheduler is not None:
            await stack.scheduler.stop()
        if stack.runner is not None:
            await stack.runner.stop()
        if stack.store is not None:
            await stack.store.stop()
        if stack.plane is not None:
            await stack.plane.stop()
        for nc in stack.connections.values():
            await nc.close()


@pytest_asyncio.fixture
async def login(stack: Stack, auth_server: AuthServer) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """`await login("acme-viewer")`: a client connection of that user, as the CLI makes it
    (inbox prefix of the user's org unless `inbox_prefix` says otherwise)."""
    opened: list[Client] = []

    async def open_(user: str, inbox_prefix: str | None = "") -> Client:
        prefix = inbox_of(user) if inbox_prefix == "" else inbox_prefix
        nc = await connect(ConnectOptions(url=auth_server.url(user), name=f"test-{user}", inbox_prefix=prefix))
        opened.append(nc)
        return nc

    yield open_
    for nc in opened:
        await nc.close()


async def refused(call: Awaitable[Any], subject: str, operation: str = "publish") -> Forbidden:
    """Await an API call the server must refuse: a Forbidden naming the operation and the
    subject, long before the API's timeout."""
    started = time.monotonic()
    with pytest.raises(ApiError) as caught:
        await call
    elapsed = time.monotonic() - started
    assert isinstance(caught.value, Forbidden) and caught.value.code == 403, caught.value
    assert f"the NATS server refused this user {operation} on {subject}" in caught.value.message, caught.value.message
    assert elapsed < QUICK, f"refused after {elapsed:.2f} s"
    return caught.value


async def next_denial(nc: Client, operation: str, subject: str, timeout: float = QUICK) -> Denial:
    """The server's report that it refused `operation` on `subject` (already made or made next)."""
    denials = denials_of(nc)
    assert denials is not None

    def match(denial: Denial) -> bool:
        return denial.is_for(operation, subject)

    with denials.watch(match) as future:
        found = denials.latest(match)
        return found if found is not None else await asyncio.wait_for(future, timeout)


async def answer_webhook(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bodies: asyncio.Queue[bytes]):
    """A webhook receiver that takes everything: 200, and the body to `bodies`."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    await bodies.put(await reader.readexactly(length))
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


SLEEPER = {"name": "sleeper", "command": ["sleep", "30"]}


# ---- viewer ---------------------------------------------------------------------------


async def test_viewer_reads_the_org_and_follows_its_events(login):
    admin = ApiClient(await login("acme-admin"), "acme")
    viewer_nc = await login("acme-viewer")
    viewer = ApiClient(viewer_nc, "acme")
    task = await admin.call("task", "create", {"id": new_id("read"), **SLEEPER})

    assert (await viewer.call("task", "get", {"id": task["id"]}))["name"] == "sleeper"
    assert task["id"] in [t["id"] for t in (await viewer.call("task", "list", {"per_page": 1000}))["items"]]
    await viewer.call("exec", "list", {})
    await viewer.call("runner", "list", {})

    events: asyncio.Queue[Any] = asyncio.Queue()
    await viewer_nc.subscribe(f"bd.acme.evt.def.task.{task['id']}", cb=events.put)
    await viewer_nc.flush()
    await admin.call("task", "update", {"id": task["id"], "description": "seen by the viewer"})
    event = await asyncio.wait_for(events.get(), 5)
    assert json.loads(event.data)["definition"]["description"] == "seen by the viewer"
    assert not denials_of(viewer_nc).recent


async def test_viewer_changes_are_refused_by_the_server(login):
    admin = ApiClient(await login("acme-admin"), "acme")
    viewer = ApiClient(await login("acme-viewer"), "acme")
    task = await admin.call("task", "create", {"id": new_id("keep"), **SLEEPER})

    await refused(viewer.call("task", "start", {"id": task["id"]}), "bd.acme.api.task.start")
    await refused(viewer.call("task", "delete", {"id": task["id"], "force": True}), "bd.acme.api.task.delete")
    await refused(viewer.call("history", "sql", {"sql": "SELECT 1"}), "bd.acme.api.history.sql")
    await refused(viewer.call("task", "update", {"id": task["id"], "name": "hijacked"}), "bd.acme.api.task.update")

    # nothing reached the broker: the task is as it was and never ran
    kept = await admin.call("task", "get", {"id": task["id"]})
    assert kept["deleted_at"] is None and kept["name"] == "sleeper" and kept["version"] == task["version"]
    assert (await admin.call("exec", "list", {"filter": {"task_id": task["id"]}}))["total"] == 0


async def test_viewer_cannot_reach_another_org(login):
    viewer_nc = await login("acme-viewer")
    other = ApiClient(viewer_nc, "default")
    await refused(other.call("task", "list", {}), "bd.default.api.task.list")
    await refused(other.call("exec", "get", {"id": "anything"}), "bd.default.api.exec.get")

    received: list[Any] = []

    async def keep(msg: Any) -> None:
        received.append(msg)

    await viewer_nc.subscribe("bd.default.>", cb=keep)
    await next_denial(viewer_nc, "subscribe", "bd.default.>")
    default_admin = ApiClient(await login("default-admin"), "default")
    task = await default_admin.call("task", "create", {"id": new_id("theirs"), **SLEEPER})
    await default_admin.call("task", "update", {"id": task["id"], "description": "not for acme"})
    await viewer_nc.flush()
    await asyncio.sleep(0.2)
    assert received == []


async def test_viewer_jetstream_reads_are_confined_to_the_org(login, stack: Stack):
    admin = ApiClient(await login("acme-admin"), "acme")
    task = await admin.call("task", "create", {"id": new_id("js"), **SLEEPER})
    viewer_nc = await login("acme-viewer")
    js = viewer_nc.jetstream(timeout=QUICK)

    # A consumer that carries its filter in the create subject is allowed on the org's events ...
    events: asyncio.Queue[Any] = asyncio.Queue()
    sub = await js.subscribe(f"bd.acme.evt.def.task.{task['id']}", stream="BD_EVENTS", cb=events.put,
                             ordered_consumer=True, config=ConsumerConfig(name=f"viewer_{uuid.uuid4().hex}"))
    assert json.loads((await asyncio.wait_for(events.get(), 5)).data)["id"] == task["id"]
    await sub.unsubscribe()
    # ... and on the org's keys, as is a direct get of one of them.
    entry = await viewer_nc.request(f"$JS.API.DIRECT.GET.KV_bd_tasks.$KV.bd_tasks.acme.{task['id']}", b"",
                                    timeout=QUICK)
    assert json.loads(entry.data)["id"] == task["id"]

    attempts = [
        # another org's events
        (lambda: js.subscribe("bd.default.evt.>", stream="BD_EVENTS", ordered_consumer=True,
                      config=ConsumerConfig(name=f"viewer_{uuid.uuid4().hex}")), "$js.api.consumer.create.bd_events."),
        # nats-py's own ordered consumer: the filter is not in the subject, so it could read any org
        (lambda: js.subscribe("bd.acme.evt.>", stream="BD_EVENTS", ordered_consumer=True),
         "$js.api.consumer.create.bd_events"),
        # re-pointing the store's durable consumer (a create with its name would update it)
        (lambda: js.add_consumer("BD_EVENTS", ConsumerConfig(name="store_history", filter_subject="bd.acme.evt.>")),
         "$js.api.consumer.create.bd_events.store_history.bd.acme.evt.>"),
        # a KV watch (nats-py reads the bucket's stream info first, and any org's keys from it)
        (lambda: js.key_value("bd_tasks"), "$js.api.stream.info.kv_bd_tasks"),
        # another org's key
        (lambda: viewer_nc.request("$JS.API.DIRECT.GET.KV_bd_tasks.$KV.bd_tasks.default.x", b"", timeout=QUICK),
         "$js.api.direct.get.kv_bd_tasks.$kv.bd_tasks.default.x"),
    ]
    denials = denials_of(viewer_nc)
    for attempt, subject in attempts:
        # The attempt itself would time out; the server's report comes at once.
        with denials.watch(lambda d, s=subject: d.operation == "publish" and d.subject.startswith(s)) as report:
            pending = asyncio.ensure_future(attempt())
            await asyncio.wait({pending, report}, timeout=QUICK, return_when=asyncio.FIRST_COMPLETED)
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
            assert report.done(), (subject, list(denials.recent))
    info = await stack.connections["bd-broker"].jetstream().consumer_info("BD_EVENTS", "store_history")
    assert info.config.filter_subject == "bd.*.evt.>"


# ---- operator and admin -----------------------------------------------------------------


async def test_operator_starts_and_cancels_but_cannot_define(login, stack: Stack):
    admin_nc = await login("acme-admin")
    admin = ApiClient(admin_nc, "acme")
    operator = ApiClient(await login("acme-operator"), "acme")
    hooks: asyncio.Queue[bytes] = asyncio.Queue()
    webhook = await asyncio.start_server(lambda r, w: answer_webhook(r, w, hooks), "127.0.0.1", 0)
    hook_url = f"http://127.0.0.1:{webhook.sockets[0].getsockname()[1]}/hook"
    notifications: asyncio.Queue[Any] = asyncio.Queue()
    await admin_nc.subscribe("bd.acme.evt.notify.*", cb=notifications.put)
    task = await admin.call("task", "create", {"id": new_id("op"), **SLEEPER,
                                               "notify": {"on": "always", "recipients": [hook_url]}})

    execution_id = (await operator.call("task", "start", {"id": task["id"]}))["execution_id"]
    deadline = time.monotonic() + 10
    while (await operator.call("exec", "get", {"id": execution_id}))["status"] != "running":  # on acme's runner
        assert time.monotonic() < deadline, "the runner did not start the run"
        await asyncio.sleep(0.05)
    # what a runner given a copy of the run asks its runner: the org's runner user may ask, and answer
    held = await (await login("acme-runner")).request(f"bd.acme.ctl.runner.{stack.runner.id}.holds",
                                                        json.dumps({"execution_id": execution_id}).encode(), timeout=5)
    assert json.loads(held.data) == {"runner_id": stack.runner.id, "execution_id": execution_id, "held": True,
                                     "attempt": 1}
    assert (await operator.call("exec", "cancel", {"id": execution_id}))["acknowledged"] == "ok"
    while (execution := await operator.call("exec", "get", {"id": execution_id}))["status"] == "running":
        assert time.monotonic() < deadline, "the run was not canceled"
        await asyncio.sleep(0.05)
    assert execution["status"] == "canceled"
    # the notifier, on its own service user, told the webhook and recorded it
    assert json.loads(await asyncio.wait_for(hooks.get(), 10))["id"] == execution_id
    notification = json.loads((await asyncio.wait_for(notifications.get(), 10)).data)
    assert notification["execution_id"] == execution_id and notification["status"] == "sent"
    webhook.close()

    await refused(operator.call("task", "create", {"id": new_id("op"), **SLEEPER}), "bd.acme.api.task.create")
    await refused(operator.call("task", "delete", {"id": task["id"]}), "bd.acme.api.task.delete")
    await refused(operator.call("history", "sql", {"sql": "SELECT 1"}), "bd.acme.api.history.sql")
    assert (await admin.call("task", "get", {"id": task["id"]}))["deleted_at"] is None


async def test_admin_defines_deletes_and_queries(login):
    admin = ApiClient(await login("acme-admin"), "acme")
    task = await admin.call("task", "create", {"id": new_id("adm"), **SLEEPER})
    updated = await admin.call("task", "update", {"id": task["id"], "retries": 2})
    assert updated["retries"] == 2
    assert (await admin.call("task", "delete", {"id": task["id"]}))["deleted"] == [{"kind": "task", "id": task["id"]}]
    rows = await admin.call("history", "sql", {"sql": "SELECT 42 AS answer"})
    assert rows["rows"] == [[42]]
    await refused(ApiClient(admin.nc, "default").call("task", "list", {}), "bd.default.api.task.list")


# ---- reply inboxes ----------------------------------------------------------------------


async def test_no_user_reads_the_replies_of_another_org(login):
    # acme's viewer, pretending to be default's for its replies: the server refuses the
    # reply subscription, and the client says so at once
    thief = await login("acme-viewer", inbox_prefix="_INBOX_default")
    error = await refused(ApiClient(thief, "acme").call("task", "list", {}), "_inbox_default.", "subscribe")
    assert "--inbox-prefix" in error.message
    # every later request fails before it is sent
    await refused(ApiClient(thief, "acme").call("task", "list", {}), "_inbox_default.", "subscribe")

    # nor can it listen on the services' inbox, nor on another org's
    listener = await login("acme-viewer")
    for subject in ("_INBOX.>", "_INBOX_default.>"):
        await listener.subscribe(subject)
        await next_denial(listener, "subscribe", subject)
    # its own org's inbox works
    await ApiClient(listener, "acme").call("task", "list", {})


# ---- the command line -------------------------------------------------------------------


async def test_cli_says_the_server_refused_the_viewer(auth_server: AuthServer, stack: Stack):
    env = {**os.environ, "BATCHDECK_INBOX_PREFIX": "_INBOX_acme"}
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchdeck", "task", "start", "X", "--org", "acme",
        "--nats", auth_server.url("acme-viewer"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    elapsed = time.monotonic() - started
    assert process.returncode == 1, (out, err)
    assert "error 403" in err.decode() and "refused this user publish on bd.acme.api.task.start" in err.decode(), err
    assert elapsed < 8, f"took {elapsed:.1f} s (the API timeout is 10 s)"


# ---- the dashboard ----------------------------------------------------------------------


async def test_a_viewers_dashboard_lists_the_orgs_batches_and_follows_changes(auth_server: AuthServer, stack: Stack,
                                                                              login):
    """A viewer may not watch the KV buckets (that would read every org): the dashboard
    falls back to the API's lists and the org's definition events, and says nothing."""
    from tui.app import BatchdeckApp  # Textual loads for this test only

    admin = ApiClient(await login("acme-admin"), "acme")
    task = await admin.call("task", "create", {"name": f"t-{uuid.uuid4().hex[:6]}", "command": ["true"]})
    first = await admin.call("batch", "create", {"name": "Shown at start", "cron_expression": "0 3 * * *",
                                                 "is_enabled": False, "run_on_startup": False,
                                                 "actions": [{"task_id": task["id"]}]})
    options = ConnectOptions(url=auth_server.url("acme-viewer"), name="test-tui", inbox_prefix="_INBOX_acme")
    async with BatchdeckApp(options, "acme").run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + 20
        app = pilot.app
        while not (app.live is not None and first["id"] in app.live.batches and task["id"] in app.live.tasks):
            assert time.monotonic() < deadline, [n.message for n in app._notifications]
            await pilot.pause(0.1)
        later = await admin.call("batch", "create", {"name": "Made later", "cron_expression": "0 4 * * *",
                                                     "is_enabled": False, "run_on_startup": False,
                                                     "actions": [{"task_id": task["id"]}]})
        await admin.call("batch", "delete", {"id": first["id"]})
        while not (later["id"] in app.live.batches and first["id"] not in app.live.batches):
            assert time.monotonic() < deadline, sorted(app.live.batches)
            await pilot.pause(0.1)
        assert not [n.message for n in app._notifications if "cannot" in str(n.message)]
    await admin.call("batch", "delete", {"id": later["id"]})
    await admin.call("task", "delete", {"id": task["id"]})


# ---- the services' own permissions ------------------------------------------------------


async def test_the_service_users_were_never_refused(stack: Stack):
    for user, nc in stack.connections.items():
        assert not denials_of(nc).recent, (user, list(denials_of(nc).recent))
