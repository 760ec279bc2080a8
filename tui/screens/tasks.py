"""The tasks screen: every task of the org, live from KV `bd_tasks`; start one (with a
form built from its module's parameters), create, edit and delete."""

from __future__ import annotations

from datetime import datetime

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer

from broker.types import Task
from tui import flows, formatting
from tui.screens.base import BatchdeckScreen
from tui.live import LiveState
from tui.messages import LiveChanged
from tui.widgets.connection_bar import ConnectionBar
from tui.widgets.filter_box import FilterBox
from tui.widgets.live_table import LiveTable, Row

TASK_COLUMNS = [("name", "Task"), ("kind", "Kind"), ("what", "Runs"), ("pool", "Pool"), ("limits", "Timeout · retries"),
                ("flags", "Flags"), ("updated", "Updated"), ("id", "Id")]


def task_row(task: Task, now: datetime) -> Row:
    what = " ".join(task.command or []) if task.kind == "command" else f"module {task.module}"
    timeout = formatting.duration(task.timeout_sec * 1000) if task.timeout_sec else "none"
    flags = " ".join(f for f, on in (("shell", task.shell), ("no-cancel", not task.cancellable),
                                     ("untraced", not task.trace), ("system", task.system)) if on)
    return (task.id, [task.name, task.kind or "", what, task.pool, f"{timeout} · {task.retries}", flags or "—",
                      formatting.clock_time(task.updated_at, now), task.id])


class TasksScreen(BatchdeckScreen):
    BINDINGS = [
        Binding("escape", "app.show_main", "Back", id="back"),
        Binding("s", "start", "Start", id="task-start"),
        Binding("S", "start_now", "Start now", show=False, id="task-start-now"),
        Binding("n", "new", "New task", id="task-new"),
        Binding("d", "delete", "Delete", id="task-delete"),
        Binding("slash", "filter", "Filter", id="task-filter"),
    ]

    def compose(self) -> ComposeResult:
        yield ConnectionBar("tasks")
        yield FilterBox()
        yield LiveTable(TASK_COLUMNS, id="tasks")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(LiveTable).focus()
        self.repaint()

    def on_live_changed(self, message: LiveChanged) -> None:
        if "tasks" in message.kinds or "runners" in message.kinds:
            self.repaint()

    def paint(self, live: LiveState, now: datetime) -> None:
        tasks = sorted((t for t in live.tasks.values() if t.deleted_at is None), key=lambda t: t.name.lower())
        self.query_one(LiveTable).set_rows([task_row(t, now) for t in tasks])
        self.query_one(ConnectionBar).set_counts(f"{len(tasks)} tasks")

    def _selected(self) -> Task | None:
        live = self.bd_app.live
        return self.selected(self.query_one(LiveTable), live and live.tasks, "a task")

    def action_start(self) -> None:
        task = self._selected()
        if task is not None:
            flows.start_task_form(self.bd_app, task)

    def action_start_now(self) -> None:
        task = self._selected()
        if task is not None:
            self.call_then("task", "start", {"id": task.id}, lambda reply: flows.said_started(self.bd_app, reply))

    def action_new(self) -> None:
        flows.task_form(self.bd_app, None)

    @on(DataTable.RowSelected)
    def action_edit(self) -> None:
        task = self._selected()
        if task is not None:
            flows.task_form(self.bd_app, task)

    def action_delete(self) -> None:
        task = self._selected()
        if task is not None:
            flows.delete_task(self.bd_app, task)

    def action_filter(self) -> None:
        self.query_one(FilterBox).open_for(self.query_one(LiveTable))

