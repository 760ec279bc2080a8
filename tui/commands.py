"""The command palette (ctrl+p): every action of the dashboard by name, and one entry
per batch for start / enable / disable, so nothing needs a key to be remembered."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tui import flows

if TYPE_CHECKING:
    from tui.app import BatchdeckApp

GLOBAL = (
    ("Go to: batches and executions", "show_main", "the main screen"),
    ("Go to: tasks", "show_tasks", "every task; start, create, edit, delete"),
    ("Go to: runners", "show_runners", "the org's runners, their pools and what they run"),
    ("Go to: history", "show_history", "success rates and durations over time; SQL console"),
    ("Help: key bindings", "help", "every key of the current screen"),
    ("Quit", "quit", "leave the dashboard"),
)


class BatchdeckCommands(Provider):
    @property
    def bd_app(self) -> BatchdeckApp:
        return self.app  # type: ignore[return-value]

    def _entries(self) -> list[tuple[str, Callable[[], Any], str]]:
        app = self.bd_app
        entries = [(name, partial(app.run_action, action), help_) for name, action, help_ in GLOBAL]
        entries += [("New batch", partial(flows.batch_form, app, None), "a form, with the next fire times as you type"),
                    ("New task", partial(flows.task_form, app, None), "a command or a module of the runners")]
        if app.live is None:
            return entries
        main = app.main_screen
        for batch in sorted(app.live.batches.values(), key=lambda b: b.name.lower()):
            if batch.deleted_at is None:
                toggle = "Disable" if batch.is_enabled else "Enable"
                entries += [
                    (f"Start batch: {batch.name}", partial(main.start_batch, batch.id), "run it now"),
                    (f"Start batch with context: {batch.name}", partial(flows.start_batch_form, app, batch),
                     "a form for the run's context"),
                    (f"{toggle} batch: {batch.name}", partial(main.toggle_batch, batch.id), "its schedule"),
                    (f"Edit batch: {batch.name}", partial(flows.batch_form, app, batch), "schedule, actions, policies"),
                    (f"Delete batch: {batch.name}", partial(flows.delete_batch, app, batch), "asks first"),
                ]
        for task in sorted(app.live.tasks.values(), key=lambda t: t.name.lower()):
            if task.deleted_at is None:
                entries += [
                    (f"Start task: {task.name}", partial(flows.start_task_form, app, task), "with its parameters"),
                    (f"Edit task: {task.name}", partial(flows.task_form, app, task), "command, module, limits"),
                    (f"Delete task: {task.name}", partial(flows.delete_task, app, task), "asks first"),
                ]
        for execution in app.live.executions.values():
            if not execution.is_final:
                entries.append((f"Cancel execution: {execution.name} {execution.id}",
                                partial(main.cancel_execution, execution.id), execution.status))
        return entries

    async def discover(self) -> Hits:
        for name, run, help_ in self._entries()[: len(GLOBAL) + 2]:
            yield DiscoveryHit(name, run, help=help_)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, run, help_ in self._entries():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), run, help=help_)
