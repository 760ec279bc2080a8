"""Who may change what runs.

An operator may start a task; only an admin may define what it runs. So a start sets
only the params the task declares `overridable` (like Rundeck's job options), each of
its declared type; any other is refused (403) by name. And the program of a command
task (its first argument) takes its `{{ values }}` from the task's params alone: a
start's context fills templates in the arguments, never the program. The runner renders
the program the same way (runner.templates), so a run enqueued by other means is held
to it too.
"""

from __future__ import annotations

from typing import Any

from broker.errors import BadRequest, Forbidden
from broker.types import TEMPLATE_PLACEHOLDER, Task


def start_params(task: Task, given: dict[str, Any]) -> dict[str, Any]:
    """The params a start of `task` sets: `given`, once each is declared overridable and
    of its declared type."""
    if not given:
        return given
    declared = {param.name: param for param in task.overridable}
    undeclared = sorted(set(given) - set(declared))
    if undeclared:
        allowed = ", ".join(sorted(declared)) or "none"
        raise Forbidden(f"task {task.id!r} does not let a start set {', '.join(undeclared)} (params a start may set: "
                        f"{allowed}; an admin declares them in the task's `overridable`)",
                        {"params": undeclared, "overridable": sorted(declared)})
    problems = {name: problem for name, value in given.items() if (problem := declared[name].problem(value))}
    if problems:
        raise BadRequest("; ".join(f"param {name!r} {problem}" for name, problem in problems.items()),
                         {"params": problems})
    return given


def check_program(task: Task) -> None:
    """Refuse a command whose program names a value its params do not hold (it would
    come from a start's context, which may not choose what runs)."""
    if task.kind != "command" or not task.command:
        return
    missing = [name for name in TEMPLATE_PLACEHOLDER.findall(task.command[0]) if name not in task.params]
    if missing:
        raise Forbidden(f"task {task.id!r}: its program {task.command[0]!r} takes {', '.join(missing)}, which is not "
                        "among its params; a program comes from the task's params (or those a start may set), "
                        "never from a start's context", {"program": task.command[0], "missing": missing})
