"""The red team's attacks, one test each, as a user of org `acme` with a legitimate
account would try them against org `umbrella` (conftest: accounts per org, services as
processes). Each test asserts the refusal *and* that umbrella's tasks, batches,
executions, history and webhooks are as they were; then what a careful attacker would
try next.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from nats.aio.client import Client

from broker import ids
from broker.client import ApiClient
from broker.connect import denials_of
from broker.timestamps import to_iso
from expectations import eventually, expect_error
from redteam import WEBHOOK_SECRETS, service_counters

QUICK = 2.0


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def umbrella_world(admin: ApiClient, webhook_url: str | None = None) -> dict[str, Any]:
    """Umbrella's task (with a webhook when given), a disabled batch of it, and a run of it
    that is still running."""
    notify = {"notify": {"on": "always", "recipients": [webhook_url]}} if webhook_url else {}
    task = await admin.call("task", "create", {"id": new_id("report"), "name": "umbrella report",
                                               "command": ["sh", "-c", "echo umbrella-report; sleep 20"], **notify})
    batch = await admin.call("batch", "create", {"id": new_id("nightly"), "name": "umbrella nightly",
                                                 "cron_expression": "0 3 * * *", "is_enabled": False,
                                                 "run_on_startup": False, "actions": [{"task_id": task["id"]}]})
    running = (await admin.call("task", "start", {"id": task["id"]}))["execution_id"]
    await eventually(lambda: _status_is(admin, running, "running"), 15, 0.05, "umbrella's run running")
    return {"task": task, "batch": batch, "running": running}


async def snapshot(admin: ApiClient) -> dict[str, Any]:
    """What umbrella sees of itself: definitions with their versions, runs, runners."""
    tasks = (await admin.call("task", "list", {"per_page": 1000, "include_deleted": True}))["items"]
    batches = (await admin.call("batch", "list", {"per_page": 1000, "include_deleted": True}))["items"]
    runs = (await admin.call("exec", "list", {"per_page": 1000}))["items"]
    runners = (await admin.call("runner", "list", {}))["items"]
    return {
        "tasks": {t["id"]: (t["version"], t["command"], t["params"], t["deleted_at"]) for t in tasks},
        "batches": {b["id"]: (b["version"], b["is_enabled"], b["actions"]) for b in batches},
        "runs": {e["id"]: (e["status"], e["cancel_requested"], e["task_id"], e["batch_id"]) for e in runs},
        "runners": sorted(r["id"] for r in runners),
    }


async def _status_is(client: ApiClient, execution_id: str, status: str) -> bool:
    return (await client.call("exec", "get", {"id": execution_id}))["status"] == status


async def settle(*connections: Client) -> None:
    """Let whatever was published reach the services and their writes land."""
    for nc in connections:
        await nc.flush()
    await asyncio.sleep(1.0)


# ---- 1. reply-subject injection -------------------------------------------------------------


async def test_a_reply_subject_cannot_write_into_another_orgs_keys_triggers_or_runs(api, login):
    umbrella = await api("umbrella-admin")
    world = await umbrella_world(umbrella)
    before = await snapshot(umbrella)
    acme_admin = await api("acme-admin")
    planted = await acme_admin.call("task", "create", {"id": world["task"]["id"], "name": "planted",
                                                       "command": ["sh", "-c", "echo acme-code-ran"]})
    targets = [
        f"$KV.bd_tasks.umbrella.{world['task']['id']}",  # replace umbrella's task with acme's definition
        f"$KV.bd_batches.umbrella.{new_id('planted')}",  # plant a batch umbrella's scheduler would fire
        f"bd.umbrella.trigger.{world['batch']['id']}",  # start umbrella's batch with acme's context
        f"bd.umbrella.ctl.exec.{world['running']}.cancel",  # cancel umbrella's run
        f"$KV.bd_execs.umbrella.{world['running']}",  # junk in umbrella's live state
        f"$KV.bd_runners.umbrella.{new_id('junk')}",  # junk in umbrella's runner registry
        "$JS.API.STREAM.DELETE.BD_EVENTS",  # the services' own JetStream API
        f"_INBOX_umbrella.admin.{uuid.uuid4().hex}",  # another org's inbox
        "_INBOX.anything",  # the services' inboxes
    ]
    viewer = await login("acme-viewer")
    runner = await login("acme-runner")
    for target in targets:
        # what every API endpoint answers (a viewer's reads, served by the broker and the store) ...
        for verb, body in (("task.get", {"id": planted["id"]}), ("task.list", {}), ("runner.list", {}),
                           ("exec.logs", {"id": world["running"]}), ("batch.next", {"id": "x"})):
            await viewer.publish(f"bd.acme.api.{verb}", json.dumps(body).encode(), reply=target)
        # ... and what JetStream answers a runner: a direct get of its own key, the ack
        # of an event it publishes, a pull of its consumer
        await runner.publish("$BD.JS.API.DIRECT.GET.KV_bd_execs.$KV.bd_execs.acme.x", b"", reply=target)
        await runner.publish("bd.acme.evt.exec.x.progress", b"{}", reply=target)
        await runner.publish("$BD.JS.API.CONSUMER.MSG.NEXT.BD_RUNS.runner_4_acme_default", b'{"batch":1}',
                             reply=target)
    await settle(viewer, runner)

    assert await snapshot(umbrella) == before  # nothing written, started or canceled
    assert (await umbrella.call("exec", "get", {"id": world["running"]}))["status"] == "running"
    # umbrella's operator starts its own task: umbrella's command runs, on umbrella's runner
    operator = await api("umbrella-operator")
    started = (await operator.call("task", "start", {"id": world["task"]["id"]}))["execution_id"]
    await eventually(lambda: _status_is(umbrella, started, "running"), 15, 0.05, "umbrella's second run")
    logs = await eventually(lambda: _log_lines(umbrella, started), 15, 0.1, "its first line stored")
    assert logs == ["umbrella-report"]
    assert (await umbrella.call("exec", "get", {"id": started}))["runner_id"] == "umbrella-runner-1"
    for execution_id in (world["running"], started):
        await umbrella.call("exec", "cancel", {"id": execution_id})


async def _log_lines(client: ApiClient, execution_id: str) -> list[str]:
    return [line["msg"] for line in (await client.call("exec", "logs", {"id": execution_id}))["items"]]


async def test_a_request_with_a_reply_subject_that_is_no_inbox_is_dropped_and_counted(api, login):
    """Within the services' account (other services, monitoring) a reply subject that is
    not an inbox is not answered either: a handler's answer must never become a write."""
    monitor = await login("bd-monitor")
    before = (await service_counters(monitor, "batchdeck")).get("requests_refused", 0)
    broker = await login("bd-broker", inbox_prefix=None)
    umbrella = await api("umbrella-admin")
    task = await umbrella.call("task", "create", {"id": new_id("kept"), "name": "kept", "command": ["true"]})
    await broker.publish("bd.umbrella.api.task.get", json.dumps({"id": task["id"]}).encode(),
                         reply=f"$KV.bd_tasks.umbrella.{new_id('x')}")
    await settle(broker)
    counted = await service_counters(monitor, "batchdeck")
    assert counted.get("requests_refused", 0) == before + 1
    assert (await umbrella.call("task", "list", {"per_page": 1000}))["total"] >= 1  # no junk record: lists answer


# ---- 2. the org taken from the body --------------------------------------------------------


async def test_an_event_body_naming_another_org_is_refused_not_filed_or_notified(api, login, webhooks):
    umbrella = await api("umbrella-admin")
    path = f"/{new_id('umbrella-hook')}"
    task = await umbrella.call("task", "create", {"id": new_id("notified"), "name": "notified",
                                                  "command": ["true"],
                                                  "notify": {"on": "always", "recipients": [webhooks.url + path]}})
    monitor = await login("bd-monitor")
    store_before = (await service_counters(monitor, "batchdeck-store")).get("events_refused", 0)
    forged_id = ids.new_id()
    now = to_iso(datetime.now(timezone.utc))
    forged = {"id": forged_id, "org": "umbrella", "task_id": task["id"], "name": "forged", "status": "failed",
              "queued_at": now, "started_at": now, "finished_at": now, "error": "acme was here", "version": 1,
              "actions": [{"index": 0, "task_id": task["id"], "status": "failed"}]}
    runner = await login("acme-runner")
    # on acme's own subject (the only one its runner may publish on), saying umbrella
    await runner.jetstream(prefix="$BD.JS.API").publish(f"bd.acme.evt.exec.{forged_id}.state",
                                                        json.dumps(forged).encode())

    await eventually(lambda: _counter_above(monitor, "batchdeck-store", "events_refused", store_before), 10, 0.2,
                     "the store's refusal counted")
    for org in ("umbrella", "acme"):
        admin = await api(f"{org}-admin")
        rows = await admin.call("history", "sql", {"sql": "SELECT count(*) FROM executions WHERE id = ?",
                                                   "params": [forged_id]})
        assert rows["rows"] == [[0]], org
    await asyncio.sleep(1.0)
    assert webhooks.received[path] == []  # nobody posted umbrella's webhook, signed or not
    # a real failed run of umbrella's task still reaches its webhook, signed with umbrella's secret
    execution_id = (await umbrella.call("task", "start", {"id": task["id"]}))["execution_id"]
    async def posted() -> bool:
        return bool(webhooks.received[path])

    await eventually(posted, 15, 0.1, "umbrella's own notification")
    headers, body = webhooks.received[path][0]
    assert json.loads(body)["id"] == execution_id
    from notifier.webhook import verify
    assert verify(WEBHOOK_SECRETS["umbrella"].encode(), body, headers["x-batchdeck-signature-256"])


async def _counter_above(monitor: Client, service: str, name: str, before: float) -> bool:
    return (await service_counters(monitor, service)).get(name, 0) > before


# ---- 3. runs and credentials of another org ------------------------------------------------


async def test_a_runner_reads_and_consumes_its_own_org_only(api, login):
    umbrella = await api("umbrella-admin")
    runner = await login("acme-runner")
    denials = denials_of(runner)
    umbrella_filter = "bd.umbrella.run.default"
    consumer_body = {"stream_name": "BD_RUNS", "config": {"name": "runner_4_acme_default",
                                                           "durable_name": "runner_4_acme_default",
                                                           "filter_subject": umbrella_filter,
                                                           "ack_policy": "explicit"}}
    refused_subjects = [
        # re-point its pool's consumer at umbrella's runs: the create subject pins the filter
        f"$BD.JS.API.CONSUMER.CREATE.BD_RUNS.runner_4_acme_default.{umbrella_filter}",
        "$BD.JS.API.CONSUMER.DURABLE.CREATE.BD_RUNS.runner_4_acme_default",
        "$BD.JS.API.CONSUMER.CREATE.BD_RUNS.runner_8_umbrella_default.bd.umbrella.run.default",
        "$BD.JS.API.CONSUMER.MSG.NEXT.BD_RUNS.runner_8_umbrella_default",
        # read other orgs' ids and lines
        "$BD.JS.API.STREAM.INFO.BD_EVENTS",
        "$BD.JS.API.STREAM.MSG.GET.BD_EVENTS",
        "$BD.JS.API.DIRECT.GET.KV_bd_execs.$KV.bd_execs.umbrella.x",
        "$BD.JS.API.DIRECT.GET.BD_EVENTS.bd.umbrella.evt.exec.x.log",
        "$BD.JS.API.DIRECT.GET.KV_bd_tasks.$KV.bd_tasks.acme.x",
        # write umbrella's keys
        "$KV.bd_execs.umbrella.x",
        "bd.umbrella.evt.exec.x.state",
    ]
    for subject in refused_subjects:
        with denials.watch(lambda d, s=subject.lower(): d.operation == "publish" and d.subject == s) as report:
            await runner.publish(subject, json.dumps(consumer_body).encode(), reply=runner.new_inbox())
            await asyncio.wait_for(report, QUICK)
    # its own pool's consumer with another filter in the body: JetStream refuses the mismatch
    reply = await runner.request("$BD.JS.API.CONSUMER.CREATE.BD_RUNS.runner_4_acme_default.bd.acme.run.default",
                                 json.dumps(consumer_body).encode(), timeout=QUICK)
    assert "error" in json.loads(reply.data), reply.data
    # its own account has no JetStream at all
    reply = await runner.request("$JS.API.INFO", b"", timeout=QUICK)
    assert json.loads(reply.data)["error"]["err_code"] == 10039

    # umbrella's runs still go to umbrella's runner, and acme's consumer still filters acme's runs
    task = await umbrella.call("task", "create", {"id": new_id("own"), "name": "own", "command": ["echo", "ours"]})
    execution_id = (await umbrella.call("task", "start", {"id": task["id"]}))["execution_id"]
    await eventually(lambda: _status_is(umbrella, execution_id, "succeeded"), 15, 0.1, "umbrella's run")
    info = await runner.request("$BD.JS.API.CONSUMER.INFO.BD_RUNS.runner_4_acme_default", b"", timeout=QUICK)
    assert json.loads(info.data)["config"]["filter_subject"] == "bd.acme.run.default"


async def test_a_task_sees_no_credentials_of_its_runner(api, system):
    """The runner was started with its URL and password in BATCHDECK_NATS_URL (conftest):
    a task looks where a task can look: its environment, its runner's command line and
    its runner's first environment."""
    admin = await api("acme-admin")
    script = ("import os, json; ppid = os.getppid(); "
              "read = lambda p: open(p, 'rb').read().decode(errors='replace'); "
              "print(json.dumps({'env': dict(os.environ), 'cmdline': read(f'/proc/{ppid}/cmdline'), "
              "'environ': read(f'/proc/{ppid}/environ')}))")
    task = await admin.call("task", "create", {"id": new_id("peek"), "name": "peek",
                                               "command": ["python3", "-c", script]})
    execution_id = (await admin.call("task", "start", {"id": task["id"]}))["execution_id"]
    await eventually(lambda: _status_is(admin, execution_id, "succeeded"), 15, 0.1, "the peek")
    seen = await eventually(lambda: _log_lines(admin, execution_id), 15, 0.1, "its line stored")
    looked = json.loads(seen[0])
    password = system.url("acme-runner").split(":")[2].split("@")[0]
    assert "runner" in looked["cmdline"]  # it did read its runner's command line ...
    for place in ("env", "cmdline", "environ"):
        assert password not in json.dumps(looked[place]), place  # ... and found no password anywhere
    assert "BATCHDECK_NATS_URL" not in looked["env"]


# ---- 4. within one org: who may change what runs -------------------------------------------


async def test_an_operator_cannot_replace_what_a_task_runs(api):
    admin = await api("acme-admin")
    operator = await api("acme-operator")
    shell = await admin.call("task", "create", {"id": new_id("shell"), "name": "backup", "kind": "module",
                                                "module": "shell", "params": {"script": "echo backup-by-admin"}})
    tool = await admin.call("task", "create", {"id": new_id("tool"), "name": "sync",
                                               "command": ["{{ tool }}", "--to", "{{ target }}"],
                                               "params": {"tool": "echo", "target": "/srv"},
                                               "overridable": [{"name": "target", "pattern": "/srv/[a-z]+"}]})
    await expect_error(403, operator.call("task", "start", {"id": shell["id"], "params": {"script": "id"}}))
    await expect_error(403, operator.call("task", "start", {"id": tool["id"], "params": {"tool": "/bin/sh"}}))
    await expect_error(400, operator.call("task", "start", {"id": tool["id"], "params": {"target": "/etc"}}))
    # the context fills arguments, never the program
    started = (await operator.call("task", "start", {"id": tool["id"], "params": {"target": "/srv/db"},
                                                     "context": {"tool": "/bin/evil"}}))["execution_id"]
    await eventually(lambda: _status_is(admin, started, "succeeded"), 15, 0.1, "the sync")
    assert await eventually(lambda: _log_lines(admin, started), 15, 0.1, "its line") == ["--to /srv/db"]
    assert (await admin.call("task", "get", {"id": shell["id"]}))["params"] == {"script": "echo backup-by-admin"}


# ---- 5. SQL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "WITH duckdb_tables AS (SELECT * FROM duckdb_tables) SELECT table_name, estimated_size FROM duckdb_tables",
    "WITH pg_settings AS (SELECT * FROM pg_settings) SELECT * FROM pg_settings",
    "SELECT current_setting('temp_directory')",
    "SELECT stats(msg) FROM logs",
    "SELECT * FROM information_schema.tables",
    "SELECT pg_get_viewdef(0)",
])
async def test_sql_reaches_no_catalog_no_setting_and_no_other_orgs_statistics(api, sql):
    admin = await api("acme-admin")
    await expect_error(400, admin.call("history", "sql", {"sql": sql}))


async def test_sql_counts_only_the_callers_rows(api):
    umbrella = await api("umbrella-admin")
    task = await umbrella.call("task", "create", {"id": new_id("count"), "name": "count", "command": ["true"]})
    execution_id = (await umbrella.call("task", "start", {"id": task["id"]}))["execution_id"]
    await eventually(lambda: _history_has(umbrella, execution_id), 20, 0.2, "umbrella's run in the history")
    acme = await api("acme-admin")
    rows = await acme.call("history", "sql", {"sql": "SELECT count(*) FROM executions WHERE id = ?",
                                              "params": [execution_id]})
    assert rows["rows"] == [[0]]
    orgs = await acme.call("history", "sql", {"sql": "SELECT DISTINCT org FROM executions"})
    assert orgs["rows"] in ([], [["acme"]])


async def _history_has(client: ApiClient, execution_id: str) -> bool:
    rows = await client.call("history", "sql", {"sql": "SELECT count(*) FROM executions WHERE id = ?",
                                                "params": [execution_id]})
    return rows["rows"] == [[1]]


# ---- 6. colliding ids --------------------------------------------------------------------------


async def test_another_org_cannot_pre_empt_a_tick_or_a_line_by_its_id(api, login):
    umbrella = await api("umbrella-admin")
    task = await umbrella.call("task", "create", {"id": new_id("tick"), "name": "tick",
                                                  "command": ["sh", "-c", "echo one; echo two"]})
    batch = await umbrella.call("batch", "create", {"id": new_id("every5"), "name": "every 5 s",
                                                    "cron_expression": "*/5 * * * * *", "is_enabled": True,
                                                    "run_on_startup": False, "concurrency": "forbid",
                                                    "actions": [{"task_id": task["id"]}]})
    # umbrella's next tick at least 2 s away: its key, trigger id and execution id are all
    # computable from what acme may guess (batch id, schedule, org)
    now = datetime.now(timezone.utc)
    tick = (now + timedelta(seconds=2)).replace(microsecond=0)
    tick += timedelta(seconds=(5 - tick.second % 5) % 5)
    key = f"umbrella.{batch['id']}@{to_iso(tick)}"
    trigger_id = ids.tick_id(key, int(tick.timestamp() * 1000))
    execution_id = ids.derived_id(trigger_id, "exec:umbrella")
    operator = await login("acme-operator")
    runner = await login("acme-runner")
    js = runner.jetstream(prefix="$BD.JS.API")
    # a trigger on acme's own subject under umbrella's tick's id and message id ...
    body = {"trigger_id": trigger_id, "batch_id": batch["id"], "source": "cron", "scheduled_at": to_iso(tick)}
    await operator.publish(f"bd.acme.trigger.{batch['id']}", json.dumps(body).encode(),
                           headers={"Nats-Msg-Id": key})
    # ... and log lines of umbrella's run under the message ids its lines would have had
    for idx in (1, 2):
        for msg_id in (f"umbrella.{execution_id}.log.{idx}", f"{execution_id}.log.{idx}"):
            await js.publish(f"bd.acme.evt.exec.{execution_id}.log", json.dumps(
                {"idx": idx, "ts": to_iso(now), "msg": "acme's line"}).encode(), headers={"Nats-Msg-Id": msg_id})
    await operator.flush()

    # umbrella's tick ran as its own, with its own lines, and the next one too
    async def ran() -> Any:
        page = await umbrella.call("exec", "list", {"filter": {"batch_id": batch["id"]}, "per_page": 100})
        done = [e for e in page["items"] if e["status"] == "succeeded"]
        return done if len(done) >= 2 else None

    done = await eventually(ran, 25, 0.2, "two of umbrella's ticks run")
    await umbrella.call("batch", "status", {"id": batch["id"], "is_enabled": False})
    assert execution_id in [e["id"] for e in done], "the tick acme aimed at did not run"
    assert await eventually(lambda: _log_lines(umbrella, execution_id), 15, 0.1, "its lines") == ["one", "two"]
    acme = await api("acme-admin")
    assert execution_id not in [e["id"] for e in (await acme.call("exec", "list", {"per_page": 1000}))["items"]]


# ---- 7. the notifier as a probe -------------------------------------------------------------------


async def test_a_webhook_cannot_probe_internal_addresses_or_read_what_answered(api, system, webhooks):
    admin = await api("acme-admin")
    nats_port = f"http://127.0.0.1:{system.port}/"
    path = f"/{new_id('banner')}"
    webhooks.status, webhooks.body = 404, b"INFO {\"server_id\":\"SECRET-BANNER\"}"
    try:
        task = await admin.call("task", "create", {
            "id": new_id("probe"), "name": "probe", "command": ["false"],
            "notify": {"on": "failure", "recipients": [nats_port, "http://169.254.169.254/latest/meta-data/",
                                                       webhooks.url + path]}})
        execution_id = (await admin.call("task", "start", {"id": task["id"]}))["execution_id"]

        async def settled() -> Any:
            rows = await admin.call("history", "sql", {
                "sql": "SELECT target, status, error FROM notifications WHERE execution_id = ? ORDER BY target",
                "params": [execution_id]})
            return rows["rows"] if len(rows["rows"]) == 3 and all(r[1] == "failed" for r in rows["rows"]) else None

        rows = {target: error for target, _, error in await eventually(settled, 60, 0.5, "three failed deliveries")}
    finally:
        webhooks.status, webhooks.body = 200, b""
    assert "resolves to 127.0.0.1, a loopback address" in rows[nats_port]
    assert "a link-local address" in rows["http://169.254.169.254/latest/meta-data/"]
    assert "answered 404" in rows[webhooks.url + path]
    assert not any("SECRET-BANNER" in error or "INFO" in error for error in rows.values()), rows


# ---- 8. bytes a process cannot take, far-future fire times, duplicate keys --------------------


async def test_a_nul_byte_fails_at_the_start_and_a_published_trigger_with_one_runs_nothing(api, login):
    admin = await api("acme-admin")
    task = await admin.call("task", "create", {"id": new_id("nul"), "name": "nul", "command": ["echo", "{{ v }}"]})
    batch = await admin.call("batch", "create", {"id": new_id("nulb"), "name": "nul", "cron_expression": "0 3 * * *",
                                                 "is_enabled": True, "run_on_startup": False,
                                                 "actions": [{"task_id": task["id"]}]})
    error = await expect_error(400, admin.call("task", "start", {"id": task["id"], "context": {"v": "a\x00b"}}))
    assert "NUL byte" in error.message
    operator = await login("acme-operator")
    triggers: asyncio.Queue[Any] = asyncio.Queue()
    await operator.subscribe(f"bd.acme.evt.trigger.{batch['id']}", cb=triggers.put)
    body = {"trigger_id": ids.new_id(), "batch_id": batch["id"], "source": "manual", "context": {"v": "a\x00b"}}
    await operator.publish(f"bd.acme.trigger.{batch['id']}", json.dumps(body).encode())
    refused = json.loads((await asyncio.wait_for(triggers.get(), 10)).data)
    assert refused["execution_id"] is None and "NUL byte" in refused["error"]
    assert (await admin.call("exec", "list", {"filter": {"batch_id": batch["id"]}}))["total"] == 0
    await admin.call("batch", "status", {"id": batch["id"], "is_enabled": False})


async def test_far_future_fire_times_and_duplicate_keys_are_answered_not_500(api, login):
    admin = await api("acme-admin")
    task = await admin.call("task", "create", {"id": new_id("rare"), "name": "rare", "command": ["true"]})
    batch = await admin.call("batch", "create", {"id": new_id("rare"), "name": "rare",
                                                 "cron_expression": "0 0 29 2 */7", "is_enabled": False,
                                                 "run_on_startup": False, "actions": [{"task_id": task["id"]}]})
    times = (await admin.call("batch", "next", {"id": batch["id"], "count": 1000}))["items"]
    # every time that exists before the year 10 000 (`*/7` is Sunday and starts with `*`, so
    # both day fields must match: a February 29th that is a Sunday, every 28 years or so)
    assert 0 < len(times) < 1000 and times == sorted(times) and times[-1].startswith("99")
    nc = await login("acme-admin")
    reply = await nc.request("bd.acme.api.task.get", b'{"id": "a", "id": "b"}', timeout=QUICK)
    assert reply.headers["Nats-Service-Error-Code"] == "400" and "appears twice" in reply.headers["Nats-Service-Error"]


# ---- next: what a careful attacker tries after ---------------------------------------------------


async def test_an_org_user_has_no_jetstream_and_no_way_to_the_services_account(login):
    for user in ("acme-viewer", "acme-operator", "acme-admin"):
        nc = await login(user)
        denials = denials_of(nc)
        # its account has no JetStream: nothing to watch, list or create
        for subject in ("$JS.API.STREAM.NAMES", "$BD.JS.API.STREAM.NAMES", "$BD.JS.API.STREAM.INFO.KV_bd_tasks",
                        "$KV.bd_tasks.acme.x", "$SRV.PING", "bd.acme.run.default", "bd.acme.ctl.exec.x.cancel"):
            with denials.watch(lambda d, s=subject.lower(): d.operation == "publish" and d.subject == s) as report:
                await nc.publish(subject, b"{}", reply=nc.new_inbox())
                await asyncio.wait_for(report, QUICK)
        # a wildcard subscription to everything sees nothing of another org
        await nc.subscribe(">")
        await asyncio.wait_for(_denied(denials, "subscribe", ">"), QUICK)


async def _denied(denials: Any, operation: str, subject: str) -> None:
    while denials.latest(lambda d: d.is_for(operation, subject)) is None:
        await asyncio.sleep(0.02)


def test_an_org_added_as_the_readme_says_gets_only_its_own_grants():
    """The generated file: every grant of an org's account names that org (or its own
    consumers); no wildcard org token, no other org."""
    from batchdeck.nats_config import Org, grants, user_permissions

    umbrella = Org("umbrella", ("default", "gpu"))
    granted = grants(umbrella)
    for subject in granted.services + granted.streams + granted.multi_reply + granted.returned:
        assert "umbrella" in subject, subject
        assert "bd.*" not in subject and ".acme." not in subject
    for role in ("viewer", "operator", "admin", "runner"):
        permissions = user_permissions(umbrella, role)
        for subject in permissions["publish"] + permissions["subscribe"]:
            assert "umbrella" in subject or subject in ("$JS.API.INFO", "$SRV.>"), (role, subject)
    digest = hashlib.sha256(json.dumps(user_permissions(umbrella, "runner")).encode()).hexdigest()
    assert digest  # deterministic: the same org makes the same grants
