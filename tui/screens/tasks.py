"""The tasks screen: every task of the org, live from KV `bd_tasks`; start one (with a
form built from its module's parameters), create, edit and delete."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer

from broker.types import ModuleInfo, Task
from tui import formatting
from tui.screens.base import BatchdeckScreen
from tui.live import LiveState
from tui.messages import LiveChanged
from tui.screens.start_form import StartForm
from tui.screens.task_form import TaskForm
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

    def modules(self, now: datetime) -> dict[str, ModuleInfo]:
        """The modules the org's live runners offer, by name."""
        live = self.bd_app.live
        found: dict[str, ModuleInfo] = {}
        for runner in live.runners.values() if live is not None else []:
            if formatting.runner_alive(runner.heartbeat_at, now):
                for module in runner.modules:
                    found.setdefault(module.name, module)
        return found

    def _selected(self) -> Task | None:
        live = self.bd_app.live
        return self.selected(self.query_one(LiveTable), live and live.tasks, "a task")

    def action_start(self) -> None:
        task, api = self._selected(), self.bd_app.api
        if task is None or api is None:
            return
        module = self.modules(self.bd_app.clock()).get(task.module or "") if task.kind == "module" else None
        params = [msgspec.to_builtins(p) for p in module.params] if module is not None else None

        async def start(body: dict[str, Any]) -> dict[str, Any]:
            return await api.call("task", "start", {"id": task.id, **body})

        self.app.push_screen(StartForm(f"Start task {task.name}", start, params), self.said_started)

    def action_start_now(self) -> None:
        task = self._selected()
        if task is not None:
            self.call_then("task", "start", {"id": task.id}, self.said_started)

    def action_new(self) -> None:
        self._open_form(None)

    @on(DataTable.RowSelected)
    def action_edit(self) -> None:
        task = self._selected()
        if task is not None:
            self._open_form(task)

    def _open_form(self, task: Task | None) -> None:
        api = self.bd_app.api
        if api is None:
            return
        verb = "create" if task is None else "update"

        async def save(spec: dict[str, Any]) -> dict[str, Any]:
            return await api.call("task", verb, spec)

        modules = [msgspec.to_builtins(m) for m in self.modules(self.bd_app.clock()).values()]
        current = msgspec.to_builtins(task) if task is not None else None
        self.app.push_screen(TaskForm(save, current, modules),
                             lambda saved: saved and self.notify(f"Saved task {saved['name']}"))

    def action_delete(self) -> None:
        task = self._selected()
        if task is not None:
            self.confirm_delete("task", task.id, task.name,
                                "Batches that use it must be changed first; its history stays.")

    def action_filter(self) -> None:
        self.query_one(FilterBox).open_for(self.query_one(LiveTable))

