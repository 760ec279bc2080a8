"""`*.list`: filter (equality, any-of, JSON-strict booleans), sort (`-` for descending),
page / per_page / total / pages, for tasks, batches and executions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from expectations import api_error


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["items"]]


def names(page: dict[str, Any]) -> list[str]:
    return [item["name"] for item in page["items"]]


@pytest.fixture
async def tasks(make_task) -> dict[str, dict[str, Any]]:
    """Five tasks with varied fields, by name."""
    specs = [
        {"name": "delta", "pool": "etl", "shell": True, "retries": 1, "owner": "ann"},
        {"name": "alpha", "pool": "etl", "shell": False, "retries": 0, "owner": "bob"},
        {"name": "echo", "pool": "web", "shell": False, "retries": 1, "owner": None},
        {"name": "charlie", "pool": "batch", "shell": True, "retries": 2, "owner": "ann"},
        {"name": "bravo", "pool": "web", "shell": False, "retries": 0, "owner": None},
    ]
    return {spec["name"]: await make_task(**spec) for spec in specs}


# ---- filter -------------------------------------------------------------------------


async def test_equality_filter(api, tasks):
    page = await api.call("task", "list", {"filter": {"pool": "etl"}})
    assert sorted(names(page)) == ["alpha", "delta"]
    assert page["total"] == 2
    assert page["pages"] == 1

    page = await api.call("task", "list", {"filter": {"owner": "ann"}})
    assert sorted(names(page)) == ["charlie", "delta"]

    page = await api.call("task", "list", {"filter": {"id": tasks["echo"]["id"]}})
    assert names(page) == ["echo"]

    page = await api.call("task", "list", {"filter": {"pool": "nowhere"}})
    assert page["items"] == [] and page["total"] == 0


async def test_filters_on_several_fields_all_apply(api, tasks):
    page = await api.call("task", "list", {"filter": {"pool": "etl", "shell": True}})
    assert names(page) == ["delta"]
    page = await api.call("task", "list", {"filter": {"pool": "web", "retries": 1}})
    assert names(page) == ["echo"]


async def test_list_valued_filter_means_any_of(api, tasks):
    page = await api.call("task", "list", {"filter": {"pool": ["etl", "batch"]}})
    assert sorted(names(page)) == ["alpha", "charlie", "delta"]
    assert page["total"] == 3

    page = await api.call("task", "list", {"filter": {"retries": [2, 7]}})
    assert names(page) == ["charlie"]

    page = await api.call("task", "list", {"filter": {"pool": []}})
    assert page["total"] == 0


async def test_null_filter_matches_missing_values(api, tasks):
    page = await api.call("task", "list", {"filter": {"owner": None}})
    assert sorted(names(page)) == ["bravo", "echo"]
    page = await api.call("task", "list", {"filter": {"owner": [None, "bob"]}})
    assert sorted(names(page)) == ["alpha", "bravo", "echo"]


async def test_boolean_filter_does_not_match_integers(api, tasks):
    page = await api.call("task", "list", {"filter": {"shell": True}})
    assert sorted(names(page)) == ["charlie", "delta"]
    page = await api.call("task", "list", {"filter": {"shell": False}})
    assert sorted(names(page)) == ["alpha", "bravo", "echo"]

    # JSON true is not 1, false is not 0, either way round.
    assert (await api.call("task", "list", {"filter": {"shell": 1}}))["total"] == 0
    assert (await api.call("task", "list", {"filter": {"shell": 0}}))["total"] == 0
    assert (await api.call("task", "list", {"filter": {"retries": True}}))["total"] == 0
    assert (await api.call("task", "list", {"filter": {"retries": False}}))["total"] == 0
    assert (await api.call("task", "list", {"filter": {"retries": [True, 2]}}))["total"] == 1
    page = await api.call("task", "list", {"filter": {"retries": 1}})
    assert sorted(names(page)) == ["delta", "echo"]


@pytest.mark.parametrize("resource", ["task", "batch", "exec"])
async def test_filter_on_unknown_field_is_400(api, resource):
    err = await api_error(api.call(resource, "list", {"filter": {"colour": "red"}}))
    assert err.code == 400
    assert "colour" in err.message


async def test_filter_with_object_value_is_400(api, tasks):
    err = await api_error(api.call("task", "list", {"filter": {"params": {"a": 1}}}))
    assert err.code == 400


async def test_filter_must_be_an_object(api):
    err = await api_error(api.call("task", "list", {"filter": ["pool", "etl"]}))
    assert err.code == 400


# ---- sort ---------------------------------------------------------------------------


async def test_default_sort_is_by_name(api, tasks):
    page = await api.call("task", "list", {})
    assert names(page) == ["alpha", "bravo", "charlie", "delta", "echo"]


async def test_sort_ascending_and_descending(api, tasks):
    page = await api.call("task", "list", {"sort": "name"})
    assert names(page) == ["alpha", "bravo", "charlie", "delta", "echo"]
    page = await api.call("task", "list", {"sort": "-name"})
    assert names(page) == ["echo", "delta", "charlie", "bravo", "alpha"]

    page = await api.call("task", "list", {"sort": "retries"})
    retries = [t["retries"] for t in page["items"]]
    assert retries == sorted(retries) == [0, 0, 1, 1, 2]
    page = await api.call("task", "list", {"sort": "-retries"})
    assert [t["retries"] for t in page["items"]] == [2, 1, 1, 0, 0]

    page = await api.call("task", "list", {"sort": "created_at"})
    created = [t["created_at"] for t in page["items"]]
    assert created == sorted(created)


async def test_sort_puts_missing_values_last_both_ways(api, tasks):
    page = await api.call("task", "list", {"sort": "owner"})
    assert [t["owner"] for t in page["items"]] == ["ann", "ann", "bob", None, None]
    page = await api.call("task", "list", {"sort": "-owner"})
    assert [t["owner"] for t in page["items"]] == ["bob", "ann", "ann", None, None]


async def test_sort_with_filter_and_paging_together(api, tasks):
    page = await api.call("task", "list", {"filter": {"pool": ["etl", "web"]}, "sort": "-name", "per_page": 2, "page": 2})
    assert names(page) == ["bravo", "alpha"]
    assert page["total"] == 4
    assert page["pages"] == 2


@pytest.mark.parametrize("resource", ["task", "batch", "exec"])
@pytest.mark.parametrize("sort", ["colour", "-colour"])
async def test_sort_on_unknown_field_is_400(api, resource, sort):
    err = await api_error(api.call(resource, "list", {"sort": sort}))
    assert err.code == 400
    assert "colour" in err.message


@pytest.mark.parametrize("sort", ["Name", "name;drop", "--name", ""])
async def test_malformed_sort_is_400(api, sort):
    err = await api_error(api.call("task", "list", {"sort": sort}))
    assert err.code == 400


# ---- paging -------------------------------------------------------------------------


async def test_paging_seven_items_by_three(api, make_task):
    for i in range(7):
        await make_task(name=f"task-{i}")
    seen: list[str] = []
    for number, size in ((1, 3), (2, 3), (3, 1)):
        page = await api.call("task", "list", {"page": number, "per_page": 3})
        assert page["page"] == number
        assert page["per_page"] == 3
        assert page["total"] == 7
        assert page["pages"] == 3
        assert len(page["items"]) == size
        seen += names(page)
    assert seen == [f"task-{i}" for i in range(7)]

    past = await api.call("task", "list", {"page": 4, "per_page": 3})
    assert past["items"] == []
    assert past["total"] == 7
    assert past["pages"] == 3
    far = await api.call("task", "list", {"page": 1000, "per_page": 3})
    assert far["items"] == []


async def test_paging_defaults_and_exact_fit(api, make_task):
    for i in range(6):
        await make_task(name=f"t{i}")
    page = await api.call("task", "list", {})
    assert page["page"] == 1
    assert page["per_page"] == 50
    assert page["total"] == 6
    assert page["pages"] == 1
    exact = await api.call("task", "list", {"per_page": 3, "page": 2})
    assert exact["pages"] == 2
    assert len(exact["items"]) == 3
    one = await api.call("task", "list", {"per_page": 1})
    assert one["pages"] == 6
    big = await api.call("task", "list", {"per_page": 1000})
    assert big["total"] == 6 and len(big["items"]) == 6


async def test_empty_list(api):
    page = await api.call("task", "list", {})
    assert page["items"] == []
    assert page["total"] == 0
    assert page["pages"] == 0


@pytest.mark.parametrize("resource", ["task", "batch", "exec"])
@pytest.mark.parametrize(
    "request_body",
    [
        {"per_page": 0},
        {"per_page": 1001},
        {"per_page": -5},
        {"page": 0},
        {"page": -1},
        {"per_page": "10"},
        {"page": 1.5},
    ],
)
async def test_out_of_range_paging_is_400(api, resource, request_body):
    err = await api_error(api.call(resource, "list", request_body))
    assert err.code == 400


async def test_unknown_list_option_is_400(api):
    err = await api_error(api.call("task", "list", {"limit": 10}))
    assert err.code == 400


# ---- batches ------------------------------------------------------------------------


async def test_batch_list_filter_sort_page(api, make_task):
    task = await make_task()
    base = {"cron_expression": "0 3 * * *", "run_on_startup": False, "actions": [{"task_id": task["id"]}]}
    created = []
    for i, enabled in enumerate([True, False, True, False, False]):
        created.append(await api.call("batch", "create", {**base, "name": f"b{i}", "is_enabled": enabled}))

    page = await api.call("batch", "list", {"filter": {"is_enabled": True}})
    assert sorted(names(page)) == ["b0", "b2"]
    page = await api.call("batch", "list", {"filter": {"is_enabled": 1}})
    assert page["total"] == 0
    page = await api.call("batch", "list", {"filter": {"id": [created[1]["id"], created[4]["id"], "nope"]}})
    assert sorted(names(page)) == ["b1", "b4"]
    page = await api.call("batch", "list", {"filter": {"next_run_at": None}})
    assert sorted(names(page)) == ["b1", "b3", "b4"]

    page = await api.call("batch", "list", {"sort": "-name", "per_page": 2, "page": 1})
    assert names(page) == ["b4", "b3"]
    assert page["total"] == 5 and page["pages"] == 3
    last = await api.call("batch", "list", {"sort": "-name", "per_page": 2, "page": 3})
    assert names(last) == ["b0"]

    for batch in created:
        if batch["is_enabled"]:
            await api.call("batch", "status", {"id": batch["id"], "is_enabled": False})


async def test_batch_list_hides_deleted_unless_asked(api, make_task):
    task = await make_task()
    base = {"cron_expression": "0 3 * * *", "is_enabled": False, "run_on_startup": False,
            "actions": [{"task_id": task["id"]}]}
    gone = await api.call("batch", "create", {**base, "name": "gone"})
    await api.call("batch", "create", {**base, "name": "kept"})
    await api.call("batch", "delete", {"id": gone["id"]})
    assert names(await api.call("batch", "list", {})) == ["kept"]
    everything = await api.call("batch", "list", {"include_deleted": True, "sort": "name"})
    assert names(everything) == ["gone", "kept"]
    assert everything["total"] == 2


# ---- executions ---------------------------------------------------------------------


@pytest.fixture
def idle_pool() -> str:
    """A pool no runner serves, so started executions stay queued."""
    return f"idle-{uuid.uuid4().hex[:12]}"


async def test_exec_list_filter_sort_page(api, make_task, idle_pool):
    first = await make_task(name="first", pool=idle_pool)
    second = await make_task(name="second", pool=idle_pool)
    started = {first["id"]: [], second["id"]: []}
    for task_id in [first["id"]] * 3 + [second["id"]] * 2:
        reply = await api.call("task", "start", {"id": task_id})
        started[task_id].append(reply["execution_id"])
    all_ids = started[first["id"]] + started[second["id"]]

    page = await api.call("exec", "list", {})
    assert sorted(ids(page)) == sorted(all_ids)
    assert page["total"] == 5
    queued_at = [e["queued_at"] for e in page["items"]]
    assert queued_at == sorted(queued_at, reverse=True)  # newest first by default

    page = await api.call("exec", "list", {"filter": {"task_id": first["id"]}})
    assert sorted(ids(page)) == sorted(started[first["id"]])
    assert all(e["name"] == "first" for e in page["items"])

    page = await api.call("exec", "list", {"filter": {"status": "queued"}})
    assert page["total"] == 5
    page = await api.call("exec", "list", {"filter": {"status": ["running", "succeeded", "failed"]}})
    assert page["total"] == 0
    page = await api.call("exec", "list", {"filter": {"task_id": [second["id"], "nope"], "status": ["queued"]}})
    assert sorted(ids(page)) == sorted(started[second["id"]])
    page = await api.call("exec", "list", {"filter": {"pool": idle_pool, "batch_id": None}})
    assert page["total"] == 5
    page = await api.call("exec", "list", {"filter": {"cancellable": 1}})
    assert page["total"] == 0

    page = await api.call("exec", "list", {"sort": "id"})
    assert ids(page) == sorted(all_ids)
    page = await api.call("exec", "list", {"sort": "-id"})
    assert ids(page) == sorted(all_ids, reverse=True)

    pages = [await api.call("exec", "list", {"sort": "id", "per_page": 2, "page": n}) for n in (1, 2, 3, 4)]
    assert [len(p["items"]) for p in pages] == [2, 2, 1, 0]
    assert all(p["total"] == 5 and p["pages"] == 3 for p in pages)
    assert sum((ids(p) for p in pages), []) == sorted(all_ids)
