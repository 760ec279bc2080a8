"""What the dashboard does for an operator, whichever key, screen or palette entry asked:
start (with a form), create and edit in forms, delete after a confirmation.

Each flow takes the app and the record, pushes the screen it needs and reports the
outcome as a notification; API errors inside a form stay in the form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from textual import work

from broker.types import Batch, ModuleInfo, StartParam, Task
from tui import formatting
from tui.screens.batch_form import BatchForm
from tui.screens.confirm import ConfirmScreen
from tui.screens.start_form import StartForm
from tui.screens.task_form import TaskForm

if TYPE_CHECKING:
    from tui.app import BatchdeckApp


def said_started(app: BatchdeckApp, reply: dict[str, Any] | None) -> None:
    if reply:
        app.notify(f"Queued as {reply['execution_id']}", title="started")


def offered_modules(app: BatchdeckApp) -> dict[str, ModuleInfo]:
    """The modules the org's live runners offer, by name."""
    found: dict[str, ModuleInfo] = {}
    now = app.clock()
    for runner in app.live.runners.values() if app.live is not None else []:
        if formatting.runner_alive(runner.heartbeat_at, now):
            for module in runner.modules:
                found.setdefault(module.name, module)
    return found


def start_batch_form(app: BatchdeckApp, batch: Batch) -> None:
    api = app.api
    if api is None:
        return

    async def start(body: dict[str, Any]) -> dict[str, Any]:
        return await api.call("batch", "start", {"id": batch.id, "context": body.get("context", {})})

    app.push_screen(StartForm(f"Start batch {batch.name}", start), lambda reply: said_started(app, reply))


def start_task_form(app: BatchdeckApp, task: Task) -> None:
    """The start form offers the params the task lets a start set (its `overridable`),
    each with the task's own value as its default; no other can be sent."""
    api = app.api
    if api is None:
        return
    params = [start_field(param, task.params) for param in task.overridable]

    async def start(body: dict[str, Any]) -> dict[str, Any]:
        return await api.call("task", "start", {"id": task.id, **body})

    app.push_screen(StartForm(f"Start task {task.name}", start, params), lambda reply: said_started(app, reply))


def start_field(param: StartParam, defaults: dict[str, Any]) -> dict[str, Any]:
    """One overridable param as a start form field: {name, type, default, description}."""
    description = param.description
    if param.choices:
        description = f"{description} (one of: {', '.join(str(c) for c in param.choices)})".strip()
    elif param.pattern:
        description = f"{description} (matching {param.pattern})".strip()
    return {"name": param.name, "type": param.type, "default": defaults.get(param.name), "required": False,
            "description": description}


def batch_form(app: BatchdeckApp, batch: Batch | None) -> None:
    """Create (batch None) or edit a batch."""
    live, api = app.live, app.api
    if live is None or api is None:
        app.notify("Not connected to NATS yet", severity="warning")
        return
    verb = "create" if batch is None else "update"

    async def save(spec: dict[str, Any]) -> dict[str, Any]:
        return await api.call("batch", verb, spec)

    tasks = sorted(({"id": t.id, "name": t.name} for t in live.tasks.values() if t.deleted_at is None),
                   key=lambda t: t["name"].lower())
    current = msgspec.to_builtins(batch) if batch is not None else None
    app.push_screen(BatchForm(save, current, tasks), lambda saved: saved and app.notify(f"Saved batch {saved['name']}"))


def task_form(app: BatchdeckApp, task: Task | None) -> None:
    """Create (task None) or edit a task."""
    api = app.api
    if api is None:
        app.notify("Not connected to NATS yet", severity="warning")
        return
    verb = "create" if task is None else "update"

    async def save(spec: dict[str, Any]) -> dict[str, Any]:
        return await api.call("task", verb, spec)

    modules = [msgspec.to_builtins(m) for m in offered_modules(app).values()]
    current = msgspec.to_builtins(task) if task is not None else None
    app.push_screen(TaskForm(save, current, modules), lambda saved: saved and app.notify(f"Saved task {saved['name']}"))


def delete_batch(app: BatchdeckApp, batch: Batch) -> None:
    consequence = "Its schedule stops; its history stays in the store."
    if batch.is_enabled:  # the API deletes only disabled batches: say so, and do both
        _confirm_delete(app, "batch", batch.id, batch.name, f"It is enabled: it is disabled first. {consequence}",
                        first=("batch", "status", {"id": batch.id, "is_enabled": False}))
    else:
        _confirm_delete(app, "batch", batch.id, batch.name, consequence)


def delete_task(app: BatchdeckApp, task: Task) -> None:
    _confirm_delete(app, "task", task.id, task.name, "Batches that use it must be changed first; its history stays.")


def _confirm_delete(app: BatchdeckApp, kind: str, record_id: str, name: str, consequence: str,
                    first: tuple[str, str, dict[str, Any]] | None = None) -> None:
    """Ask, then `{kind}.delete` (after the request `first`, when given, succeeded); the
    live state drops the row when the change arrives."""

    def confirmed(yes: bool | None) -> None:
        if yes:
            _delete(app, kind, record_id, name, first)

    app.push_screen(ConfirmScreen(f"Delete {kind} {name}?", consequence), confirmed)


@work(group="api")
async def _delete(app: BatchdeckApp, kind: str, record_id: str, name: str,
                  first: tuple[str, str, dict[str, Any]] | None) -> None:
    if first is not None and await app.call(*first) is None:
        return
    if await app.call(kind, "delete", {"id": record_id}) is not None:
        app.notify(f"Deleted {kind} {name}")
