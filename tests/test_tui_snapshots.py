"""SVG snapshots of the dashboard's screens (pytest-textual-snapshot), against a real
stack: a nats-server and a broker, definitions made through the API, executions,
runner heartbeats and log lines written where the broker and the runners write them
(KV `bd_execs` and `bd_runners`, stream BD_EVENTS).

Everything shown is pinned: the org, the header's server, the app's clock, every id,
name and time, and the time zone (UTC). A screen that differs from its snapshot fails
its test, and `snapshot_report.html` shows both pictures; after an intended change,
look at the new picture and accept it with
`pytest tests/test_tui_snapshots.py --snapshot-update`.

`snap_compare` runs the app with `App.run()`, which makes an event loop of its own,
while the broker lives on the test session's loop, which must keep running to answer
the app's requests (the reason tests/test_cli.py awaits its subprocesses too). So the
tests are async and take each snapshot in a thread.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client

from broker import streams, subjects
from broker.client import ApiClient
from broker.connect import ConnectOptions
from broker.server import EmbeddedServer
from broker.service import ControlPlane
from broker.timestamps import parse_iso, to_iso
from broker.types import ActionState, Execution, LogLine, ModuleInfo, Runner, Task
from tui.app import BatchdeckApp
from tui.screens.help import HelpScreen
from tui.screens.main import MainScreen
from tui.screens.runners import RunnersScreen
from tui.screens.tasks import TasksScreen
from tui.widgets.connection_bar import ConnectionBar
from tui.widgets.live_table import LiveTable
from tui.widgets.log_pane import LogPane

ORG = "snapshots"
SIZE = (140, 40)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
"""The app's clock: a Monday noon (UTC)."""


def at(hh_mm_ss: str, days: int = 0) -> str:
    """A wire time on NOW's day, or `days` after it (before it when negative)."""
    hours, minutes, seconds = (int(part) for part in hh_mm_ss.split(":"))
    return to_iso(NOW.replace(hour=hours, minute=minutes, second=seconds) + timedelta(days=days))


# ---- the org's data -------------------------------------------------------------------

TASKS: list[dict[str, Any]] = [
    {"id": "export-orders", "name": "Export orders", "command": ["python", "-m", "jobs.export_orders"],
     "timeout_sec": 900, "retries": 2},
    {"id": "vacuum-db", "name": "Vacuum database", "command": ["psql", "-c", "VACUUM ANALYZE"], "pool": "db",
     "cancellable": False},
    {"id": "sync-crm", "name": "Sync CRM contacts", "command": ["sync-crm", "--changed-since", "1h"],
     "timeout_sec": 300, "retries": 1},
    {"id": "clean-cache", "name": "Clean cache", "command": ["find", "cache", "-mtime", "+7", "-delete"],
     "trace": False},
]
TASKS_UPDATED_AT = at("09:30:00", days=-3)
"""The API stamps a task with the wall clock; the snapshots pin it (the tasks screen shows it)."""

BATCHES: list[dict[str, Any]] = [
    {"id": "nightly-export", "name": "Nightly export", "cron_expression": "30 2 * * *", "timezone": "Europe/Berlin",
     "is_enabled": True, "actions": [{"task_id": "export-orders"}, {"task_id": "vacuum-db"}]},
    {"id": "hourly-sync", "name": "Hourly CRM sync", "cron_expression": "15 * * * *", "is_enabled": True,
     "actions": [{"task_id": "sync-crm"}]},
    {"id": "weekly-cleanup", "name": "Weekly cleanup", "schedule": {"hours": [6], "minutes": [0], "weekdays": [0]},
     "timezone": "America/New_York", "is_enabled": False, "actions": [{"task_id": "clean-cache"}]},
    {"id": "month-end", "name": "Month-end close", "cron_expression": "0 9 1 * *", "timezone": "Asia/Tokyo",
     "is_enabled": True, "actions": [{"task_id": "export-orders", "params": {"period": "month"}}]},
]


def execution(number: int, name: str, status: str, queued: str, *, batch: str | None = None,
              task: str | None = None, started: str | None = None, finished: str | None = None,
              runner: str = "runner-a", source: str = "cron", **fields: Any) -> Execution:
    """An Execution record as the broker and a runner leave it: a run of `batch` (its
    actions) or of the single `task`; the actions all end as the run does."""
    tasks = [a["task_id"] for b in BATCHES if b["id"] == batch for a in b["actions"]] if batch else [task]
    final = status not in ("queued", "running")
    duration = None
    if started and finished:
        duration = round((parse_iso(finished) - parse_iso(started)).total_seconds() * 1000)
    actions = [ActionState(index=index, task_id=task_id, status=status if final else "queued",
                           exit_code=(0 if status == "succeeded" else 1) if final else None)
               for index, task_id in enumerate(tasks)]
    if status == "running":
        actions[0].status, actions[0].started_at = "running", started
    return Execution(
        id=f"01KSNAPSH0T{number:015d}", org=ORG, batch_id=batch, task_id=task, name=name, source=source,
        status=status, runner_id=runner if started else None, queued_at=queued, started_at=started,
        finished_at=finished, duration_ms=duration, actions=actions, **fields,
    )


RUNNING = execution(7, "Nightly export", "running", at("11:52:30"), batch="nightly-export", source="manual",
                    started=at("11:52:31"), progress_percent=62.0, progress_text="orders 6 200/10 000")
"""Selected on the main screen: its log fills the pane."""
RUNNING_LOG = [
    LogLine(idx=1, ts=at("11:52:31"), stream="runner", msg="started on runner-a (attempt 1)"),
    LogLine(idx=2, ts=at("11:52:32"), msg="connecting to orders-db"),
    LogLine(idx=3, ts=at("11:52:33"), msg="exporting 10 000 orders changed since 2026-11-22"),
    LogLine(idx=4, ts=at("11:55:10"), level="warning", stream="stderr", msg="slow query: 2.4 s for page 31"),
    LogLine(idx=5, ts=at("11:58:47"), msg="6 200 orders written to export/2026-11-23.parquet"),
]
EXECUTIONS = [
    execution(1, "Nightly export", "succeeded", at("01:30:00", days=-1), batch="nightly-export",
              started=at("01:30:01", days=-1), finished=at("01:41:37", days=-1)),
    execution(2, "Nightly export", "succeeded", at("01:30:00"), batch="nightly-export",
              started=at("01:30:01"), finished=at("01:44:12")),
    execution(3, "Hourly CRM sync", "succeeded", at("08:15:00"), batch="hourly-sync",
              started=at("08:15:00"), finished=at("08:15:41")),
    execution(4, "Hourly CRM sync", "succeeded", at("09:15:00"), batch="hourly-sync",
              started=at("09:15:01"), finished=at("09:15:38")),
    execution(5, "Hourly CRM sync", "failed", at("10:15:00"), batch="hourly-sync", runner="runner-b",
              started=at("10:15:01"), finished=at("10:15:09"), error="exited with code 1"),
    execution(6, "Hourly CRM sync", "succeeded", at("11:15:00"), batch="hourly-sync",
              started=at("11:15:00"), finished=at("11:16:02")),
    RUNNING,
    execution(8, "Vacuum database", "queued", at("11:59:30"), task="vacuum-db", source="api", pool="db"),
]

RUNNERS = [
    Runner(id="runner-a", org=ORG, host="worker-1", pid=4242, pools=["default", "db"], concurrency=4,
           running=[RUNNING.id], version="0.1.0", started_at=at("06:00:00"), heartbeat_at=at("11:59:58")),
    Runner(id="runner-b", org=ORG, host="worker-2", pid=5150, pools=["default"], concurrency=2, version="0.1.0",
           modules=[ModuleInfo(name="http.check"), ModuleInfo(name="sql.report")], started_at=at("06:00:04"),
           heartbeat_at=at("11:59:55")),
    Runner(id="runner-old", org=ORG, host="worker-3", pid=977, pools=["gpu"], concurrency=1, version="0.0.9",
           started_at=at("17:20:00", days=-1), heartbeat_at=at("11:40:00")),
]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedServer]:
    """A nats-server and a broker of this module's own, with the org's data.

    Not the session's: the dashboard shows a KV revision (a runner's heartbeat revision
    as its Version), and a bucket's revisions count every write of every test before;
    on a server of its own they are the same in every run, whichever tests ran first."""
    server = EmbeddedServer(tmp_path_factory.mktemp("nats-snapshots"))
    await server.astart()
    nc = await nats.connect(server.url, name="test-snapshots")
    plane = ControlPlane(nc, nc.jetstream())
    await plane.start()
    try:
        await seed(nc)
        yield server
    finally:
        await plane.stop()
        await nc.close()
        await server.astop()


async def seed(nc: Client) -> None:
    """Definitions through the API; executions, heartbeats and log lines where the
    broker and the runners write them."""
    api = ApiClient(nc, ORG)
    js = nc.jetstream()
    tasks_kv = await js.key_value(streams.TASKS_BUCKET)
    for task in TASKS:
        await api.call("task", "create", task)
        entry = await tasks_kv.get(f"{ORG}.{task['id']}")
        record = msgspec.json.decode(entry.value, type=Task)
        record.created_at = record.updated_at = TASKS_UPDATED_AT
        await tasks_kv.update(entry.key, msgspec.json.encode(record), last=entry.revision)
    for batch in BATCHES:
        await api.call("batch", "create", {"run_on_startup": False, **batch})
    execs_kv = await js.key_value(streams.EXECS_BUCKET)
    for record in EXECUTIONS:
        await execs_kv.put(f"{ORG}.{record.id}", msgspec.json.encode(record))
    runners_kv = await js.key_value(streams.RUNNERS_BUCKET)
    for runner in RUNNERS:
        await runners_kv.put(f"{ORG}.{runner.id}", msgspec.json.encode(runner))
    for line in RUNNING_LOG:
        line.execution_id = RUNNING.id
        await js.publish(subjects.exec_event(ORG, RUNNING.id, "log"), msgspec.json.encode(line))


@pytest.fixture
def utc() -> Iterator[None]:
    """Times are shown in local time: UTC for the snapshots, whatever the machine's zone."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


# ---- helpers ----------------------------------------------------------------------------


async def until(probe: Callable[[], Any], pilot: Any, what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)
    return result


def counts(screen: Any) -> str:
    """The live counts the screen's header shows (painted: what the screenshot will show)."""
    return screen.query_one(ConnectionBar).counts


async def main_screen_filled(pilot: Any) -> MainScreen:
    """Wait for the live state, every row of both lists and the header's counts."""
    app = pilot.app
    await until(lambda: app.live is not None and app.live.loaded.is_set(), pilot, "the live state loaded")
    screen = app.main_screen
    batches, executions = screen.query_one("#batches", LiveTable), screen.query_one("#executions", LiveTable)
    await until(lambda: len(batches.shown_keys) == len(BATCHES) and len(executions.shown_keys) == len(EXECUTIONS)
                and len(app.live.tasks) == len(TASKS) and counts(screen) == "1 running · 1 queued · 2 runners",
                pilot, "every row shown")
    await pilot.pause(0.3)  # settle: a coalesced repaint may be on its way (it paints the same)
    return screen


async def running_export_selected(pilot: Any) -> None:
    """The main screen with the running export selected and its log in the pane."""
    screen = await main_screen_filled(pilot)
    executions = screen.query_one("#executions", LiveTable)
    executions.focus()
    executions.move_cursor(row=executions.get_row_index(RUNNING.id), animate=False)
    log = screen.query_one(LogPane)
    await until(lambda: log.execution_id == RUNNING.id and len(log.rows) == len(RUNNING_LOG), pilot,
                "the selected run's log lines")
    await pilot.pause(0.3)


async def on_screen(pilot: Any, key: str, kind: type, header_counts: str | None = None) -> None:
    """From the filled main screen, press `key` and wait for the screen `kind` (and for
    its header's counts)."""
    await main_screen_filled(pilot)
    await pilot.press(key)
    screen = await until(lambda: isinstance(pilot.app.screen, kind) and pilot.app.screen, pilot, kind.__name__)
    if header_counts is not None:
        await until(lambda: counts(screen) == header_counts, pilot, f"{header_counts!r} in the header")
    await pilot.pause(0.3)


async def shot(server: EmbeddedServer, snap_compare: Callable[..., bool], run_before: Callable[[Any], Any]) -> bool:
    """snap_compare of a fresh app on the org, run in a thread (the session's loop runs on)."""

    def take() -> bool:
        app = BatchdeckApp(ConnectOptions(url=server.url, name="test-tui-snapshot"), ORG, clock=lambda: NOW,
                           server_label="nats://demo:4222")
        return snap_compare(app, terminal_size=SIZE, run_before=run_before)

    return await asyncio.to_thread(take)


# ---- the screens ------------------------------------------------------------------------


async def test_main_screen_with_a_running_export_selected(stack, utc, snap_compare):
    assert await shot(stack, snap_compare, running_export_selected)


async def test_tasks_screen(stack, utc, snap_compare):
    assert await shot(stack, snap_compare, lambda pilot: on_screen(pilot, "t", TasksScreen, "4 tasks"))


async def test_runners_screen(stack, utc, snap_compare):
    assert await shot(stack, snap_compare, lambda pilot: on_screen(pilot, "r", RunnersScreen, "2 alive of 3"))


async def test_help_screen_over_the_batches_list(stack, utc, snap_compare):
    assert await shot(stack, snap_compare, lambda pilot: on_screen(pilot, "question_mark", HelpScreen))
