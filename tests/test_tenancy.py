"""Tenancy: every definition and execution belongs to the org of the subject it was
made on. Org B sees nothing of org A and cannot touch it; the same id may exist in
both orgs independently."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import pytest_asyncio
from expectations import expect_error

from broker.client import ApiClient


@pytest.fixture
def other(broker, nc) -> ApiClient:
    """The API client of a second, unrelated org."""
    return ApiClient(nc, f"o{uuid.uuid4().hex[:12]}")


@pytest_asyncio.fixture
async def world(api, make_task, make_batch) -> dict[str, Any]:
    """Org A's task, batch (disabled, so org A itself could delete it) and a queued execution."""
    task = await make_task(name="a-task", params={"secret": "org-a"})
    batch = await make_batch(task_ids=[task["id"]], name="a-batch")
    execution_id = (await api.call("task", "start", {"id": task["id"]}))["execution_id"]
    return {"task": task, "batch": batch, "execution_id": execution_id}


async def test_other_org_cannot_get_anything(world, other):
    await expect_error(404, other.call("task", "get", {"id": world["task"]["id"]}))
    await expect_error(404, other.call("batch", "get", {"id": world["batch"]["id"]}))
    await expect_error(404, other.call("exec", "get", {"id": world["execution_id"]}))


async def test_other_org_lists_are_empty(world, other):
    for resource in ("task", "batch"):
        for include_deleted in (False, True):
            page = await other.call(resource, "list", {"include_deleted": include_deleted})
            assert page["items"] == [] and page["total"] == 0, resource
    page = await other.call("exec", "list", {})
    assert page["items"] == [] and page["total"] == 0
    # even when filtering on A's ids
    page = await other.call("exec", "list", {"filter": {"task_id": world["task"]["id"]}})
    assert page["total"] == 0


async def test_other_org_cannot_update(api, world, other):
    task, batch = world["task"], world["batch"]
    await expect_error(404, other.call("task", "update", {"id": task["id"], "name": "hijacked"}))
    await expect_error(404, other.call("batch", "update", {"id": batch["id"], "name": "hijacked"}))
    await expect_error(404, other.call("batch", "status", {"id": batch["id"], "is_enabled": True}))
    assert (await api.call("task", "get", {"id": task["id"]}))["name"] == "a-task"
    got = await api.call("batch", "get", {"id": batch["id"]})
    assert got["name"] == "a-batch" and got["is_enabled"] is False
    assert got["version"] == batch["version"]


async def test_other_org_cannot_delete(api, world, other):
    task, batch = world["task"], world["batch"]
    await expect_error(404, other.call("batch", "delete", {"id": batch["id"]}))
    await expect_error(404, other.call("task", "delete", {"id": task["id"], "force": True}))
    assert (await api.call("task", "get", {"id": task["id"]}))["deleted_at"] is None
    assert (await api.call("batch", "get", {"id": batch["id"]}))["deleted_at"] is None
    assert (await api.call("batch", "list", {}))["total"] == 1


async def test_other_org_cannot_start(api, nc, world, other):
    await expect_error(404, other.call("task", "start", {"id": world["task"]["id"]}))
    await expect_error(404, other.call("batch", "start", {"id": world["batch"]["id"]}))
    assert (await other.call("exec", "list", {}))["total"] == 0
    assert (await api.call("exec", "list", {}))["total"] == 1
    # nothing was enqueued for the other org
    info = await nc.jetstream().stream_info("BD_RUNS", subjects_filter=f"bd.{other.org}.run.>")
    assert not info.state.subjects


async def test_other_org_cannot_cancel(api, world, other):
    await expect_error(404, other.call("exec", "cancel", {"id": world["execution_id"]}))
    assert (await api.call("exec", "get", {"id": world["execution_id"]}))["status"] == "queued"


async def test_batch_cannot_reference_another_orgs_task(world, other):
    body = {
        "name": "thief",
        "cron_expression": "0 3 * * *",
        "is_enabled": False,
        "run_on_startup": False,
        "actions": [{"task_id": world["task"]["id"]}],
    }
    err = await expect_error(400, other.call("batch", "create", body))
    assert err.details.get("missing") == [world["task"]["id"]]
    assert (await other.call("batch", "list", {}))["total"] == 0


async def test_batch_update_cannot_reference_another_orgs_task(world, other):
    own_task = await other.call("task", "create", {"name": "b-task", "command": ["true"]})
    own_batch = await other.call(
        "batch",
        "create",
        {
            "name": "b-batch",
            "cron_expression": "0 3 * * *",
            "is_enabled": False,
            "run_on_startup": False,
            "actions": [{"task_id": own_task["id"]}],
        },
    )
    err = await expect_error(
        400, other.call("batch", "update", {"id": own_batch["id"], "actions": [{"task_id": world["task"]["id"]}]})
    )
    assert err.details.get("missing") == [world["task"]["id"]]
    got = await other.call("batch", "get", {"id": own_batch["id"]})
    assert [a["task_id"] for a in got["actions"]] == [own_task["id"]]


async def test_same_id_lives_independently_in_two_orgs(api, other):
    mine = await api.call("task", "create", {"id": "shared", "name": "mine", "command": ["echo", "a"]})
    theirs = await other.call("task", "create", {"id": "shared", "name": "theirs", "command": ["echo", "b"]})
    assert mine["id"] == theirs["id"] == "shared"

    assert (await api.call("task", "get", {"id": "shared"}))["name"] == "mine"
    assert (await other.call("task", "get", {"id": "shared"}))["name"] == "theirs"

    await other.call("task", "update", {"id": "shared", "name": "theirs v2"})
    assert (await api.call("task", "get", {"id": "shared"}))["name"] == "mine"

    await api.call("task", "delete", {"id": "shared"})
    assert (await api.call("task", "get", {"id": "shared"}))["deleted_at"] is not None
    still = await other.call("task", "get", {"id": "shared"})
    assert still["deleted_at"] is None and still["name"] == "theirs v2"
    assert [t["id"] for t in (await other.call("task", "list", {}))["items"]] == ["shared"]
    assert (await api.call("task", "list", {}))["total"] == 0


async def test_same_batch_id_in_two_orgs_runs_each_orgs_own_tasks(api, nc, other):
    for client, word in ((api, "a"), (other, "b")):
        await client.call("task", "create", {"id": "step", "name": word, "command": ["echo", word]})
        await client.call(
            "batch",
            "create",
            {
                "id": "nightly",
                "name": word,
                "cron_expression": "0 3 * * *",
                "is_enabled": False,
                "run_on_startup": False,
                "actions": [{"task_id": "step"}],
            },
        )
    started = await other.call("batch", "start", {"id": "nightly"})
    msg = await nc.jetstream().get_last_msg("BD_RUNS", f"bd.{other.org}.run.default")
    command = json.loads(msg.data)
    assert command["execution_id"] == started["execution_id"]
    assert command["tasks"][0]["command"] == ["echo", "b"]
    assert (await api.call("exec", "list", {}))["total"] == 0
    execution = await other.call("exec", "get", {"id": started["execution_id"]})
    assert execution["org"] == other.org


async def test_events_carry_the_org_in_their_subject(api, nc, org, world, other):
    js = nc.jetstream()
    msg = await js.get_last_msg("BD_EVENTS", f"bd.{org}.evt.exec.{world['execution_id']}.state")
    assert json.loads(msg.data)["org"] == org
    info = await js.stream_info("BD_EVENTS", subjects_filter=f"bd.{other.org}.evt.>")
    assert not info.state.subjects
