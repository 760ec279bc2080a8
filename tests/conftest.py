"""Shared fixtures: a real nats-server (free port, temp store) and a real broker.

One server and one broker serve the whole session; every test gets an org of its
own, so tests are isolated the way tenants are.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from broker.client import ApiClient
from broker.server import EmbeddedServer
from broker.service import ControlPlane
from runner.service import RunnerService, consumer_name


def pytest_configure(config: pytest.Config) -> None:
    # A command without --nats finds the system `batchdeck up` recorded in the default data
    # dir: in tests that must never be the developer's own (tests name their dirs).
    os.environ["BATCHDECK_DATA_DIR"] = tempfile.mkdtemp(prefix="batchdeck-no-context-")


STUCK_AFTER = float(os.environ.get("BATCHDECK_TEST_STUCK_AFTER", "150"))
"""Seconds after which a test still running prints the stack of every asyncio task."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A test that hangs on an await shows where: a thread stack dump (faulthandler) only
    shows the idle event loop, so the loop itself is asked to print its tasks."""
    timer = threading.Timer(STUCK_AFTER, lambda: [loop.call_soon_threadsafe(_print_tasks, item)
                                                  for loop in _SESSION_LOOP])
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


_SESSION_LOOP: list[asyncio.AbstractEventLoop] = []


@pytest_asyncio.fixture(scope="session", loop_scope="session", autouse=True)
async def _session_loop() -> None:
    """Remembers the loop the async tests run on (one per session), for `_print_tasks`."""
    _SESSION_LOOP.append(asyncio.get_running_loop())


def _print_tasks(item: pytest.Item) -> None:
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    print(f"[stuck] {item.nodeid} still runs after {STUCK_AFTER:g} s; its {len(tasks)} asyncio tasks:", file=out)
    for task in tasks:
        task.print_stack(limit=12, file=out)
    capture = item.config.pluginmanager.get_plugin("capturemanager")
    reporter = item.config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        return
    with capture.global_and_fixture_disabled():  # to the terminal now, not to the test's captured output
        reporter.write_line("")
        for line in out.getvalue().splitlines():
            reporter.write_line(line)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedServer:
    server = EmbeddedServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def broker(nats_server: EmbeddedServer) -> AsyncIterator[ControlPlane]:
    nc = await nats.connect(nats_server.url, name="test-broker")
    plane = ControlPlane(nc, nc.jetstream())
    await plane.start()
    yield plane
    await plane.stop()
    await nc.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nc(nats_server: EmbeddedServer) -> AsyncIterator[Client]:
    """A plain client connection, as another service would have."""
    client = await nats.connect(nats_server.url, name="test-client")
    yield client
    await client.close()


@pytest.fixture
def org() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def api(broker: ControlPlane, nc: Client, org: str) -> ApiClient:
    """The API client of this test's org."""
    return ApiClient(nc, org)


TASK = {"name": "hello", "command": ["echo", "hello"]}


@pytest.fixture
def make_task(api: ApiClient) -> Callable[..., Awaitable[dict[str, Any]]]:
    """`await make_task(name=..., ...)` creates a command task (defaults: echo hello)."""

    async def create(**fields: Any) -> dict[str, Any]:
        return await api.call("task", "create", {**TASK, **fields})

    return create


@pytest.fixture
def make_batch(api: ApiClient, make_task) -> Callable[..., Awaitable[dict[str, Any]]]:
    """`await make_batch(task_ids=[...], **fields)`; makes a task when none is given."""

    async def create(task_ids: list[str] | None = None, **fields: Any) -> dict[str, Any]:
        if task_ids is None:
            task_ids = [(await make_task())["id"]]
        body = {
            "name": "nightly",
            "cron_expression": "0 3 * * *",
            "is_enabled": False,
            "run_on_startup": False,
            "actions": [{"task_id": t} for t in task_ids],
            **fields,
        }
        return await api.call("batch", "create", body)

    return create


# ---- runners --------------------------------------------------------------------------

FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "timed_out", "lost", "skipped"})


class RunnerFactory:
    """`await runner_factory(**options)` starts an in-process RunnerService for the test's
    org, on a NATS connection of its own (as a separate runner process would have), with
    small ack_wait / grace / drain_timeout; `await runner_factory.stop(runner)` stops one
    early. Every runner still running is stopped at teardown."""

    def __init__(self, url: str, org: str) -> None:
        self.url = url
        self.org = org
        self.running: list[tuple[RunnerService, Client]] = []
        self.pools_used: set[tuple[str, str]] = set()

    async def __call__(
        self,
        *,
        org: str | None = None,
        pools: list[str] | None = None,
        concurrency: int = 4,
        name: str | None = None,
        ack_wait: float = 3.0,
        grace: float = 1.0,
        drain_timeout: float = 1.0,
        pass_env: list[str] | None = None,
    ) -> RunnerService:
        client = await nats.connect(self.url, name=f"test-runner-{name or len(self.running)}")
        runner = RunnerService(
            client, org=org or self.org, pools=pools, concurrency=concurrency, name=name, ack_wait=ack_wait,
            grace=grace, drain_timeout=drain_timeout, pass_env=pass_env,
        )
        try:
            await runner.start()
        except BaseException:
            await client.close()
            raise
        self.running.append((runner, client))
        self.pools_used |= {(runner.org, pool) for pool in runner.pools}
        return runner

    async def stop(self, runner: RunnerService) -> None:
        """Stop one runner the way SIGTERM does (drain, then hand back), and disconnect it."""
        for entry in list(self.running):
            if entry[0] is runner:
                self.running.remove(entry)
                try:
                    await runner.stop()
                finally:
                    await entry[1].close()

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(runner) for runner, _ in list(self.running)))


@pytest_asyncio.fixture
async def runner_factory(nats_server: EmbeddedServer, broker: ControlPlane, nc: Client, org: str):
    factory = RunnerFactory(nats_server.url, org)
    yield factory
    await factory.stop_all()
    # The org's claiming consumers are of no use to any later test.
    js = nc.jetstream()
    for runner_org, pool in factory.pools_used:
        with contextlib.suppress(NotFoundError):  # a runner may have failed before making it
            await js.delete_consumer("BD_RUNS", consumer_name(runner_org, pool))


@pytest.fixture
def wait_exec(api: ApiClient) -> Callable[..., Awaitable[dict[str, Any]]]:
    """`await wait_exec(execution_id, statuses=FINAL, timeout=20)` polls exec.get until the
    execution's status is one of `statuses` and returns it; fails the test (showing the
    last state seen) when the deadline passes."""

    async def wait(execution_id: str, statuses: Any = FINAL_STATUSES, timeout: float = 20.0,
                   interval: float = 0.05) -> dict[str, Any]:
        wanted = {statuses} if isinstance(statuses, str) else set(statuses)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            execution = await api.call("exec", "get", {"id": execution_id})
            if execution["status"] in wanted:
                return execution
            if loop.time() > deadline:
                pytest.fail(f"execution {execution_id} not {sorted(wanted)} within {timeout:g} s; "
                            f"last seen: {execution}")
            await asyncio.sleep(interval)

    return wait


@pytest.fixture
def start_task(api: ApiClient) -> Callable[..., Awaitable[str]]:
    """`await start_task(task_id, **body)` starts a task and returns the execution id."""

    async def start(task_id: str, **body: Any) -> str:
        reply = await api.call("task", "start", {"id": task_id, **body})
        return reply["execution_id"]

    return start


class ExecEvent:
    """One BD_EVENTS message of an execution."""

    def __init__(self, msg: Any) -> None:
        self.subject: str = msg.subject
        self.kind: str = msg.subject.rsplit(".", 1)[-1]
        self.headers: dict[str, str] = dict(msg.headers or {})
        self.seq: int = msg.metadata.sequence.stream
        self.data: dict[str, Any] = json.loads(msg.data)

    def __repr__(self) -> str:
        return f"ExecEvent({self.kind} #{self.seq} {self.data!r:.200})"


@pytest.fixture
def exec_events(nc: Client, org: str) -> Callable[..., Awaitable[list[ExecEvent]]]:
    """`await exec_events(execution_id, kind="*")`: every event the stream holds for the
    execution (`state`, `log`, `progress` or `*`), in stream order, read with an ordered
    consumer (nothing is consumed for anyone else)."""

    async def read(execution_id: str, kind: str = "*", org_: str | None = None,
                   timeout: float = 10.0) -> list[ExecEvent]:
        subject = f"bd.{org_ or org}.evt.exec.{execution_id}.{kind}"
        js = nc.jetstream()
        info = await js.stream_info("BD_EVENTS", subjects_filter=subject)
        expected = sum((info.state.subjects or {}).values())
        events: list[ExecEvent] = []
        if expected == 0:
            return events
        sub = await js.subscribe(subject, ordered_consumer=True, pending_msgs_limit=-1, pending_bytes_limit=-1)
        try:
            while len(events) < expected:
                events.append(ExecEvent(await sub.next_msg(timeout=timeout)))
        finally:
            await sub.unsubscribe()
        return events

    return read
