"""The history screen: how each task fared over time, and a SQL console, both read from
the store's DuckDB history through `history.sql` (docs/sql.md).

Every request runs in a worker of its own group, so the UI never waits on the store;
a missing store, a refused statement or a timeout is shown to the user, never raised.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import (
    DataTable,
    Footer,
    Header,
    Label,
    RadioButton,
    RadioSet,
    Static,
    TabbedContent,
    TabPane,
    TextArea,
)
from textual_plotext import PlotextPlot

from broker.client import ApiClient
from broker.errors import ApiError, Unavailable

REQUEST_TIMEOUT = 30.0
"""Seconds to wait for `history.sql`; the store itself stops a query after 10 s."""
RANGES = (7, 30, 90)
"""The plot windows offered, in days."""
DEFAULT_RANGE = 30
SHOWN_ROWS = 1000
"""Rows the console puts in its table: DataTable slows down badly beyond a few thousand."""
CELL_CHARS = 200
QUERY_LOG_SIZE = 50

# ---- queries (docs/sql.md) ------------------------------------------------------------

TASK_STATS_SQL = """\
SELECT task_id, coalesce(task_name, task_id) AS task_name, runs, succeeded, failed, success_rate,
       p50_ms, p95_ms, max_ms, last_status, last_finished_at
FROM task_stats
ORDER BY failed DESC, runs DESC, task_id
LIMIT 1000"""

# One row per UTC day (of the execution's queued_at, as daily_runs counts) on which the
# task finished an action; counted over actions like task_stats, so batch runs count too.
TASK_DAYS_SQL = """\
SELECT CAST(e.queued_at AS DATE) AS day,
       count(*) AS runs,
       round(100.0 * count(*) FILTER (WHERE a.status = 'succeeded') / count(*), 1) AS success_pct,
       round(quantile_cont(a.duration_ms, 0.95) / 1000.0, 3) AS p95_s
FROM execution_actions a
JOIN executions e ON e.id = a.execution_id
WHERE a.task_id = ?
  AND a.status IN ('succeeded', 'failed', 'timed_out', 'lost', 'canceled')
  AND e.queued_at >= CAST(? AS DATE)
GROUP BY day
ORDER BY day"""

STARTER_SQL = """\
-- ctrl+r runs the query; ctrl+up / ctrl+down walk through the queries run before.
-- Tables: executions, execution_actions, logs, triggers, tasks, batches, runners
-- Views: task_stats, daily_runs (columns in docs/sql.md)
SELECT day, runs, succeeded, failed, round(p95_ms / 1000, 1) AS p95_s
FROM daily_runs
ORDER BY day DESC
LIMIT 30
"""

NO_STORE = ("No history store is answering for org {org}.\n"
            "Start one with `batchdeck store`, then press r to try again.")
NO_RUNS = ("No finished task runs in the history yet.\n"
           "Runs show up here once they end and the store has read their events.")

STATUS_STYLES = {
    "succeeded": "green", "failed": "red", "timed_out": "red", "lost": "red",
    "canceled": "yellow", "skipped": "dim", "running": "cyan", "queued": "dim cyan",
}


# ---- values to text ---------------------------------------------------------------------


def records(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """A `history.sql` reply as one dict per row."""
    return [dict(zip(reply["columns"], row, strict=True)) for row in reply["rows"]]


def format_duration(ms: float | None) -> str:
    """A duration given in milliseconds, in the unit a person reads it in."""
    if ms is None:
        return "–"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def format_rate(rate: float | None) -> Text:
    """A success rate (0–1) as a percentage, green when healthy, red when not."""
    if rate is None:
        return Text("–", justify="right")
    style = "green" if rate >= 0.95 else "yellow" if rate >= 0.8 else "red"
    return Text(f"{rate * 100:.1f}%", style=style, justify="right")


def format_status(status: str | None) -> Text:
    return Text(status or "–", style=STATUS_STYLES.get(status or "", ""))


def format_time(iso: str | None) -> str:
    """`2026-11-20T02:00:40.508Z` as `2026-11-20 02:00:40` (UTC)."""
    return "–" if not iso else iso[:19].replace("T", " ")


def number(value: int | float) -> Text:
    return Text(str(value), justify="right")


def result_cell(value: Any) -> Text:
    """One value of a query result as a single line of plain text (never markup: log
    lines are full of square brackets)."""
    if value is None:
        return Text("null", style="dim italic")
    if isinstance(value, bool):
        return Text(str(value).lower(), style="magenta")
    if isinstance(value, int | float):
        return Text(str(value), style="cyan", justify="right")
    shown = value if isinstance(value, str) else json.dumps(value)
    shown = shown.replace("\r", "").replace("\n", "⏎")
    if len(shown) > CELL_CHARS:
        shown = shown[:CELL_CHARS - 1] + "…"
    return Text(shown)


def describe_failure(err: Exception) -> tuple[str, str]:
    """A failed request as (notification title, one-line message)."""
    if isinstance(err, ApiError):
        title = {400: "Query refused", 503: "No store", 504: "Timed out"}.get(err.code, "Request failed")
        return title, f"error {err.code}: {err.message}"
    return "Request failed", f"{type(err).__name__}: {err}"


def window_start(days: int) -> date:
    """The first UTC day of a window of `days` days that ends today."""
    return datetime.now(UTC).date() - timedelta(days=days - 1)


# ---- widgets --------------------------------------------------------------------------------


class DailyPlot(PlotextPlot):
    """One value per day over a window of days, as a line with points. `series` keeps
    what is drawn: [(day as YYYY-MM-DD, value)], oldest first."""

    def __init__(self, heading: str, color: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.heading = heading
        self.color = color
        self.series: list[tuple[str, float]] = []

    def on_mount(self) -> None:
        self.show_message("select a task")

    def show_message(self, message: str) -> None:
        """An empty plot whose title says why it is empty."""
        self.series = []
        self.plt.clear_figure()
        self.plt.title(f"{self.heading} · {message}")
        self.refresh()

    def show_series(self, task: str, series: list[tuple[str, float]], days: int,
                    ceiling: float | None = None) -> None:
        """Draw `series` on an x axis of the last `days` days; y from 0 to `ceiling`
        (or a little above the highest value)."""
        if not series:
            self.show_message(f"{task}: no runs in the last {days} days")
            return
        self.series = series
        start = window_start(days)
        offsets = [(date.fromisoformat(day) - start).days for day, _ in series]
        values = [value for _, value in series]
        plt = self.plt
        plt.clear_figure()
        plt.title(f"{self.heading} · {task} · last {days} days")
        plt.plot(offsets, values, marker="braille", color=self.color)
        plt.scatter(offsets, values, marker="●", color=self.color)
        plt.xlim(0, days - 1)
        plt.ylim(0, ceiling if ceiling is not None else max(max(values) * 1.15, 0.001))
        ticks = _day_ticks(start, days)
        plt.xticks([offset for offset, _ in ticks], [label for _, label in ticks])
        self.refresh()


def _day_ticks(start: date, days: int, count: int = 6) -> list[tuple[int, str]]:
    step = max(1, (days - 1) // (count - 1))
    offsets = list(range(0, days, step))
    if offsets[-1] != days - 1:
        offsets[-1] = days - 1  # always label today
    return [(offset, f"{start + timedelta(days=offset):%m-%d}") for offset in offsets]


class TaskTrends(Vertical):
    """Tab 1: `task_stats` as a table, worst first; the highlighted task's success rate
    and p95 duration by day as plots over a chosen window."""

    BINDINGS = [
        Binding("r", "refresh", "Refresh", id="history.refresh", show=True),
        Binding("d", "cycle_range", "Range 7/30/90 d", id="history.range", show=True),
    ]

    def __init__(self, api: ApiClient, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.api = api
        self.days = DEFAULT_RANGE
        self.task_id: str | None = None
        self.task_names: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        with Horizontal(id="tasks-toolbar"):
            yield Label("Plot range", id="range-label")
            with RadioSet(id="range"):
                for days in RANGES:
                    yield RadioButton(f"{days} days", value=days == self.days, id=f"range-{days}")
            yield Static("loading…", id="tasks-status")
        yield Static("", id="tasks-notice")
        yield DataTable(id="task-table", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="task-plots"):
            yield DailyPlot("Success rate (%)", "green", id="plot-success")
            yield DailyPlot("p95 duration (s)", "orange", id="plot-p95")

    def on_mount(self) -> None:
        table = self.query_one("#task-table", DataTable)
        for label, key in (("Task", "task"), ("ID", "id"), ("Runs", "runs"), ("Failed", "failed"),
                           ("Success", "success"), ("p50", "p50"), ("p95", "p95"), ("Max", "max"),
                           ("Last status", "last_status"), ("Last finished (UTC)", "last_finished")):
            table.add_column(label, key=key)
        self.load_stats()

    def action_refresh(self) -> None:
        self.load_stats()
        if self.task_id is not None:
            self.load_days(self.task_id)

    def action_cycle_range(self) -> None:
        following = RANGES[(RANGES.index(self.days) + 1) % len(RANGES)]
        self.query_one(f"#range-{following}", RadioButton).value = True  # posts RadioSet.Changed

    @on(RadioSet.Changed, "#range")
    def range_changed(self, event: RadioSet.Changed) -> None:
        self.days = RANGES[event.index]
        if self.task_id is not None:
            self.load_days(self.task_id)

    @on(DataTable.RowHighlighted, "#task-table")
    @on(DataTable.RowSelected, "#task-table")
    def task_chosen(self, event: DataTable.RowHighlighted | DataTable.RowSelected) -> None:
        task_id = event.row_key.value
        if task_id is not None and task_id != self.task_id:
            self.task_id = task_id
            self.load_days(task_id)

    @work(exclusive=True, group="history-task-stats")
    async def load_stats(self) -> None:
        status = self.query_one("#tasks-status", Static)
        status.update("loading…")
        try:
            reply = await self.api.call("history", "sql", {"sql": TASK_STATS_SQL, "params": []},
                                        timeout=REQUEST_TIMEOUT)
        except Exception as err:  # any failure is the user's to see, not the app's to die of
            self._show_failure(err)
            return
        stats = records(reply)
        if not stats:
            self._show_notice(NO_RUNS, error=False)
            status.update("no runs yet")
            return
        self._show_stats(stats)
        status.update(f"{len(stats)} tasks · worst first · updated {datetime.now(UTC):%H:%M:%S} UTC")

    @work(exclusive=True, group="history-task-days")
    async def load_days(self, task_id: str) -> None:
        task, days = self.task_names.get(task_id, task_id), self.days
        success = self.query_one("#plot-success", DailyPlot)
        p95 = self.query_one("#plot-p95", DailyPlot)
        for plot in (success, p95):
            plot.show_message(f"{task}: loading…")
        params = [task_id, window_start(days).isoformat()]
        try:
            reply = await self.api.call("history", "sql", {"sql": TASK_DAYS_SQL, "params": params},
                                        timeout=REQUEST_TIMEOUT)
        except Exception as err:  # shown in the plots' titles and as a notification
            title, message = describe_failure(err)
            for plot in (success, p95):
                plot.show_message(message)
            self.notify(message, title=title, severity="error")
            return
        rows = records(reply)
        success.show_series(task, [(r["day"], r["success_pct"]) for r in rows], days, ceiling=100)
        p95.show_series(task, [(r["day"], r["p95_s"]) for r in rows if r["p95_s"] is not None], days)

    def _show_stats(self, stats: list[dict[str, Any]]) -> None:
        self.set_class(False, "-notice")
        table = self.query_one("#task-table", DataTable)
        keep = table.cursor_row
        table.clear()
        self.task_names = {row["task_id"]: row["task_name"] for row in stats}
        for row in stats:
            table.add_row(
                Text(row["task_name"], style="bold"), Text(row["task_id"], style="dim"), number(row["runs"]),
                Text(str(row["failed"]), style="red" if row["failed"] else "", justify="right"),
                format_rate(row["success_rate"]), format_duration(row["p50_ms"]),
                format_duration(row["p95_ms"]), format_duration(row["max_ms"]), format_status(row["last_status"]),
                format_time(row["last_finished_at"]), key=row["task_id"],
            )
        table.move_cursor(row=min(keep, len(stats) - 1))

    def _show_failure(self, err: Exception) -> None:
        title, message = describe_failure(err)
        if isinstance(err, Unavailable):
            self._show_notice(NO_STORE.format(org=self.api.org), error=True)
            self.query_one("#tasks-status", Static).update(Text("no store", style="bold red"))
        else:
            self._show_notice(message, error=True)
            self.query_one("#tasks-status", Static).update(Text(title, style="bold red"))
        self.notify(message, title=title, severity="error")

    def _show_notice(self, text: str, error: bool) -> None:
        """Replace the table and plots by a message (no runs, no store, a failure)."""
        notice = self.query_one("#tasks-notice", Static)
        notice.update(text)
        notice.set_class(error, "-error")
        self.set_class(True, "-notice")


class QueryLog:
    """The queries run in the console, oldest first, walked with ctrl+up / ctrl+down;
    what was in the editor before the walk began comes back at its end."""

    def __init__(self, size: int = QUERY_LOG_SIZE) -> None:
        self.size = size
        self.entries: list[str] = []
        self.position: int | None = None  # None: at the editor's own text, not in the log
        self.draft = ""

    def add(self, sql: str) -> None:
        if not self.entries or self.entries[-1] != sql:
            self.entries = [*self.entries, sql][-self.size:]
        self.position = None

    def previous(self, current: str) -> str | None:
        if not self.entries or self.position == 0:
            return None
        if self.position is None:
            self.draft, self.position = current, len(self.entries) - 1
        else:
            self.position -= 1
        return self.entries[self.position]

    def next(self) -> str | None:
        if self.position is None:
            return None
        if self.position < len(self.entries) - 1:
            self.position += 1
            return self.entries[self.position]
        self.position = None
        return self.draft


class SqlConsole(Vertical):
    """Tab 2: an editor for one SELECT, its result as a table, and a status line with
    the row count and time taken, or the error in red."""

    BINDINGS = [
        Binding("ctrl+r,ctrl+enter", "run_query", "Run query", id="history.run_query", show=True),
        Binding("ctrl+up", "previous_query", "Previous query", id="history.previous_query", show=True),
        Binding("ctrl+down", "next_query", "Next query", id="history.next_query", show=True),
    ]

    def __init__(self, api: ApiClient, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.api = api
        self.log_of_queries = QueryLog()

    def compose(self) -> ComposeResult:
        # Tab moves the focus on (not indents) so that escape is left to go back.
        yield TextArea(STARTER_SQL, id="sql-editor", show_line_numbers=True, tab_behavior="focus",
                       soft_wrap=False)
        yield Static(Text("ctrl+r runs the query", style="dim"), id="sql-status")
        yield DataTable(id="sql-results", zebra_stripes=True)

    def on_mount(self) -> None:
        editor = self.query_one("#sql-editor", TextArea)
        if "sql" in editor.available_languages:  # needs Textual's syntax extra (tree-sitter)
            editor.language = "sql"

    @property
    def editor(self) -> TextArea:
        return self.query_one("#sql-editor", TextArea)

    def action_run_query(self) -> None:
        sql = self.editor.text.strip()
        if not sql:
            self._show_status(Text("nothing to run: write a SELECT", style="yellow"), error=False)
            return
        self.log_of_queries.add(sql)
        self.run_query(sql)

    def action_previous_query(self) -> None:
        self._load_into_editor(self.log_of_queries.previous(self.editor.text))

    def action_next_query(self) -> None:
        self._load_into_editor(self.log_of_queries.next())

    def _load_into_editor(self, sql: str | None) -> None:
        if sql is not None:
            self.editor.load_text(sql)
            self.editor.move_cursor(self.editor.document.end)

    @work(exclusive=True, group="history-sql")
    async def run_query(self, sql: str) -> None:
        results = self.query_one("#sql-results", DataTable)
        self._show_status(Text("running…", style="cyan"), error=False)
        results.loading = True
        started = time.perf_counter()
        try:
            reply = await self.api.call("history", "sql", {"sql": sql, "params": []}, timeout=REQUEST_TIMEOUT)
        except Exception as err:  # refused, no store, timeout, connection lost: all shown, none fatal
            title, message = describe_failure(err)
            self._show_status(Text(f"✗ {message}", style="bold red"), error=True)
            self.notify(message, title=title, severity="error")
            return
        finally:
            results.loading = False
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._show_result(reply["columns"], reply["rows"])
        self._show_status(self._summary(len(reply["rows"]), elapsed_ms), error=False)

    def _show_result(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        results = self.query_one("#sql-results", DataTable)
        results.clear(columns=True)
        # add_columns makes its own keys: a result may repeat a column name
        results.add_columns(*(Text(name, style="bold") for name in columns))
        results.add_rows([result_cell(value) for value in row] for row in rows[:SHOWN_ROWS])

    @staticmethod
    def _summary(count: int, elapsed_ms: float) -> Text:
        text = Text(f"✓ {count} row{'' if count == 1 else 's'}", style="green")
        if count > SHOWN_ROWS:
            text.append(f" (showing the first {SHOWN_ROWS})", style="yellow")
        text.append(f" · {elapsed_ms:.0f} ms", style="dim")
        return text

    def _show_status(self, text: Text, error: bool) -> None:
        status = self.query_one("#sql-status", Static)
        status.update(text)
        status.set_class(error, "-error")


# ---- the screen ----------------------------------------------------------------------------


class HistoryScreen(Screen):
    """History of the org `api` speaks for: tasks over time and a SQL console."""

    TITLE = "History"

    BINDINGS = [
        Binding("escape", "back", "Back", id="history.back", show=True),
        Binding("t", "show_tab('tab-tasks')", "Tasks", id="history.tab_tasks", show=True),
        Binding("s", "show_tab('tab-sql')", "SQL console", id="history.tab_sql", show=True),
    ]

    DEFAULT_CSS = """
    HistoryScreen TabPane { padding: 0 1; }
    HistoryScreen #tasks-toolbar { height: 1; margin: 1 0; }
    HistoryScreen #range-label { padding: 0 1 0 0; color: $text-muted; }
    HistoryScreen #range { layout: horizontal; width: auto; height: 1; border: none; padding: 0;
                           background: transparent; }
    HistoryScreen #range RadioButton { width: auto; height: 1; border: none; padding: 0 1; }
    HistoryScreen #tasks-status { width: 1fr; text-align: right; color: $text-muted; }
    HistoryScreen #tasks-notice { display: none; margin: 2 4; padding: 1 2; border: round $primary;
                                  text-align: center; color: $text-muted; }
    HistoryScreen #tasks-notice.-error { border: round $error; color: $error; }
    HistoryScreen TaskTrends.-notice #tasks-notice { display: block; }
    HistoryScreen TaskTrends.-notice #task-table, HistoryScreen TaskTrends.-notice #task-plots { display: none; }
    HistoryScreen #task-table { height: 1fr; min-height: 6; }
    HistoryScreen #task-plots { height: 2fr; min-height: 12; }
    HistoryScreen DailyPlot { border: round $primary-darken-2; }
    HistoryScreen #sql-editor { height: 12; }
    HistoryScreen #sql-status { height: 1; padding: 0 1; }
    HistoryScreen #sql-status.-error { background: $error 15%; }
    HistoryScreen #sql-results { height: 1fr; }
    """

    def __init__(self, api: ApiClient) -> None:
        super().__init__()
        self.api = api

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="tab-tasks", id="history-tabs"):
            with TabPane("Tasks over time", id="tab-tasks"):
                yield TaskTrends(self.api, id="task-trends")
            with TabPane("SQL console", id="tab-sql"):
                yield SqlConsole(self.api, id="sql-console")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"org {self.api.org}"
        self.query_one("#task-table", DataTable).focus()

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self.query_one("#sql-editor" if tab == "tab-sql" else "#task-table").focus()
