"""batch.create / get / list / update / delete / status against a real broker
(PROTOCOL.md, Batch): validation, schedules, next_run_at, enable/disable, soft delete."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from expectations import api_error, parse_time

from broker.errors import ApiError


def now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture
async def task(make_task) -> dict[str, Any]:
    return await make_task(name="step")


@pytest.fixture
def body(task) -> dict[str, Any]:
    """A valid batch.create body (disabled, daily at 03:00 UTC)."""
    return {
        "name": "nightly",
        "cron_expression": "0 3 * * *",
        "is_enabled": False,
        "run_on_startup": False,
        "actions": [{"task_id": task["id"]}],
    }


async def create(api, body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return await api.call("batch", "create", {**body, **fields})


# ---- create / get -------------------------------------------------------------------


async def test_create_round_trips_and_applies_defaults(api, make_task, body):
    second = await make_task(name="second")
    full = {
        **body,
        "id": "nightly-etl",
        "description": "runs the warehouse load",
        "timezone": "Europe/Berlin",
        "actions": [
            {"task_id": body["actions"][0]["task_id"], "params": {"day": "today"}, "continue_on_error": True},
            {"task_id": second["id"]},
        ],
        "pool": "etl",
        "concurrency": "replace",
        "catch_up": "all",
        "max_catch_up": 3,
        "owner": "data-team",
    }
    created = await api.call("batch", "create", full)
    for name in ("id", "name", "description", "cron_expression", "timezone", "pool", "concurrency", "catch_up",
                 "max_catch_up", "owner", "is_enabled", "run_on_startup"):
        assert created[name] == full[name], name
    assert created["actions"] == [
        {"task_id": full["actions"][0]["task_id"], "params": {"day": "today"}, "continue_on_error": True},
        {"task_id": second["id"], "params": {}, "continue_on_error": False},
    ]
    assert created["schedule"] is None
    parse_time(created["created_at"])
    assert created["updated_at"] == created["created_at"]
    assert created["deleted_at"] is None
    assert isinstance(created["version"], int) and created["version"] > 0

    got = await api.call("batch", "get", {"id": "nightly-etl"})
    assert got == created

    minimal = await create(api, body)
    assert len(minimal["id"]) == 26
    assert minimal["timezone"] == "UTC"
    assert minimal["concurrency"] == "forbid"
    assert minimal["catch_up"] == "last"
    assert minimal["pool"] is None


async def test_get_unknown_batch_is_404(api):
    err = await api_error(api.call("batch", "get", {"id": "ghost"}))
    assert err.code == 404


async def test_duplicate_batch_id_is_409(api, body):
    await create(api, body, id="once", name="first")
    err = await api_error(create(api, body, id="once", name="second"))
    assert err.code == 409
    assert (await api.call("batch", "get", {"id": "once"}))["name"] == "first"


# ---- required fields ----------------------------------------------------------------


def _drop(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


@pytest.mark.parametrize(
    ("mutate", "mentions"),
    [
        pytest.param(lambda b: _drop(b, "is_enabled"), ["is_enabled"], id="missing-is_enabled"),
        pytest.param(lambda b: _drop(b, "run_on_startup"), ["run_on_startup"], id="missing-run_on_startup"),
        pytest.param(lambda b: _drop(b, "actions"), ["actions"], id="missing-actions"),
        pytest.param(lambda b: _drop(b, "name"), ["name"], id="missing-name"),
        pytest.param(lambda b: {**b, "actions": []}, ["actions"], id="empty-actions"),
        pytest.param(lambda b: {**b, "actions": [{}]}, ["task_id"], id="action-without-task"),
        pytest.param(lambda b: {**b, "is_enabled": "true"}, ["is_enabled"], id="is_enabled-string"),
        pytest.param(lambda b: {**b, "is_enabled": 1}, ["is_enabled"], id="is_enabled-int"),
        pytest.param(lambda b: _drop(b, "cron_expression"), ["cron_expression", "schedule"], id="no-schedule"),
        pytest.param(lambda b: {**b, "schedule": {"hours": [3]}}, ["cron_expression", "schedule"], id="both"),
        pytest.param(lambda b: {**b, "concurrency": "sometimes"}, ["concurrency"], id="bad-concurrency"),
        pytest.param(lambda b: {**b, "catch_up": "some"}, ["catch_up"], id="bad-catch_up"),
        pytest.param(lambda b: {**b, "colour": "red"}, ["colour"], id="unknown-field"),
        pytest.param(lambda b: {**b, "id": "bad id"}, ["id"], id="bad-id"),
    ],
)
async def test_invalid_batch_is_400(api, body, mutate, mentions):
    err = await api_error(api.call("batch", "create", mutate(body)))
    assert err.code == 400
    for word in mentions:
        assert word in err.message, err.message
    assert (await api.call("batch", "list", {"include_deleted": True}))["total"] == 0


# ---- cron ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "stored"),
    [
        ("0 3 * * *", "0 3 * * *"),
        ("*/5 1-5 * * MON-FRI", "*/5 1-5 * * MON-FRI"),
        ("*/10 * * * * *", "*/10 * * * * *"),
        ("0 30 2 * * *", "0 30 2 * * *"),
        ("@daily", "@daily"),
        ("@hourly", "@hourly"),
        ("@DAILY", "@daily"),
        ("  0   3 * *  *  ", "0 3 * * *"),
        ("0\t3 * * *", "0 3 * * *"),
    ],
)
async def test_cron_forms_accepted(api, body, cron, stored):
    created = await create(api, body, cron_expression=cron)
    assert created["cron_expression"] == stored
    assert (await api.call("batch", "get", {"id": created["id"]}))["cron_expression"] == stored


@pytest.mark.parametrize(
    "cron",
    [
        pytest.param("61 * * * *", id="minute-61"),
        pytest.param("* 24 * * *", id="hour-24"),
        pytest.param("0 0 32 * *", id="day-32"),
        pytest.param("60 * * * * *", id="second-60"),
        pytest.param("* * * *", id="4-fields"),
        pytest.param("* * * * * * *", id="7-fields"),
        pytest.param("@reboot", id="unknown-macro"),
        pytest.param("garbage", id="garbage"),
        pytest.param("every day at 3", id="words"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
    ],
)
async def test_invalid_cron_is_400_naming_cron_expression(api, body, cron):
    err = await api_error(create(api, body, cron_expression=cron))
    assert err.code == 400
    assert "cron_expression" in err.message, err.message
    assert (await api.call("batch", "list", {"include_deleted": True}))["total"] == 0


async def test_cron_that_never_fires_does_not_break_the_api(api, body):
    # 30 February never comes: either refuse it (400) or accept it with no next run;
    # an internal error, or a batch.list that fails from then on, is wrong.
    try:
        try:
            created = await create(api, body, id="never", cron_expression="0 0 30 2 *", is_enabled=True)
        except ApiError as err:
            assert err.code == 400, err
            assert "cron_expression" in err.message
        else:
            assert created["next_run_at"] is None
        page = await api.call("batch", "list", {})
        assert page["total"] in (0, 1)
    finally:
        # Leave nothing enabled behind that a scheduler could trip over.
        try:
            await api.call("batch", "status", {"id": "never", "is_enabled": False})
        except ApiError:
            pass


async def test_invalid_cron_on_update_is_400(api, body):
    batch = await create(api, body)
    err = await api_error(api.call("batch", "update", {"id": batch["id"], "cron_expression": "61 * * * *"}))
    assert err.code == 400
    assert "cron_expression" in err.message
    assert (await api.call("batch", "get", {"id": batch["id"]}))["cron_expression"] == "0 3 * * *"


# ---- structured schedules -----------------------------------------------------------


async def test_structured_schedule_is_accepted_with_correct_next_run(api, body):
    del body["cron_expression"]
    before = now()
    created = await create(api, body, schedule={"hours": [3], "weekdays": [1, 5]}, is_enabled=True)
    assert created["cron_expression"] is None
    assert created["schedule"]["hours"] == [3]
    assert created["schedule"]["weekdays"] == [1, 5]
    nxt = parse_time(created["next_run_at"])
    assert before < nxt <= before + timedelta(days=7)
    assert (nxt.hour, nxt.minute, nxt.second) == (3, 0, 0)
    assert nxt.isoweekday() in (1, 5)  # Monday or Friday

    got = await api.call("batch", "get", {"id": created["id"]})
    assert got["schedule"] == created["schedule"]
    assert got["next_run_at"] == created["next_run_at"]
    await api.call("batch", "status", {"id": created["id"], "is_enabled": False})


@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param({"hours": [24]}, id="hour-24"),
        pytest.param({"hours": [-1]}, id="hour-negative"),
        pytest.param({"minutes": [60]}, id="minute-60"),
        pytest.param({"weekdays": [7]}, id="weekday-7"),
        pytest.param({"days_of_month": [0]}, id="day-0"),
        pytest.param({"days_of_month": [32]}, id="day-32"),
        pytest.param({"months": [13]}, id="month-13"),
        pytest.param({"months": [0]}, id="month-0"),
        pytest.param({"hours": ["3"]}, id="hour-string"),
        pytest.param({"hours": 3}, id="hours-not-a-list"),
        pytest.param({"hourz": [3]}, id="unknown-key"),
    ],
)
async def test_structured_schedule_out_of_range_is_400(api, body, schedule):
    del body["cron_expression"]
    err = await api_error(create(api, body, schedule=schedule))
    assert err.code == 400
    assert "schedule" in err.message, err.message


async def test_switch_from_cron_to_schedule_and_back_via_update(api, body):
    batch = await create(api, body, is_enabled=True)
    switched = await api.call("batch", "update", {"id": batch["id"], "schedule": {"hours": [5], "minutes": [15]}})
    assert switched["cron_expression"] is None
    assert switched["schedule"]["hours"] == [5]
    assert switched["schedule"]["minutes"] == [15]
    nxt = parse_time(switched["next_run_at"])
    assert (nxt.hour, nxt.minute) == (5, 15)

    back = await api.call("batch", "update", {"id": batch["id"], "cron_expression": "45 6 * * *"})
    assert back["schedule"] is None
    assert back["cron_expression"] == "45 6 * * *"
    nxt = parse_time(back["next_run_at"])
    assert (nxt.hour, nxt.minute) == (6, 45)
    await api.call("batch", "status", {"id": batch["id"], "is_enabled": False})


# ---- timezone -----------------------------------------------------------------------


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe", "Not A Zone", "", "+02:00"])
async def test_invalid_timezone_is_400(api, body, zone):
    err = await api_error(create(api, body, timezone=zone))
    assert err.code == 400
    assert "timezone" in err.message, err.message


# ---- actions ------------------------------------------------------------------------


async def test_actions_referring_to_unknown_or_deleted_tasks_are_400(api, make_task, body, task):
    gone = await make_task(name="gone")
    await api.call("task", "delete", {"id": gone["id"]})
    body["actions"] = [{"task_id": task["id"]}, {"task_id": gone["id"]}, {"task_id": "never-existed"}]
    err = await api_error(api.call("batch", "create", body))
    assert err.code == 400
    assert sorted(err.details["missing"]) == sorted([gone["id"], "never-existed"])
    assert (await api.call("batch", "list", {"include_deleted": True}))["total"] == 0


async def test_update_actions_to_deleted_task_is_400(api, make_task, body):
    batch = await create(api, body)
    gone = await make_task(name="gone")
    await api.call("task", "delete", {"id": gone["id"]})
    err = await api_error(api.call("batch", "update", {"id": batch["id"], "actions": [{"task_id": gone["id"]}]}))
    assert err.code == 400
    assert err.details["missing"] == [gone["id"]]
    assert (await api.call("batch", "get", {"id": batch["id"]}))["actions"] == batch["actions"]


# ---- next_run_at --------------------------------------------------------------------


async def test_next_run_at_for_cron_in_berlin(api, body):
    before = now()
    created = await create(api, body, timezone="Europe/Berlin", is_enabled=True)
    nxt = parse_time(created["next_run_at"])
    assert before < nxt <= before + timedelta(hours=24)
    assert nxt.hour in (1, 2)  # 03:00 in Berlin is 01:00 or 02:00 UTC (CEST / CET)
    assert (nxt.minute, nxt.second, nxt.microsecond) == (0, 0, 0)
    local = nxt.astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (3, 0)

    got = await api.call("batch", "get", {"id": created["id"]})
    assert got["next_run_at"] == created["next_run_at"]
    listed = await api.call("batch", "list", {})
    assert listed["items"][0]["next_run_at"] == created["next_run_at"]
    await api.call("batch", "status", {"id": created["id"], "is_enabled": False})


async def test_next_run_at_for_seconds_cron(api, body):
    before = now()
    created = await create(api, body, cron_expression="*/10 * * * * *", is_enabled=True)
    after = now()
    nxt = parse_time(created["next_run_at"])
    assert before < nxt <= after + timedelta(seconds=10)
    assert nxt.second % 10 == 0 and nxt.microsecond == 0
    await api.call("batch", "status", {"id": created["id"], "is_enabled": False})


async def test_next_run_at_for_hourly_macro(api, body):
    before = now()
    created = await create(api, body, cron_expression="@hourly", is_enabled=True)
    nxt = parse_time(created["next_run_at"])
    assert before < nxt <= before + timedelta(hours=1)
    assert (nxt.minute, nxt.second) == (0, 0)
    await api.call("batch", "status", {"id": created["id"], "is_enabled": False})


async def test_next_run_at_is_null_when_disabled(api, body):
    created = await create(api, body)
    assert created["is_enabled"] is False
    assert created["next_run_at"] is None
    assert (await api.call("batch", "get", {"id": created["id"]}))["next_run_at"] is None
    assert (await api.call("batch", "list", {}))["items"][0]["next_run_at"] is None


async def test_next_run_at_is_recomputed_on_update(api, body):
    created = await create(api, body, is_enabled=True)
    first = parse_time(created["next_run_at"])
    assert (first.hour, first.minute) == (3, 0)

    updated = await api.call("batch", "update", {"id": created["id"], "cron_expression": "30 4 * * *"})
    second = parse_time(updated["next_run_at"])
    assert (second.hour, second.minute) == (4, 30)
    assert updated["version"] > created["version"]

    moved = await api.call("batch", "update", {"id": created["id"], "timezone": "Asia/Tokyo"})
    third = parse_time(moved["next_run_at"])
    assert (third.hour, third.minute) == (19, 30)  # 04:30 in Tokyo (UTC+9, no DST)

    got = await api.call("batch", "get", {"id": created["id"]})
    assert got["next_run_at"] == moved["next_run_at"]
    await api.call("batch", "status", {"id": created["id"], "is_enabled": False})


# ---- update -------------------------------------------------------------------------


async def test_update_with_stale_version_is_409(api, body):
    batch = await create(api, body)
    changed = await api.call("batch", "update", {"id": batch["id"], "version": batch["version"], "name": "v2"})
    err = await api_error(api.call("batch", "update", {"id": batch["id"], "version": batch["version"], "name": "v3"}))
    assert err.code == 409
    assert err.details["version"] == changed["version"]
    assert (await api.call("batch", "get", {"id": batch["id"]}))["name"] == "v2"


async def test_get_modify_update_ignores_read_only_fields(api, body):
    batch = await create(api, body, is_enabled=True)
    got = await api.call("batch", "get", {"id": batch["id"]})
    got["description"] = "edited"
    got["next_run_at"] = "2000-01-01T00:00:00.000Z"
    got["created_at"] = "2000-01-01T00:00:00.000Z"
    updated = await api.call("batch", "update", got)
    assert updated["description"] == "edited"
    assert updated["created_at"] == batch["created_at"]
    assert parse_time(updated["next_run_at"]) > now()
    assert updated["version"] > batch["version"]
    await api.call("batch", "status", {"id": batch["id"], "is_enabled": False})


async def test_update_unknown_batch_is_404(api):
    err = await api_error(api.call("batch", "update", {"id": "ghost", "name": "x"}))
    assert err.code == 404


@pytest.mark.parametrize("bad_id", ["bad id", "*", "trailing."])
async def test_update_with_invalid_id_is_400(api, bad_id):
    err = await api_error(api.call("batch", "update", {"id": bad_id, "name": "x"}))
    assert err.code == 400


# ---- status -------------------------------------------------------------------------


async def test_status_enables_and_disables(api, body):
    batch = await create(api, body)
    enabled = await api.call("batch", "status", {"id": batch["id"], "is_enabled": True})
    assert enabled["is_enabled"] is True
    assert parse_time(enabled["next_run_at"]) > now()
    assert enabled["version"] > batch["version"]
    assert (await api.call("batch", "get", {"id": batch["id"]}))["is_enabled"] is True

    disabled = await api.call("batch", "status", {"id": batch["id"], "is_enabled": False, "version": enabled["version"]})
    assert disabled["is_enabled"] is False
    assert disabled["next_run_at"] is None
    assert disabled["version"] > enabled["version"]
    # everything else is untouched
    for name in ("name", "cron_expression", "actions", "timezone", "run_on_startup"):
        assert disabled[name] == batch[name]


async def test_status_with_stale_version_is_409(api, body):
    batch = await create(api, body)
    enabled = await api.call("batch", "status", {"id": batch["id"], "is_enabled": True})
    err = await api_error(api.call("batch", "status", {"id": batch["id"], "is_enabled": False, "version": batch["version"]}))
    assert err.code == 409
    assert err.details["version"] == enabled["version"]
    assert (await api.call("batch", "get", {"id": batch["id"]}))["is_enabled"] is True
    await api.call("batch", "status", {"id": batch["id"], "is_enabled": False})


async def test_status_needs_is_enabled(api, body):
    batch = await create(api, body)
    err = await api_error(api.call("batch", "status", {"id": batch["id"]}))
    assert err.code == 400
    err = await api_error(api.call("batch", "status", {"id": "ghost", "is_enabled": True}))
    assert err.code == 404


# ---- delete -------------------------------------------------------------------------


async def test_delete_enabled_batch_is_409(api, body):
    batch = await create(api, body, is_enabled=True)
    err = await api_error(api.call("batch", "delete", {"id": batch["id"]}))
    assert err.code == 409
    got = await api.call("batch", "get", {"id": batch["id"]})
    assert got["deleted_at"] is None
    assert got["is_enabled"] is True
    await api.call("batch", "status", {"id": batch["id"], "is_enabled": False})


async def test_delete_disabled_batch_is_soft_and_hidden(api, body):
    batch = await create(api, body, name="doomed")
    kept = await create(api, body, name="kept")
    reply = await api.call("batch", "delete", {"id": batch["id"]})
    assert reply == {"deleted": [{"kind": "batch", "id": batch["id"]}]}

    got = await api.call("batch", "get", {"id": batch["id"]})
    parse_time(got["deleted_at"])
    assert got["name"] == "doomed"

    live = await api.call("batch", "list", {})
    assert [b["id"] for b in live["items"]] == [kept["id"]]
    assert live["total"] == 1
    everything = await api.call("batch", "list", {"include_deleted": True})
    assert {b["id"] for b in everything["items"]} == {batch["id"], kept["id"]}

    for verb, request in (
        ("delete", {"id": batch["id"]}),
        ("update", {"id": batch["id"], "name": "zombie"}),
        ("status", {"id": batch["id"], "is_enabled": True}),
    ):
        err = await api_error(api.call("batch", verb, request))
        assert err.code == 404, verb
    assert (await api.call("batch", "get", {"id": batch["id"]}))["is_enabled"] is False


async def test_delete_unknown_batch_is_404(api):
    err = await api_error(api.call("batch", "delete", {"id": "ghost"}))
    assert err.code == 404
