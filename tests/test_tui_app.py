"""The dashboard against a real stack: the session's nats-server and broker, real
runners, the app on a NATS connection of its own, driven with Textual's Pilot.

Each test reads as what an operator does: press a key, see the list change, and the
API agrees.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.widgets import Input
from rich.text import Text

from broker.client import ApiClient
from broker.connect import ConnectOptions
from broker.server import EmbeddedServer, free_port
from broker.service import ControlPlane
from tui.app import BatchdeckApp
from tui.screens.batch_form import BatchForm
from tui.screens.confirm import ConfirmScreen
from tui.screens.help import HelpScreen
from tui.screens.main import MainScreen
from tui.screens.runners import RunnersScreen
from tui.screens.start_form import StartForm
from tui.screens.tasks import TasksScreen
from tui.widgets.connection_bar import ConnectionBar
from tui.widgets.live_table import LiveTable
from tui.widgets.log_pane import LogPane

SIZE = (140, 45)
NEVER_SOON = "0 3 1 1 *"


async def until(probe: Callable[[], Any], pilot: Any, what: str, timeout: float = 15.0) -> Any:
    """Poll `probe` (sync or async) while the app runs, until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def cells(table: LiveTable) -> dict[str, list[str]]:
    """Each shown row's plain cell texts, by key."""
    shown = {}
    for key in table.shown_keys:
        row = table.get_row(key)
        shown[key] = [c.plain if isinstance(c, Text) else str(c) for c in row]
    return shown


def app_for(server: EmbeddedServer, org: str) -> BatchdeckApp:
    return BatchdeckApp(ConnectOptions(url=server.url, name="test-tui"), org)


async def opened(pilot: Any) -> MainScreen:
    app = pilot.app
    await until(lambda: app.live is not None and app.live.loaded.is_set(), pilot, "the live state loaded")
    return app.screen


@pytest.fixture
def make_cmd_task(api: ApiClient) -> Callable[..., Awaitable[dict[str, Any]]]:
    async def create(name: str, script: str, **fields: Any) -> dict[str, Any]:
        return await api.call("task", "create", {"name": name, "command": ["sh", "-c", script], **fields})

    return create


async def make_batch(api: ApiClient, name: str, task_id: str, **fields: Any) -> dict[str, Any]:
    return await api.call("batch", "create", {"name": name, "cron_expression": NEVER_SOON, "is_enabled": True,
                                              "run_on_startup": False, "actions": [{"task_id": task_id}], **fields})


async def select_row(pilot: Any, table: LiveTable, key: str) -> None:
    table.focus()
    await until(lambda: key in table.shown_keys, pilot, f"row {key}")
    table.move_cursor(row=table.get_row_index(key))
    await pilot.pause()


# ---- main screen ---------------------------------------------------------------------


async def test_start_a_batch_from_the_form_and_watch_it_run_with_its_log(
        nats_server, broker: ControlPlane, api, org, runner_factory, make_cmd_task):
    await runner_factory()
    task = await make_cmd_task("greet", "echo hello-from-the-run; echo second line")
    batch = await make_batch(api, "Greeting", task["id"])
    async with app_for(nats_server, org).run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        batches = screen.query_one("#batches", LiveTable)
        await select_row(pilot, batches, batch["id"])
        assert cells(batches)[batch["id"]][0] == "Greeting"

        await pilot.press("s")
        await until(lambda: isinstance(pilot.app.screen, StartForm), pilot, "the start form")
        await pilot.press("ctrl+s")
        await until(lambda: isinstance(pilot.app.screen, MainScreen), pilot, "the form closed")

        executions = screen.query_one("#executions", LiveTable)
        run_id = await until(lambda: executions.shown_keys and executions.shown_keys[0], pilot, "the run listed")
        await until(lambda: cells(executions)[run_id][0] == "✔ succeeded", pilot, "the run succeeded")
        assert (await api.call("exec", "get", {"id": run_id}))["batch_id"] == batch["id"]

        await select_row(pilot, executions, run_id)
        log = screen.query_one(LogPane)
        await until(lambda: [r["msg"] for r in log.rows] == ["hello-from-the-run", "second line"], pilot,
                    "the log lines in the pane")
        assert cells(batches)[batch["id"]][4] == "✔ succeeded"  # the batch's last status


async def test_cancel_a_running_execution_with_x(nats_server, broker, api, org, runner_factory, make_cmd_task):
    await runner_factory()
    task = await make_cmd_task("long", "echo started; sleep 30")
    run_id = (await api.call("task", "start", {"id": task["id"]}))["execution_id"]
    async with app_for(nats_server, org).run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        executions = screen.query_one("#executions", LiveTable)
        await select_row(pilot, executions, run_id)
        await until(lambda: cells(executions)[run_id][0] == "▶ running", pilot, "the run running")
        await pilot.press("x")
        await until(lambda: cells(executions)[run_id][0] == "■ canceled", pilot, "the run canceled", timeout=20)
    assert (await api.call("exec", "get", {"id": run_id}))["status"] == "canceled"


async def test_the_progress_bar_moves_with_the_progress_events_of_a_running_action(
        nats_server, broker, api, org, runner_factory, make_cmd_task):
    await runner_factory()
    # The runner saves progress to the execution at most once a second and publishes no
    # state for it: only the progress events can move the bar in between.
    task = await make_cmd_task("steps", "echo '::progress 20 first'; sleep 1.5; echo '::progress 70 second'; sleep 30")
    run_id = (await api.call("task", "start", {"id": task["id"]}))["execution_id"]
    async with app_for(nats_server, org).run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        executions = screen.query_one("#executions", LiveTable)
        await until(lambda: run_id in cells(executions) and "second" in cells(executions)[run_id][2], pilot,
                    "the bar at the second step")
        assert "70%" in cells(executions)[run_id][2]
        await api.call("exec", "cancel", {"id": run_id})
        await until(lambda: cells(executions)[run_id][0] == "■ canceled", pilot, "the run canceled", timeout=20)
        assert "70%" in cells(executions)[run_id][2]  # where it stopped


async def test_cancel_of_a_finished_run_is_a_notification_not_a_crash(
        nats_server, broker, api, org, runner_factory, make_cmd_task):
    await runner_factory()
    task = await make_cmd_task("quick", "true")
    run_id = (await api.call("task", "start", {"id": task["id"]}))["execution_id"]
    async with app_for(nats_server, org).run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        executions = screen.query_one("#executions", LiveTable)
        await select_row(pilot, executions, run_id)
        await until(lambda: cells(executions)[run_id][0] == "✔ succeeded", pilot, "the run done")
        await pilot.press("x")
        await until(lambda: any("already finished" in n.message for n in pilot.app._notifications), pilot,
                    "the 409 as a notification")
        assert pilot.app.is_running


async def test_e_disables_and_enables_the_selected_batch(nats_server, broker, api, org, make_cmd_task):
    task = await make_cmd_task("t", "true")
    batch = await make_batch(api, "Toggled", task["id"])
    async with app_for(nats_server, org).run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        batches = screen.query_one("#batches", LiveTable)
        await select_row(pilot, batches, batch["id"])
        assert cells(batches)[batch["id"]][3] == "✔"
        await pilot.press("e")
        await until(lambda: cells(batches)[batch["id"]][3] == "—", pilot, "the batch shown disabled")
        assert (await api.call("batch", "get", {"id": batch["id"]}))["is_enabled"] is False
        assert cells(batches)[batch["id"]][2] == "—"  # no next run while disabled
        await pilot.press("e")
        await until(lambda: cells(batches)[batch["id"]][3] == "✔", pilot, "the batch shown enabled")
        assert (await api.call("batch", "get", {"id": batch["id"]}))["is_enabled"] is True


async def test_d_asks_first_and_deletes_only_on_yes(nats_server, broker, api, org, make_cmd_task):
    task = await make_cmd_task("t", "true")
    batch = await make_batch(api, "Doomed", task["id"])
    async with app_for(nats_server, org).run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        batches = screen.query_one("#batches", LiveTable)
        await select_row(pilot, batches, batch["id"])

        await pilot.press("d")
        await until(lambda: isinstance(pilot.app.screen, ConfirmScreen), pilot, "the confirmation")
        await pilot.press("n")
        await until(lambda: isinstance(pilot.app.screen, MainScreen), pilot, "back on the main screen")
        await pilot.pause(0.3)
        assert batch["id"] in batches.shown_keys
        await api.call("batch", "get", {"id": batch["id"]})  # still there

        await pilot.press("d")
        await until(lambda: isinstance(pilot.app.screen, ConfirmScreen), pilot, "the confirmation")
        await pilot.press("y")
        await until(lambda: batch["id"] not in batches.shown_keys, pilot, "the row gone")
    assert (await api.call("batch", "list", {}))["total"] == 0
    assert (await api.call("batch", "get", {"id": batch["id"]}))["deleted_at"] is not None  # soft-deleted


async def test_a_new_batch_with_an_invalid_cron_shows_the_error_and_is_not_created(
        nats_server, broker, api, org, make_cmd_task):
    task = await make_cmd_task("t", "true")
    async with app_for(nats_server, org).run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        await pilot.press("n")
        form = await until(lambda: isinstance(pilot.app.screen, BatchForm) and pilot.app.screen, pilot, "the form")
        form.query_one("#name").value = "From the form"
        form.query_one("#cron").value = "61 * * * *"
        form.query_one("#action-ids").value = task["id"]
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause(0.3)
        assert isinstance(pilot.app.screen, BatchForm)
        error = str(form.query_one("#cron-error").render())
        assert "61" in error, error
        assert form.query_one("#cron-error").display and "-hidden" not in form.query_one("#cron-error").classes
        assert (await api.call("batch", "list", {}))["total"] == 0

        form.query_one("#cron").value = "*/5 * * * *"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(lambda: isinstance(pilot.app.screen, MainScreen), pilot, "the form closed")
        batches = screen.query_one("#batches", LiveTable)
        await until(lambda: any(c[0] == "From the form" for c in cells(batches).values()), pilot, "the new row")
    created = (await api.call("batch", "list", {}))["items"]
    assert [(b["name"], b["cron_expression"]) for b in created] == [("From the form", "*/5 * * * *")]


async def test_slash_filters_the_focused_list_and_escape_clears_it(nats_server, broker, api, org, make_cmd_task):
    task = await make_cmd_task("t", "true")
    for name in ("Nightly export", "Hourly sync", "Nightly cleanup"):
        await make_batch(api, name, task["id"])
    async with app_for(nats_server, org).run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        batches = screen.query_one("#batches", LiveTable)
        await until(lambda: len(batches.shown_keys) == 3, pilot, "three batches")
        batches.focus()
        await pilot.press("slash", *"nightly")
        await until(lambda: len(batches.shown_keys) == 2, pilot, "the filter applied")
        assert sorted(c[0] for c in cells(batches).values()) == ["Nightly cleanup", "Nightly export"]
        await pilot.press("enter")  # keeps the filter, back to the table
        assert batches.has_focus and len(batches.shown_keys) == 2
        await pilot.press("slash", "escape")
        await until(lambda: len(batches.shown_keys) == 3, pilot, "the filter cleared")


async def test_question_mark_lists_every_binding_and_escape_closes_it(nats_server, broker, api, org):
    async with app_for(nats_server, org).run_test(size=SIZE) as pilot:
        await opened(pilot)
        await pilot.press("question_mark")
        help_screen = await until(lambda: isinstance(pilot.app.screen, HelpScreen) and pilot.app.screen, pilot,
                                  "the help screen")
        descriptions = {row[2] for row in help_screen.rows}
        assert {"Start", "Cancel run", "Enable/disable", "Delete", "New batch", "Filter", "Help", "Quit"} <= descriptions
        await pilot.press("escape")
        await until(lambda: isinstance(pilot.app.screen, MainScreen), pilot, "help closed")


async def test_the_command_palette_starts_a_batch_by_name(nats_server, broker, api, org, make_cmd_task):
    task = await make_cmd_task("t", "true")
    batch = await make_batch(api, "Palette pick", task["id"])
    async with app_for(nats_server, org).run_test(size=SIZE) as pilot:
        await opened(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"start batch: palette")
        await pilot.pause(0.5)
        await pilot.press("enter")

        async def queued() -> bool:
            return (await api.call("exec", "list", {"filter": {"batch_id": batch["id"]}}))["total"] == 1

        await until(queued, pilot, "a run of the batch")


# ---- tasks and runners ---------------------------------------------------------------


async def test_tasks_screen_lists_tasks_and_starts_one(nats_server, broker, api, org, runner_factory, make_cmd_task):
    await runner_factory()
    task = await make_cmd_task("Listed task", "echo hi", pool="default", retries=2)
    async with app_for(nats_server, org).run_test(size=SIZE) as pilot:
        await opened(pilot)
        await pilot.press("t")
        screen = await until(lambda: isinstance(pilot.app.screen, TasksScreen) and pilot.app.screen, pilot,
                             "the tasks screen")
        table = screen.query_one(LiveTable)
        await select_row(pilot, table, task["id"])
        row = cells(table)[task["id"]]
        assert row[0] == "Listed task" and row[2] == "sh -c echo hi" and row[4].endswith("· 2")
        await pilot.press("S")

        async def ran() -> bool:
            page = await api.call("exec", "list", {"filter": {"task_id": task["id"], "status": "succeeded"}})
            return page["total"] == 1

        await until(ran, pilot, "the task's run succeeded")
        await pilot.press("escape")
        await until(lambda: isinstance(pilot.app.screen, MainScreen), pilot, "back on the main screen")


async def test_the_start_form_offers_only_the_params_the_task_lets_a_start_set(
        nats_server, broker, api, org, runner_factory, wait_exec, exec_events):
    await runner_factory()
    task = await api.call("task", "create", {
        "name": "Cleanup", "command": ["{{ tool }}", "-c", "echo days=$0", "{{ days }}"],
        "params": {"tool": "sh", "days": 3},
        "overridable": [{"name": "days", "type": "integer", "description": "how far back"}],
    })
    async with app_for(nats_server, org).run_test(size=SIZE) as pilot:
        await opened(pilot)
        await pilot.press("t")
        screen = await until(lambda: isinstance(pilot.app.screen, TasksScreen) and pilot.app.screen, pilot,
                             "the tasks screen")
        await select_row(pilot, screen.query_one(LiveTable), task["id"])
        await pilot.press("s")
        form = await until(lambda: isinstance(pilot.app.screen, StartForm) and pilot.app.screen, pilot,
                           "the start form")
        # `tool` (the program) is the admin's: no field for it
        assert [param["name"] for param in form.params] == ["days"]
        field = form.query_one("#param-0", Input)
        assert field.placeholder == "3 (default)"
        field.value = "7"
        await pilot.press("ctrl+s")
        await until(lambda: not isinstance(pilot.app.screen, StartForm), pilot, "the form closed")

    page = await api.call("exec", "list", {"filter": {"task_id": task["id"]}})
    assert page["total"] == 1
    execution = await wait_exec(page["items"][0]["id"])
    assert execution["status"] == "succeeded"
    assert [event.data["msg"] for event in await exec_events(execution["id"], "log")] == ["days=7"]


async def test_runners_screen_shows_live_runners_with_pools(nats_server, broker, api, org, runner_factory):
    runner = await runner_factory(pools=["default", "gpu"], name="r-screen")
    async with app_for(nats_server, org).run_test(size=SIZE) as pilot:
        await opened(pilot)
        await pilot.press("r")
        screen = await until(lambda: isinstance(pilot.app.screen, RunnersScreen) and pilot.app.screen, pilot,
                             "the runners screen")
        table = screen.query_one(LiveTable)
        await until(lambda: runner.id in table.shown_keys, pilot, "the runner listed")
        row = cells(table)[runner.id]
        assert row[1] == "● alive" and row[3] == "default, gpu" and row[4] == "0/4"


# ---- connection ----------------------------------------------------------------------


async def test_the_header_says_reconnecting_and_the_lists_come_back_after_a_nats_restart(tmp_path):
    server = EmbeddedServer(tmp_path / "nats")
    server.start()
    import nats

    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    plane = ControlPlane(nc, nc.jetstream())
    await plane.start()
    try:
        api = ApiClient(nc, "restart")
        task = await api.call("task", "create", {"name": "t", "command": ["true"]})
        await make_batch(api, "Survivor", task["id"])
        async with app_for(server, "restart").run_test(size=SIZE) as pilot:
            screen = await opened(pilot)
            batches = screen.query_one("#batches", LiveTable)
            await until(lambda: len(batches.shown_keys) == 1, pilot, "the batch")
            await asyncio.to_thread(server.stop)
            await until(lambda: pilot.app.connection.startswith("reconnecting"), pilot, "the header saying so")
            await asyncio.to_thread(server.start)
            await until(lambda: pilot.app.connection == "connected", pilot, "connected again", timeout=30)
            later = await make_batch(api, "Made after", task["id"])
            await until(lambda: later["id"] in batches.shown_keys, pilot, "a change after the restart", timeout=30)
            assert len(batches.shown_keys) == 2
    finally:
        await plane.stop()
        await nc.close()
        server.stop()


async def test_an_unreachable_server_is_said_with_the_reason_and_the_dashboard_connects_when_it_comes(tmp_path):
    port = free_port()
    app = BatchdeckApp(ConnectOptions(url=f"nats://127.0.0.1:{port}", name="test-tui"), "late")
    server = EmbeddedServer(tmp_path / "nats", port=port)
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.connection.startswith("unreachable"), pilot, "the header saying unreachable",
                    timeout=5)
        assert "connection refused" in app.connection and "retrying" in app.connection
        assert "unreachable: connection refused" in str(app.screen.query_one(ConnectionBar).render())
        await asyncio.to_thread(server.start)
        try:
            await until(lambda: app.connection == "connected", pilot, "connected once the server is there",
                        timeout=30)
        finally:
            await asyncio.to_thread(server.stop)


def test_the_live_set_of_executions_stays_bounded_through_a_burst_of_starts():
    """A burst of queued runs (tens of thousands) must not grow the dashboard's set;
    running runs are never forgotten. (The cost per event: benchmarks/load.py.)"""
    from broker.types import Execution
    from tui.live import EXECUTIONS_KEPT, FORGET_SLACK, LiveState

    live = LiveState(None, lambda kind: None)  # type: ignore[arg-type] - no API needed to keep records
    running = [Execution(id=f"run-{i:05d}", org="o", name="r", status="running", queued_at=f"2026-12-01T00:00:{i % 60:02d}Z")
               for i in range(50)]
    for execution in running:
        live._keep(execution)
    for i in range(20_000):
        live._keep(Execution(id=f"q-{i:05d}", org="o", name="q", status="queued",
                             queued_at=f"2026-12-02T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"))
    assert len(live.executions) <= EXECUTIONS_KEPT + FORGET_SLACK
    assert all(e.id in live.executions for e in running)
    assert "q-19999" in live.executions and "q-00000" not in live.executions  # the oldest queued went first
