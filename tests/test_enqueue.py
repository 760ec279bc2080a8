"""A run that JetStream does not take at once: the broker tries its publish again (as
while a stream's leader is elected on a cluster), and only after about 20 s records the
execution `lost` and answers 503.

A server of these tests' own: BD_RUNS is deleted under the broker to make the stream
unavailable, and provisioned again to bring it back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest_asyncio
from expectations import eventually, expect_error

from broker import executions, streams
from broker.client import ApiClient
from broker.server import EmbeddedServer
from broker.service import ControlPlane

ORG = "enqueue"


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[ApiClient, nats.aio.client.Client]]:
    server = EmbeddedServer(tmp_path / "nats")
    server.start()
    nc = await nats.connect(server.url)
    plane = ControlPlane(nc, nc.jetstream())
    await plane.start()
    try:
        yield ApiClient(nc, ORG, timeout=30), nc
    finally:
        await plane.stop()
        await nc.close()
        server.stop()


async def test_a_run_is_enqueued_once_the_stream_is_back(stack):
    api, nc = stack
    task = await api.call("task", "create", {"name": "t", "command": ["true"]})
    js = nc.jetstream()
    await js.delete_stream(streams.RUNS)
    start = asyncio.ensure_future(api.call("task", "start", {"id": task["id"]}))
    await asyncio.sleep(1.5)  # a few tries fail meanwhile
    assert not start.done()
    await streams.provision(js)

    reply = await asyncio.wait_for(start, 30)
    execution = await api.call("exec", "get", {"id": reply["execution_id"]})
    assert execution["status"] == "queued"
    run = await js.get_last_msg(streams.RUNS, f"bd.{ORG}.run.default")
    assert json.loads(run.data)["execution_id"] == reply["execution_id"]


async def test_a_run_the_stream_never_takes_is_recorded_lost(stack, monkeypatch):
    monkeypatch.setattr(executions, "ENQUEUE_PAUSES", (0.1, 0.1))
    monkeypatch.setattr(executions, "ENQUEUE_TRY_TIMEOUT", 0.5)
    api, nc = stack
    task = await api.call("task", "create", {"name": "t", "command": ["true"]})
    await nc.jetstream().delete_stream(streams.RUNS)

    err = await expect_error(503, api.call("task", "start", {"id": task["id"]}))
    assert "could not enqueue the run" in err.message

    async def lost() -> list:
        page = await api.call("exec", "list", {"filter": {"task_id": task["id"]}})
        return page["items"]

    items = await eventually(lost, 10, 0.1, "the execution listed")
    assert [(e["status"], e["error"][:18]) for e in items] == [("lost", "could not enqueue:")]
    await streams.provision(nc.jetstream())  # the stack's teardown expects its streams


async def test_a_start_into_a_full_pool_is_refused_at_once_and_other_orgs_go_on(tmp_path: Path):
    """One org's pool holds at most `runs_per_pool` waiting runs: past it a start answers
    429 at once (no retries: a full queue is no passing trouble); other orgs are not held up."""
    server = EmbeddedServer(tmp_path / "nats")
    server.start()
    nc = await nats.connect(server.url)
    plane = ControlPlane(nc, nc.jetstream(), stream_limits=streams.StreamLimits(runs_per_pool=2))
    await plane.start()
    try:
        api, other = ApiClient(nc, ORG), ApiClient(nc, "elsewhere")
        task = await api.call("task", "create", {"name": "t", "command": ["true"]})
        waiting = [(await api.call("task", "start", {"id": task["id"]}))["execution_id"] for _ in range(2)]
        err = await expect_error(429, api.call("task", "start", {"id": task["id"]}))
        assert "pool 'default' of org 'enqueue' has as many runs waiting as it may" in err.message
        assert err.details == {"pool": "default"}
        page = await api.call("exec", "list", {"filter": {"task_id": task["id"]}})
        assert sorted(e["status"] for e in page["items"]) == ["lost", "queued", "queued"]
        assert {e["id"] for e in page["items"] if e["status"] == "queued"} == set(waiting)
        theirs = await other.call("task", "create", {"name": "t", "command": ["true"]})
        await other.call("task", "start", {"id": theirs["id"]})
    finally:
        await plane.stop()
        await nc.close()
        server.stop()
