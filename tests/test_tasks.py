"""task.create / get / list / update / delete against a real broker (PROTOCOL.md, Task)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from expectations import api_error, parse_time

from broker.errors import ApiError

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid_ms(text: str) -> int:
    value = 0
    for char in text[:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value




# ---- create / get -----------------------------------------------------------------


FULL_TASK = {
    "name": "import orders",
    "description": "Pulls yesterday's orders from the shop API",
    "command": ["python", "-m", "importer", "--day", "{{ day }}"],
    "params": {"day": "yesterday", "limits": {"rows": 1000, "tags": ["a", "b"]}, "dry_run": False},
    "shell": False,
    "env": {"LOG_LEVEL": "debug", "_PRIVATE": "1"},
    "cwd": "/srv/importer",
    "pool": "etl",
    "timeout_sec": 90.5,
    "retries": 3,
    "retry_backoff_sec": 2.5,
    "cancellable": False,
    "trace": False,
    "owner": "data-team",
    "system": True,
    "notify": {"on": "always", "recipients": ["ops@example.com"]},
}


async def test_create_round_trips_every_field_and_sets_server_fields(api):
    before = datetime.now(timezone.utc)
    created = await api.call("task", "create", FULL_TASK)
    after = datetime.now(timezone.utc)

    for name, value in FULL_TASK.items():
        assert created[name] == value, name
    assert created["kind"] == "command"
    assert created["module"] is None

    created_at = parse_time(created["created_at"])
    assert created["updated_at"] == created["created_at"]
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= created_at <= after
    assert created["deleted_at"] is None
    assert isinstance(created["version"], int) and not isinstance(created["version"], bool)
    assert created["version"] > 0
    assert created["start_count"] == 0
    assert created["last_started_at"] is None
    assert created["state"] == {}

    got = await api.call("task", "get", {"id": created["id"]})
    assert got == created


async def test_create_applies_documented_defaults(api):
    created = await api.call("task", "create", {"name": "hi", "command": ["echo", "hi"]})
    assert created["kind"] == "command"
    assert created["description"] == ""
    assert created["params"] == {}
    assert created["env"] == {}
    assert created["shell"] is False
    assert created["pool"] == "default"
    assert created["retries"] == 0
    assert created["cancellable"] is True
    assert created["trace"] is True
    assert created["system"] is False
    assert created["notify"] is None
    assert created["timeout_sec"] is None


async def test_generated_ids_are_ulids(api, make_task):
    now_ms = int(time.time() * 1000)
    first = await make_task()
    second = await make_task()
    for task in (first, second):
        assert len(task["id"]) == 26
        assert all(c in CROCKFORD for c in task["id"]), task["id"]
        # The first 10 characters are the creation time in milliseconds.
        assert abs(ulid_ms(task["id"]) - now_ms) < 60_000
    assert first["id"] != second["id"]


async def test_client_supplied_id_is_kept(api, make_task):
    created = await make_task(id="nightly-report_01")
    assert created["id"] == "nightly-report_01"
    got = await api.call("task", "get", {"id": "nightly-report_01"})
    assert got["name"] == created["name"]
    assert got["command"] == created["command"]


async def test_get_unknown_id_is_404(api):
    err = await api_error(api.call("task", "get", {"id": "no-such-task"}))
    assert err.code == 404
    assert "no-such-task" in err.message


async def test_duplicate_id_on_create_is_409_and_keeps_the_original(api, make_task):
    original = await make_task(id="dup", name="first")
    err = await api_error(make_task(id="dup", name="second"))
    assert err.code == 409
    got = await api.call("task", "get", {"id": "dup"})
    assert got["name"] == "first"
    assert got["version"] == original["version"]


# ---- kind ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"command": ["echo", "hi"]}, "command"),
        ({"module": "reports.daily"}, "module"),
        ({"kind": "module", "module": "reports.daily"}, "module"),
        ({"kind": "command", "command": ["true"], "shell": True}, "command"),
    ],
)
async def test_kind_is_inferred_or_taken(api, body, kind):
    created = await api.call("task", "create", {"name": "k", **body})
    assert created["kind"] == kind
    if kind == "module":
        assert created["module"] == "reports.daily"
        assert created["command"] is None
    else:
        assert created["command"] == body["command"]
        assert created["module"] is None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"kind": "module", "command": ["echo"]}, id="module-kind-with-command"),
        pytest.param({"kind": "module", "module": "x", "command": ["echo"]}, id="module-kind-with-both"),
        pytest.param({"kind": "command", "module": "x"}, id="command-kind-with-module"),
        pytest.param({"command": ["echo"], "module": "x"}, id="both-without-kind"),
        pytest.param({"module": "x", "shell": True}, id="module-with-shell"),
        pytest.param({}, id="neither"),
        pytest.param({"kind": "script", "command": ["echo"]}, id="unknown-kind"),
        pytest.param({"module": "Bad Name"}, id="invalid-module-name"),
    ],
)
async def test_kind_command_module_inconsistency_is_400(api, body):
    err = await api_error(api.call("task", "create", {"name": "k", **body}))
    assert err.code == 400
    assert err.message
    page = await api.call("task", "list", {})
    assert page["total"] == 0


# ---- validation ---------------------------------------------------------------------

VALID = {"name": "ok", "command": ["echo", "ok"]}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in VALID.items() if k != key}


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        pytest.param(without("name"), "name", id="missing-name"),
        pytest.param({**VALID, "name": ""}, "name", id="empty-name"),
        pytest.param({**VALID, "name": "x" * 201}, "name", id="name-too-long"),
        pytest.param({**VALID, "name": 5}, "name", id="name-not-string"),
        pytest.param({**VALID, "command": []}, "command", id="empty-command"),
        pytest.param({**VALID, "command": [""]}, "command[0]`, the program to run, is empty", id="empty-program"),
        pytest.param({**VALID, "command": "echo hi"}, "command", id="command-string"),
        pytest.param({**VALID, "retries": "3"}, "retries", id="retries-string"),
        pytest.param({**VALID, "retries": -1}, "retries", id="retries-negative"),
        pytest.param({**VALID, "retries": 1.5}, "retries", id="retries-float"),
        pytest.param({**VALID, "timeout_sec": "10"}, "timeout_sec", id="timeout-string"),
        pytest.param({**VALID, "timeout_sec": 0}, "timeout_sec", id="timeout-zero"),
        pytest.param({**VALID, "shell": "yes"}, "shell", id="shell-string"),
        pytest.param({**VALID, "cancellable": 1}, "cancellable", id="cancellable-int"),
        pytest.param({**VALID, "colour": "red"}, "colour", id="unknown-field"),
        pytest.param({**VALID, "version": 3}, "version", id="server-field-version"),
        pytest.param({**VALID, "id": "bad id"}, "id", id="id-with-space"),
        pytest.param({**VALID, "id": "a.b"}, "id", id="id-with-dot"),
        pytest.param({**VALID, "id": "a*"}, "id", id="id-with-wildcard"),
        pytest.param({**VALID, "id": "-leading"}, "id", id="id-leading-dash"),
        pytest.param({**VALID, "id": ""}, "id", id="id-empty"),
        pytest.param({**VALID, "id": "x" * 65}, "id", id="id-too-long"),
        pytest.param({**VALID, "env": {"1BAD": "x"}}, "env", id="env-leading-digit"),
        pytest.param({**VALID, "env": {"BAD-NAME": "x"}}, "env", id="env-dash"),
        pytest.param({**VALID, "env": {"A B": "x"}}, "env", id="env-space"),
        pytest.param({**VALID, "env": {"OK": 1}}, "env", id="env-value-int"),
        pytest.param({**VALID, "params": {"blob": "x" * (64 * 1024 + 1)}}, "params", id="params-over-64k"),
        pytest.param({**VALID, "params": ["not", "an", "object"]}, "params", id="params-list"),
        pytest.param({**VALID, "pool": "Upper Case"}, "pool", id="pool-invalid"),
        pytest.param({**VALID, "notify": {"on": "sometimes", "recipients": ["a@b.c"]}}, "notify", id="notify-on"),
    ],
)
async def test_invalid_create_is_400_and_names_the_field(api, body, mentions):
    err = await api_error(api.call("task", "create", body))
    assert err.code == 400
    assert mentions in err.message, err.message
    page = await api.call("task", "list", {"include_deleted": True})
    assert page["total"] == 0


async def test_name_of_200_characters_is_accepted(api):
    created = await api.call("task", "create", {**VALID, "name": "n" * 200})
    assert created["name"] == "n" * 200


async def test_params_just_under_64k_are_accepted(api):
    blob = "x" * (64 * 1024 - 100)
    created = await api.call("task", "create", {**VALID, "params": {"blob": blob}})
    got = await api.call("task", "get", {"id": created["id"]})
    assert got["params"]["blob"] == blob


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"name": '])
async def test_malformed_body_is_400(api, body):
    err = await api_error(api.call("task", "create", body))
    assert err.code == 400


# ---- update -------------------------------------------------------------------------


async def test_update_changes_fields_and_increases_version(api, make_task):
    task = await make_task(description="before", retries=1, params={"a": 1})
    updated = await api.call(
        "task", "update", {"id": task["id"], "description": "after", "retries": 4, "env": {"MODE": "fast"}}
    )
    assert updated["description"] == "after"
    assert updated["retries"] == 4
    assert updated["env"] == {"MODE": "fast"}
    # fields not sent are kept
    assert updated["params"] == {"a": 1}
    assert updated["command"] == task["command"]
    assert updated["name"] == task["name"]

    assert isinstance(updated["version"], int)
    assert updated["version"] > task["version"]
    assert updated["created_at"] == task["created_at"]
    assert parse_time(updated["updated_at"]) >= parse_time(task["updated_at"])

    again = await api.call("task", "update", {"id": task["id"], "retries": 5})
    assert again["version"] > updated["version"]

    got = await api.call("task", "get", {"id": task["id"]})
    assert got == again


async def test_update_with_stale_version_is_409_with_current_version(api, make_task):
    task = await make_task(description="v1")
    second = await api.call("task", "update", {"id": task["id"], "version": task["version"], "description": "v2"})

    err = await api_error(api.call("task", "update", {"id": task["id"], "version": task["version"], "description": "v3"}))
    assert err.code == 409
    assert err.details["version"] == second["version"]

    got = await api.call("task", "get", {"id": task["id"]})
    assert got["description"] == "v2"
    assert got["version"] == second["version"]


async def test_update_with_current_version_works(api, make_task):
    task = await make_task()
    updated = await api.call("task", "update", {"id": task["id"], "version": task["version"], "name": "renamed"})
    assert updated["name"] == "renamed"


async def test_update_without_version_is_last_writer_wins(api, make_task):
    task = await make_task()
    await api.call("task", "update", {"id": task["id"], "description": "one"})
    updated = await api.call("task", "update", {"id": task["id"], "description": "two"})
    assert updated["description"] == "two"


async def test_get_modify_update_ignores_read_only_fields(api, make_task):
    task = await make_task(name="original")
    got = await api.call("task", "get", {"id": task["id"]})
    got["name"] = "edited"
    got["created_at"] = "2000-01-01T00:00:00.000Z"
    got["updated_at"] = "2000-01-01T00:00:00.000Z"
    got["start_count"] = 99
    got["last_started_at"] = "2000-01-01T00:00:00.000Z"
    got["state"] = {"cursor": 42}
    got["deleted_at"] = "2000-01-01T00:00:00.000Z"

    updated = await api.call("task", "update", got)
    assert updated["name"] == "edited"
    assert updated["created_at"] == task["created_at"]
    assert updated["updated_at"] != "2000-01-01T00:00:00.000Z"
    assert updated["start_count"] == 0
    assert updated["last_started_at"] is None
    assert updated["state"] == {}
    assert updated["deleted_at"] is None
    assert updated["version"] > task["version"]

    listed = await api.call("task", "list", {})
    assert [t["id"] for t in listed["items"]] == [task["id"]]


async def test_update_module_task_round_trip(api):
    task = await api.call("task", "create", {"name": "m", "module": "reports.daily", "params": {"x": 1}})
    got = await api.call("task", "get", {"id": task["id"]})
    got["params"] = {"x": 2}
    updated = await api.call("task", "update", got)
    assert updated["kind"] == "module"
    assert updated["params"] == {"x": 2}


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        pytest.param({"retries": "3"}, "retries", id="retries-string"),
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"command": []}, "command", id="empty-command"),
        pytest.param({"colour": "red"}, "colour", id="unknown-field"),
        pytest.param({"module": "reports.daily"}, "module", id="module-on-command-task"),
        pytest.param({"env": {"1BAD": "x"}}, "env", id="bad-env"),
        pytest.param({"params": {"blob": "x" * (64 * 1024 + 1)}}, "params", id="params-over-64k"),
    ],
)
async def test_invalid_update_is_400_and_changes_nothing(api, make_task, change, mentions):
    task = await make_task()
    err = await api_error(api.call("task", "update", {"id": task["id"], **change}))
    assert err.code == 400
    assert mentions in err.message, err.message
    got = await api.call("task", "get", {"id": task["id"]})
    assert got == task


async def test_update_with_non_integer_version_is_400(api, make_task):
    task = await make_task()
    err = await api_error(api.call("task", "update", {"id": task["id"], "version": str(task["version"])}))
    assert err.code == 400


async def test_update_unknown_id_is_404(api):
    err = await api_error(api.call("task", "update", {"id": "ghost", "name": "x"}))
    assert err.code == 404


@pytest.mark.parametrize("bad_id", ["bad id", "*", ">", "trailing."])
async def test_update_with_invalid_id_is_400(api, bad_id):
    # task.get refuses these ids with 400; task.update must as well (not fail inside).
    err = await api_error(api.call("task", "update", {"id": bad_id, "name": "x"}))
    assert err.code == 400


async def test_concurrent_updates_with_same_version_exactly_one_wins(api, make_task):
    task = await make_task()
    results = await asyncio.gather(
        *(
            api.call("task", "update", {"id": task["id"], "version": task["version"], "description": f"writer {i}"})
            for i in range(10)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, dict)]
    losers = [r for r in results if not isinstance(r, dict)]
    assert len(winners) == 1, results
    assert all(isinstance(e, ApiError) and e.code == 409 for e in losers), losers
    assert len(losers) == 9

    got = await api.call("task", "get", {"id": task["id"]})
    assert got["description"] == winners[0]["description"]
    assert got["version"] == winners[0]["version"]


# ---- delete -------------------------------------------------------------------------


async def test_delete_is_soft(api, make_task):
    task = await make_task(name="doomed")
    keep = await make_task(name="kept")
    reply = await api.call("task", "delete", {"id": task["id"]})
    assert reply == {"deleted": [{"kind": "task", "id": task["id"]}]}

    got = await api.call("task", "get", {"id": task["id"]})
    parse_time(got["deleted_at"])
    assert got["name"] == "doomed"
    assert got["command"] == task["command"]

    listed = await api.call("task", "list", {})
    assert [t["id"] for t in listed["items"]] == [keep["id"]]
    assert listed["total"] == 1

    everything = await api.call("task", "list", {"include_deleted": True})
    assert {t["id"] for t in everything["items"]} == {task["id"], keep["id"]}
    by_id = {t["id"]: t for t in everything["items"]}
    assert by_id[task["id"]]["deleted_at"] == got["deleted_at"]
    assert by_id[keep["id"]]["deleted_at"] is None


async def test_update_or_start_of_deleted_task_is_404(api, make_task):
    task = await make_task()
    await api.call("task", "delete", {"id": task["id"]})
    err = await api_error(api.call("task", "update", {"id": task["id"], "name": "zombie"}))
    assert err.code == 404
    err = await api_error(api.call("task", "start", {"id": task["id"]}))
    assert err.code == 404
    got = await api.call("task", "get", {"id": task["id"]})
    assert got["name"] == task["name"]


async def test_delete_twice_is_404(api, make_task):
    task = await make_task()
    await api.call("task", "delete", {"id": task["id"]})
    err = await api_error(api.call("task", "delete", {"id": task["id"]}))
    assert err.code == 404


async def test_delete_unknown_is_404(api):
    err = await api_error(api.call("task", "delete", {"id": "ghost"}))
    assert err.code == 404


async def test_delete_linked_task_is_409_naming_the_batches(api, make_task, make_batch):
    task = await make_task()
    other = await make_task(name="other")
    enabled = await make_batch([task["id"]], name="enabled", is_enabled=True)
    disabled = await make_batch([other["id"], task["id"]], name="disabled")
    unrelated = await make_batch([other["id"]], name="unrelated")

    err = await api_error(api.call("task", "delete", {"id": task["id"]}))
    assert err.code == 409
    assert sorted(err.details["linked"]) == sorted([enabled["id"], disabled["id"]])
    assert unrelated["id"] not in err.details["linked"]

    got = await api.call("task", "get", {"id": task["id"]})
    assert got["deleted_at"] is None
    batches = await api.call("batch", "list", {})
    assert batches["total"] == 3


async def test_force_delete_removes_task_and_linked_batches(api, make_task, make_batch):
    task = await make_task()
    other = await make_task(name="other")
    enabled = await make_batch([task["id"]], name="enabled", is_enabled=True)
    disabled = await make_batch([task["id"]], name="disabled")
    unrelated = await make_batch([other["id"]], name="unrelated")

    reply = await api.call("task", "delete", {"id": task["id"], "force": True})
    deleted = {(d["kind"], d["id"]) for d in reply["deleted"]}
    assert deleted == {("task", task["id"]), ("batch", enabled["id"]), ("batch", disabled["id"])}
    assert len(reply["deleted"]) == 3

    assert (await api.call("task", "get", {"id": task["id"]}))["deleted_at"] is not None
    for batch in (enabled, disabled):
        got = await api.call("batch", "get", {"id": batch["id"]})
        assert got["deleted_at"] is not None
        assert got["is_enabled"] is False
        assert got["next_run_at"] is None
    live = await api.call("batch", "list", {})
    assert [b["id"] for b in live["items"]] == [unrelated["id"]]
    assert (await api.call("task", "get", {"id": other["id"]}))["deleted_at"] is None


async def test_deleted_batch_does_not_keep_task_linked(api, make_task, make_batch):
    task = await make_task()
    batch = await make_batch([task["id"]])
    await api.call("batch", "delete", {"id": batch["id"]})
    reply = await api.call("task", "delete", {"id": task["id"]})
    assert reply == {"deleted": [{"kind": "task", "id": task["id"]}]}
