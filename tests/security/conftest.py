"""Fixtures of the security suite: see redteam.py for the setup (one server with an
account per org, every service a process of its own on its own user)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import pytest_asyncio
from nats.aio.client import Client

from batchdeck.nats_config import password_variable
from broker.client import ApiClient
from broker.connect import ConnectOptions, connect
from broker.server import find_binary, free_port
from redteam import (AUTH_SERVER_CONF, LOG_TAIL_CHARS, ORGS, PASSWORDS, REPO, WEBHOOK_HOST, WEBHOOK_SECRETS, System,
                     Webhooks, inbox_of)

_SYSTEM: list[System] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _SYSTEM:
        system = _SYSTEM[0]
        for name in system.logs:
            report.sections.append((f"{name}.log (tail)", system.log(name)[-LOG_TAIL_CHARS:] or "(empty)"))


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("security")
    # The deploy files as shipped, beside an auth.conf made for the two orgs the way
    # deploy/nats/README.md says to add an org.
    shutil.copy(AUTH_SERVER_CONF, root / "auth-server.conf")
    made = subprocess.run([sys.executable, "-m", "batchdeck", "nats-config", *(f"--org={org}" for org in ORGS),
                           "-o", str(root / "auth.conf")], capture_output=True, text=True, cwd=REPO)
    assert made.returncode == 0, made.stderr
    built = System(root, free_port())
    _SYSTEM[:] = [built]
    env = {**os.environ, "NATS_PORT": str(built.port), "NATS_STORE_DIR": str(root / "jetstream")}
    env.update({password_variable(user): password for user, password in PASSWORDS.items()})
    built.logs["nats-server"] = root / "nats-server.log"
    with built.logs["nats-server"].open("ab") as sink:
        built.server = subprocess.Popen([find_binary(), "--config", str(root / "auth-server.conf")], env=env,
                                        stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
    try:
        built.wait_logged("nats-server", "Server is ready", 15)
        built.webhook_port = free_port(WEBHOOK_HOST)
        built.start("broker", "bd-broker", "broker")
        built.wait_logged("broker", "broker serving")
        built.start("store", "bd-store", "store", "--db", str(root / "history.duckdb"))
        built.start("scheduler", "bd-scheduler", "scheduler", "--name", "scheduler-1")
        secrets_flags = [f"--webhook-secret={org}={secret}" for org, secret in WEBHOOK_SECRETS.items()]
        built.start("notifier", "bd-notifier", "notifier", *secrets_flags, "--webhook-allow", WEBHOOK_HOST)
        for org in ORGS:
            built.start(f"runner-{org}", f"{org}-runner", "runner", "--org", org, "--name", f"{org}-runner-1",
                        "--ack-wait", "5", "--grace", "1", "--drain-timeout", "2")
        built.wait_logged("store", "store: history in")
        built.wait_logged("scheduler", "scheduler scheduler-1: epoch")
        built.wait_logged("notifier", "notifier ")
        for org in ORGS:
            built.wait_logged(f"runner-{org}", f"runner {org}-runner-1 serving")
        yield built
    finally:
        built.stop()


# ---- clients --------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def login(system: System) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """`await login("acme-viewer")`: a client connection of that user, as the CLI makes
    it: the inbox prefix its role may subscribe to, unless `inbox_prefix` says otherwise."""
    opened: list[Client] = []

    async def open_(user: str, inbox_prefix: str | None = "") -> Client:
        prefix = (None if user.startswith("bd-") and user != "bd-monitor" else
                  "_INBOX_monitor" if user == "bd-monitor" else inbox_of(user)) if inbox_prefix == "" else inbox_prefix
        nc = await connect(ConnectOptions(url=system.url(user), name=f"test-{user}", inbox_prefix=prefix))
        opened.append(nc)
        return nc

    yield open_
    for nc in opened:
        await nc.close()


@pytest_asyncio.fixture
async def api(login) -> Callable[[str], Awaitable[ApiClient]]:
    """`await api("umbrella-admin")`: the API of the user's org, as that user."""
    async def open_(user: str) -> ApiClient:
        return ApiClient(await login(user), user.rsplit("-", 1)[0], timeout=10.0)

    return open_


# ---- a webhook receiver ----------------------------------------------------------------------


@pytest_asyncio.fixture
async def webhooks(system: System) -> AsyncIterator[Webhooks]:
    hooks = Webhooks(f"http://{WEBHOOK_HOST}:{system.webhook_port}")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        path = head.split(" ", 2)[1]
        headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip()
                   for line in head.split("\r\n")[1:] if ":" in line}
        hooks.received[path].append((headers, await reader.readexactly(int(headers.get("content-length", 0)))))
        writer.write(f"HTTP/1.1 {hooks.status} X\r\nContent-Length: {len(hooks.body)}\r\nConnection: close\r\n\r\n"
                     .encode() + hooks.body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, WEBHOOK_HOST, system.webhook_port, reuse_address=True)
    try:
        yield hooks
    finally:
        server.close()
        await server.wait_closed()
