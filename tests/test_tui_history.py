"""The history screen against real parts: the session's nats-server and broker, a store
(in process) on a DuckDB file in tmp_path, and the screen driven with Textual's Pilot.

Executions are published as the broker and runners publish their states, straight into
BD_EVENTS with chosen times, so the days and durations the screen shows are known. The
store ingests asynchronously and the screen loads in workers: tests poll with deadlines.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import DataTable, Static, TextArea

from broker.client import ApiClient
from broker.errors import ApiError
from broker.server import EmbeddedServer
from broker.timestamps import to_iso
from store.service import StoreService
from tui.screens.history import DailyPlot, HistoryScreen

SIZE = (140, 45)

# (execution id, task id, status, days ago, duration in ms): three tasks, worst first
# by failures: `load` failed twice, `extract` once, `report` never (and ran 40 days ago).
RUNS = [
    ("x1", "extract", "succeeded", 1, 2000),
    ("x2", "extract", "succeeded", 1, 4000),
    ("x3", "extract", "succeeded", 0, 1000),
    ("x4", "extract", "failed", 0, 3000),
    ("l1", "load", "failed", 3, 500),
    ("l2", "load", "timed_out", 0, 60_000),
    ("r1", "report", "succeeded", 40, 100),
]


# ---- arranging ------------------------------------------------------------------------


@pytest_asyncio.fixture
async def store(nats_server: EmbeddedServer, broker: Any, tmp_path: Path) -> AsyncIterator[StoreService]:
    """A store on its own connection, as the `batchdeck store` process would have."""
    client = await nats.connect(nats_server.url, name="test-store")
    service = StoreService(client, tmp_path / "history.duckdb")
    await service.start()
    yield service
    await service.stop()
    await client.close()


def run_state(org: str, execution_id: str, task_id: str, status: str, days_ago: int, duration_ms: int,
              today: date) -> dict[str, Any]:
    """The final state of a one-action task run queued at noon UTC `days_ago` days ago."""
    queued = datetime.combine(today - timedelta(days=days_ago), time(12), tzinfo=UTC)
    started = queued + timedelta(seconds=1)
    finished = started + timedelta(milliseconds=duration_ms)
    times = {"started_at": to_iso(started), "finished_at": to_iso(finished)}
    return {"id": execution_id, "org": org, "task_id": task_id, "name": task_id, "status": status,
            "source": "manual", "queued_at": to_iso(queued), **times, "duration_ms": duration_ms, "version": 5,
            "actions": [{"index": 0, "task_id": task_id, "status": status, **times}]}


async def publish_runs(nc: Any, org: str, runs: list[tuple[str, str, str, int, int]]) -> date:
    """Publish the runs' final states to BD_EVENTS and wait until the store holds them
    all; returns the UTC day they count back from."""
    today = datetime.now(UTC).date()
    js = nc.jetstream()
    await asyncio.gather(*(
        js.publish(f"bd.{org}.evt.exec.{execution_id}.state",
                   json.dumps(run_state(org, execution_id, task, status, days_ago, ms, today)).encode())
        for execution_id, task, status, days_ago, ms in runs))
    api = ApiClient(nc, org)

    async def stored() -> int:
        reply = await api.call("history", "sql", {"sql": "SELECT count(*) AS n FROM executions"})
        return reply["rows"][0][0]

    deadline = asyncio.get_running_loop().time() + 20
    count: Any = None
    while count != len(runs):
        try:
            count = await stored()
        except ApiError as err:  # a store still starting answers no one yet
            count = err
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"the store holds {count!r} of {len(runs)} runs after 20 s")
        await asyncio.sleep(0.1)
    return today


class Host(App):
    """A stand-in for the dashboard: a blank screen with the history screen on top."""

    def __init__(self, api: ApiClient) -> None:
        super().__init__()
        self.api = api

    def on_mount(self) -> None:
        self.push_screen(HistoryScreen(self.api))


async def until(pilot: Pilot, probe: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Let the app run until `probe()` is truthy and return it; fail with `what` when
    `timeout` seconds pass."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := probe()):
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        await pilot.pause(0.05)
    return value


async def opened(app: App, pilot: Pilot) -> HistoryScreen:
    """The history screen, once the host app has pushed it."""
    return await until(pilot, lambda: app.screen if isinstance(app.screen, HistoryScreen) else None,
                       "the history screen")


def text_of(app: App, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).content)


def row_texts(table: DataTable, key: str) -> list[str]:
    return [str(cell) for cell in table.get_row(key)]


def day(today: date, days_ago: int) -> str:
    return (today - timedelta(days=days_ago)).isoformat()


# ---- tasks over time --------------------------------------------------------------------


async def test_tasks_are_listed_worst_first_and_the_chosen_task_is_plotted_by_day(store, nc, org):
    today = await publish_runs(nc, org, RUNS)
    app = Host(ApiClient(nc, org))
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(app, pilot)
        table = screen.query_one("#task-table", DataTable)
        await until(pilot, lambda: table.row_count, "task rows")
        assert [row.key.value for row in table.ordered_rows] == ["load", "extract", "report"]
        columns = [str(column.label) for column in table.ordered_columns]
        runs, success = columns.index("Runs"), columns.index("Success")
        shown = {key: row_texts(table, key) for key in ("load", "extract", "report")}
        assert [(cells[runs], cells[success]) for cells in shown.values()] == \
            [("2", "0.0%"), ("4", "75.0%"), ("1", "100.0%")]
        assert "3 tasks" in text_of(app, "#tasks-status")

        success_plot = screen.query_one("#plot-success", DailyPlot)
        p95_plot = screen.query_one("#plot-p95", DailyPlot)
        # The first row is highlighted on load: `load` is plotted without a keypress.
        await until(pilot, lambda: success_plot.series == [(day(today, 3), 0.0), (day(today, 0), 0.0)],
                    "load's success rate plotted")

        await pilot.press("down")  # extract
        await until(pilot, lambda: success_plot.series == [(day(today, 1), 100.0), (day(today, 0), 50.0)],
                    "extract's success rate plotted")
        # p95 of (2 s, 4 s) and (1 s, 3 s), interpolated
        assert p95_plot.series == [(day(today, 1), 3.9), (day(today, 0), 2.9)]
        assert "extract" in p95_plot.plt.build()

        await pilot.press("down")  # report ran 40 days ago: outside the 30-day window ...
        await until(pilot, lambda: "no runs in the last 30 days" in _drawn(success_plot), "report's empty plot")
        assert success_plot.series == [] and p95_plot.series == []
        await pilot.press("d")  # ... inside the 90-day one
        await until(pilot, lambda: success_plot.series == [(day(today, 40), 100.0)], "report over 90 days")
        assert p95_plot.series == [(day(today, 40), 0.1)]


async def test_an_org_without_runs_gets_a_friendly_empty_state(store, nc, org):
    app = Host(ApiClient(nc, org))
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(app, pilot)
        await until(pilot, lambda: "No finished task runs" in text_of(app, "#tasks-notice"), "the empty state")
        assert screen.query_one("#tasks-notice").display
        assert not screen.query_one("#task-table").display
        assert not screen.query_one("#tasks-notice").has_class("-error")


# ---- the SQL console --------------------------------------------------------------------


async def test_the_sql_console_runs_queries_caps_rows_and_shows_a_refusal_without_crashing(store, nc, org):
    await publish_runs(nc, org, RUNS[:3])
    app = Host(ApiClient(nc, org))
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(app, pilot)
        await pilot.press("s")
        editor = screen.query_one("#sql-editor", TextArea)
        assert editor.has_focus and "FROM daily_runs" in editor.text  # the starter query
        results = screen.query_one("#sql-results", DataTable)

        editor.load_text("SELECT count(*) AS n FROM executions")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "✓" in text_of(app, "#sql-status"), "the count's result")
        assert [str(column.label) for column in results.ordered_columns] == ["n"]
        assert [str(cell) for cell in results.get_row_at(0)] == ["3"]
        assert "1 row ·" in text_of(app, "#sql-status") and " ms" in text_of(app, "#sql-status")

        # 3^7 = 2187 rows: all counted, the first 1000 shown
        editor.load_text("SELECT a.id FROM executions a, executions b, executions c, executions d, "
                         "executions e, executions f, executions g")
        await pilot.press("ctrl+enter")
        await until(pilot, lambda: "2187 rows" in text_of(app, "#sql-status"), "the big result")
        assert results.row_count == 1000
        assert "showing the first 1000" in text_of(app, "#sql-status")

        editor.load_text("DELETE FROM logs")
        await pilot.press("ctrl+r")
        status = screen.query_one("#sql-status", Static)
        await until(pilot, lambda: status.has_class("-error"), "the refusal")
        assert "error 400: only SELECT (or WITH ... SELECT) is allowed, not DELETE" in text_of(app, "#sql-status")
        assert app.is_running and app.screen is screen
        assert results.row_count == 1000  # the last good result stays

        # ctrl+up walks back through the queries run, ctrl+down forward to the draft
        editor.load_text("SELECT 'draft' AS d")
        await pilot.press("ctrl+up")
        assert editor.text == "DELETE FROM logs"
        await pilot.press("ctrl+up", "ctrl+up", "ctrl+up")
        assert editor.text == "SELECT count(*) AS n FROM executions"  # the oldest stays put
        await pilot.press("ctrl+down")
        assert editor.text.startswith("SELECT a.id")
        await pilot.press("ctrl+down", "ctrl+down")
        assert editor.text == "SELECT 'draft' AS d"
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HistoryScreen)


# ---- no store --------------------------------------------------------------------------


async def test_without_a_store_the_screen_says_so_and_keeps_running(broker, nc, org):
    app = Host(ApiClient(nc, org))
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(app, pilot)
        await until(pilot, lambda: "No history store is answering" in text_of(app, "#tasks-notice"),
                    "the no-store notice")
        assert org in text_of(app, "#tasks-notice")
        assert screen.query_one("#tasks-notice").has_class("-error")

        await pilot.press("s", "ctrl+r")  # the starter query
        status = screen.query_one("#sql-status", Static)
        await until(pilot, lambda: status.has_class("-error"), "the console's error")
        assert "error 503" in text_of(app, "#sql-status") and "store" in text_of(app, "#sql-status")
        assert app.is_running


def _drawn(plot: DailyPlot) -> str:
    return plot.plt.build()
