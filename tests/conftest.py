"""Shared fixtures: a real nats-server (free port, temp store) and a real broker.

One server and one broker serve the whole session; every test gets an org of its
own, so tests are isolated the way tenants are.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client

from broker.client import ApiClient
from broker.server import EmbeddedServer
from broker.service import ControlPlane


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
