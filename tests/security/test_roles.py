"""Roles within an org, enforced by the NATS server: what a viewer, an operator and an
admin of `acme` may do through the API, and that what one may not do never reaches a
service (the server refuses it, and the client says so at once: 403, not a timeout).
The setup is the security suite's (conftest): accounts per org, services as processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

import pytest
from nats.aio.client import Client

from broker.client import ApiClient
from broker.connect import Denial, denials_of
from broker.errors import ApiError, Forbidden
from expectations import eventually

QUICK = 2.0
"""A refused request must fail well within this (seconds); the API's timeout is 10 s."""
SLEEPER = {"name": "sleeper", "command": ["sleep", "30"]}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def refused(call: Any, subject: str, operation: str = "publish") -> Forbidden:
    """Await an API call the server must refuse: a Forbidden naming the operation and the
    subject, long before the API's timeout."""
    started = time.monotonic()
    with pytest.raises(ApiError) as caught:
        await call
    elapsed = time.monotonic() - started
    assert isinstance(caught.value, Forbidden) and caught.value.code == 403, caught.value
    assert f"the NATS server refused this user {operation} on {subject}" in caught.value.message, caught.value.message
    assert elapsed < QUICK, f"refused after {elapsed:.2f} s"
    return caught.value


async def next_denial(nc: Client, operation: str, subject: str, timeout: float = QUICK) -> Denial:
    """The server's report that it refused `operation` on `subject` (already made or made next)."""
    denials = denials_of(nc)
    assert denials is not None

    def match(denial: Denial) -> bool:
        return denial.is_for(operation, subject)

    with denials.watch(match) as future:
        found = denials.latest(match)
        return found if found is not None else await asyncio.wait_for(future, timeout)


# ---- viewer ---------------------------------------------------------------------------


async def test_viewer_reads_the_org_and_follows_its_events(api, login):
    admin = await api("acme-admin")
    viewer_nc = await login("acme-viewer")
    viewer = ApiClient(viewer_nc, "acme")
    task = await admin.call("task", "create", {"id": new_id("read"), **SLEEPER})

    assert (await viewer.call("task", "get", {"id": task["id"]}))["name"] == "sleeper"
    assert task["id"] in [t["id"] for t in (await viewer.call("task", "list", {"per_page": 1000}))["items"]]
    await viewer.call("exec", "list", {})
    assert "acme-runner-1" in [r["id"] for r in (await viewer.call("runner", "list", {}))["items"]]

    events: asyncio.Queue[Any] = asyncio.Queue()
    await viewer_nc.subscribe(f"bd.acme.evt.def.task.{task['id']}", cb=events.put)
    await viewer_nc.flush()
    await admin.call("task", "update", {"id": task["id"], "description": "seen by the viewer"})
    event = await asyncio.wait_for(events.get(), 5)
    assert json.loads(event.data)["definition"]["description"] == "seen by the viewer"
    assert not denials_of(viewer_nc).recent


async def test_viewer_changes_are_refused_by_the_server(api):
    admin = await api("acme-admin")
    viewer = await api("acme-viewer")
    task = await admin.call("task", "create", {"id": new_id("keep"), **SLEEPER})

    await refused(viewer.call("task", "start", {"id": task["id"]}), "bd.acme.api.task.start")
    await refused(viewer.call("task", "delete", {"id": task["id"], "force": True}), "bd.acme.api.task.delete")
    await refused(viewer.call("history", "sql", {"sql": "SELECT 1"}), "bd.acme.api.history.sql")
    await refused(viewer.call("task", "update", {"id": task["id"], "name": "hijacked"}), "bd.acme.api.task.update")

    # nothing reached the broker: the task is as it was and never ran
    kept = await admin.call("task", "get", {"id": task["id"]})
    assert kept["deleted_at"] is None and kept["name"] == "sleeper" and kept["version"] == task["version"]
    assert (await admin.call("exec", "list", {"filter": {"task_id": task["id"]}}))["total"] == 0


async def test_viewer_cannot_reach_another_org(api, login):
    viewer_nc = await login("acme-viewer")
    other = ApiClient(viewer_nc, "umbrella")
    await refused(other.call("task", "list", {}), "bd.umbrella.api.task.list")
    await refused(other.call("exec", "get", {"id": "anything"}), "bd.umbrella.api.exec.get")

    received: list[Any] = []

    async def keep(msg: Any) -> None:
        received.append(msg)

    await viewer_nc.subscribe("bd.umbrella.>", cb=keep)
    await next_denial(viewer_nc, "subscribe", "bd.umbrella.>")
    umbrella_admin = await api("umbrella-admin")
    task = await umbrella_admin.call("task", "create", {"id": new_id("theirs"), **SLEEPER})
    await umbrella_admin.call("task", "update", {"id": task["id"], "description": "not for acme"})
    await viewer_nc.flush()
    await asyncio.sleep(0.2)
    assert received == []


# ---- operator and admin -----------------------------------------------------------------


async def test_operator_starts_and_cancels_but_cannot_define(api, login, webhooks):
    admin_nc = await login("acme-admin")
    admin = ApiClient(admin_nc, "acme")
    operator = await api("acme-operator")
    notifications: asyncio.Queue[Any] = asyncio.Queue()
    await admin_nc.subscribe("bd.acme.evt.notify.*", cb=notifications.put)
    path = f"/{new_id('op')}"
    task = await admin.call("task", "create", {"id": new_id("op"), **SLEEPER,
                                               "notify": {"on": "always", "recipients": [webhooks.url + path]}})

    execution_id = (await operator.call("task", "start", {"id": task["id"]}))["execution_id"]
    await eventually(lambda: _status_is(operator, execution_id, "running"), 10, 0.05, "the run on acme's runner")
    # what a runner given a copy of the run asks its runner: the org's runner user may ask, and answer
    held = await (await login("acme-runner")).request("bd.acme.ctl.runner.acme-runner-1.holds",
                                                        json.dumps({"execution_id": execution_id}).encode(), timeout=5)
    assert json.loads(held.data) == {"runner_id": "acme-runner-1", "execution_id": execution_id, "held": True,
                                     "attempt": 1}
    # a cancel goes from the broker (services' account) to the runner (acme's account) and back
    assert (await operator.call("exec", "cancel", {"id": execution_id}))["acknowledged"] == "ok"
    await eventually(lambda: _status_is(operator, execution_id, "canceled"), 10, 0.05, "the run canceled")
    # the notifier, on its own service user, told the webhook and recorded it
    await eventually(lambda: _received(webhooks, path), 10, 0.05, "the webhook's POST")
    assert json.loads(webhooks.received[path][0][1])["id"] == execution_id
    notification = json.loads((await asyncio.wait_for(notifications.get(), 10)).data)
    assert notification["execution_id"] == execution_id and notification["status"] == "sent"

    await refused(operator.call("task", "create", {"id": new_id("op"), **SLEEPER}), "bd.acme.api.task.create")
    await refused(operator.call("task", "delete", {"id": task["id"]}), "bd.acme.api.task.delete")
    await refused(operator.call("history", "sql", {"sql": "SELECT 1"}), "bd.acme.api.history.sql")
    assert (await admin.call("task", "get", {"id": task["id"]}))["deleted_at"] is None


async def _status_is(client: ApiClient, execution_id: str, status: str) -> bool:
    return (await client.call("exec", "get", {"id": execution_id}))["status"] == status


async def _received(webhooks, path: str) -> bool:
    return bool(webhooks.received[path])


async def test_admin_defines_deletes_and_queries(api):
    admin = await api("acme-admin")
    task = await admin.call("task", "create", {"id": new_id("adm"), **SLEEPER})
    updated = await admin.call("task", "update", {"id": task["id"], "retries": 2})
    assert updated["retries"] == 2
    assert (await admin.call("task", "delete", {"id": task["id"]}))["deleted"] == [{"kind": "task", "id": task["id"]}]
    rows = await admin.call("history", "sql", {"sql": "SELECT 42 AS answer"})
    assert rows["rows"] == [[42]]
    await refused(ApiClient(admin.nc, "umbrella").call("task", "list", {}), "bd.umbrella.api.task.list")


# ---- reply inboxes ----------------------------------------------------------------------


async def test_no_user_reads_the_replies_of_another_org_or_of_another_role(login):
    # acme's viewer, pretending to be umbrella's for its replies: the server refuses the
    # reply subscription, and the client says so at once
    thief = await login("acme-viewer", inbox_prefix="_INBOX_umbrella.viewer")
    error = await refused(ApiClient(thief, "acme").call("task", "list", {}), "_inbox_umbrella.viewer.", "subscribe")
    assert "--inbox-prefix" in error.message
    # every later request fails before it is sent
    await refused(ApiClient(thief, "acme").call("task", "list", {}), "_inbox_umbrella.viewer.", "subscribe")

    # nor can it listen on the services' inbox, another org's, or its own org's admin's
    # (whose SQL results a viewer may not see)
    listener = await login("acme-viewer")
    for subject in ("_INBOX.>", "_INBOX_umbrella.>", "_INBOX_acme.admin.>", "_INBOX_acme.>"):
        await listener.subscribe(subject)
        await next_denial(listener, "subscribe", subject)
    # its own role's inbox works
    await ApiClient(listener, "acme").call("task", "list", {})


# ---- the command line -------------------------------------------------------------------


async def test_cli_says_the_server_refused_the_viewer(system):
    env = {**os.environ, "BATCHDECK_INBOX_PREFIX": "_INBOX_acme.viewer",
           "BATCHDECK_NATS_URL": system.url("acme-viewer")}
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchdeck", "task", "start", "X", "--org", "acme", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    elapsed = time.monotonic() - started
    assert process.returncode == 1, (out, err)
    assert "error 403" in err.decode() and "refused this user publish on bd.acme.api.task.start" in err.decode(), err
    assert elapsed < 8, f"took {elapsed:.1f} s (the API timeout is 10 s)"


async def test_a_viewer_follows_a_runs_log_with_the_cli_without_jetstream(system, api):
    """An org's account has no JetStream: `logs -f` reads the history from the store and
    the live lines from the org's events."""
    admin = await api("acme-admin")
    task = await admin.call("task", "create", {"id": new_id("log"), "name": "slow lines",
                                               "command": ["sh", "-c", "for i in 1 2 3 4 5 6; do echo line $i; "
                                                                       "sleep 0.3; done"]})
    execution_id = (await admin.call("task", "start", {"id": task["id"]}))["execution_id"]
    await eventually(lambda: _status_is(admin, execution_id, "running"), 10, 0.05, "the run started")
    env = {**os.environ, "BATCHDECK_INBOX_PREFIX": "_INBOX_acme.viewer",
           "BATCHDECK_NATS_URL": system.url("acme-viewer")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchdeck", "logs", execution_id, "-f", "--json", "--org", "acme", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [line["msg"] for line in lines] == [f"line {i}" for i in range(1, 7)], err.decode()
    assert [line["idx"] for line in lines] == list(range(1, 7))


# ---- the dashboard ----------------------------------------------------------------------


async def test_a_viewers_dashboard_lists_the_orgs_batches_and_follows_changes(system, api):
    """A viewer's account has no JetStream, so no KV watch: the dashboard falls back to
    the API's lists and the org's definition events, and says nothing."""
    from broker.connect import ConnectOptions
    from tui.app import BatchdeckApp  # Textual loads for this test only

    admin = await api("acme-admin")
    task = await admin.call("task", "create", {"name": f"t-{uuid.uuid4().hex[:6]}", "command": ["true"]})
    first = await admin.call("batch", "create", {"name": "Shown at start", "cron_expression": "0 3 * * *",
                                                 "is_enabled": False, "run_on_startup": False,
                                                 "actions": [{"task_id": task["id"]}]})
    options = ConnectOptions(url=system.url("acme-viewer"), name="test-tui", inbox_prefix="_INBOX_acme.viewer")
    async with BatchdeckApp(options, "acme").run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + 20
        app = pilot.app
        while not (app.live is not None and first["id"] in app.live.batches and task["id"] in app.live.tasks):
            assert time.monotonic() < deadline, [n.message for n in app._notifications]
            await pilot.pause(0.1)
        later = await admin.call("batch", "create", {"name": "Made later", "cron_expression": "0 4 * * *",
                                                     "is_enabled": False, "run_on_startup": False,
                                                     "actions": [{"task_id": task["id"]}]})
        await admin.call("batch", "delete", {"id": first["id"]})
        while not (later["id"] in app.live.batches and first["id"] not in app.live.batches):
            assert time.monotonic() < deadline, sorted(app.live.batches)
            await pilot.pause(0.1)
        assert not [n.message for n in app._notifications if "cannot" in str(n.message)]
    await admin.call("batch", "delete", {"id": later["id"]})
    await admin.call("task", "delete", {"id": task["id"]})


# ---- the services' own permissions ------------------------------------------------------


def test_the_service_users_were_never_refused(system):
    """Every service and runner asks only what its user may: none of them logged a
    refusal by the server (run last in this file: after every scenario above)."""
    for name in system.services:
        assert "refused this user" not in system.log(name), (name, system.log(name)[-3000:])
