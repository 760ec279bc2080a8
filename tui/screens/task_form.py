"""Create or edit a task: the fields of `broker.types.TaskSpec` a person sets by hand.

The form builds the spec and hands it to the caller's `save`, which makes the API call;
an `ApiError` from it is shown in the form, which stays open for the user to fix it.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Input, Select, Static, Switch, TextArea

from broker.types import TaskSpec
from tui.screens.form_screen import FormError, FormScreen, field_row, hint, inline_row, spec_defaults, spec_request
from tui.screens.form_screen import Save as SaveTask  # what `save` must be

# What a field holds when the stored task leaves it out: the contract's own defaults.
SPEC_DEFAULTS = spec_defaults(TaskSpec)

KINDS = [("command · run a program", "command"), ("module · a handler runners provide", "module")]


class TaskForm(FormScreen):
    """Dismisses with what `save` returned (the stored task), or None when cancelled or
    when an edit changed nothing (no request is sent then)."""

    WHAT = "task"

    def __init__(self, save: SaveTask, task: dict[str, Any] | None = None, modules: list[dict] | None = None) -> None:
        super().__init__(save, f"Edit task {task['id']}" if task else "New task")
        self.original = task
        self.modules = {module["name"]: module for module in modules or []}
        # Text the form put into a field; unchanged text means "keep the stored value".
        self.initial_command = _command_text(task)
        self.prefilled_params = json.dumps((task or {}).get("params", {}), indent=2)
        self.params_module = (task or {}).get("module")  # whose params the params field holds

    # ---- layout ------------------------------------------------------------------

    def compose_fields(self) -> ComposeResult:
        task = self.original or {}
        yield from self.new_id_field(self.original is None)
        kind = task.get("kind") or "command"
        yield field_row("Name", Input(task.get("name", ""), id="name", max_length=200), required=True)
        yield field_row("Description", Input(task.get("description", ""), id="description", max_length=4000))
        yield field_row("Kind", Select(KINDS, id="kind", value=kind, allow_blank=False))
        yield field_row("Command", Input(self.initial_command, id="command",
                                         placeholder='e.g. backup.sh --db "{{ db }}"'), field_id="command-field")
        yield hint(id="command-hint")
        yield field_row("Module", self._module_select(task.get("module")), field_id="module-field")
        yield hint(id="module-hint")
        yield field_row("Params", TextArea(self.prefilled_params, id="params", show_line_numbers=False))
        yield hint(id="params-hint")
        yield self._limits_row(task)
        yield self._switches_row(task)

    def _module_select(self, current: str | None) -> Select:
        options = [(name, name) for name in sorted(self.modules)]
        if current and current not in self.modules:  # its runners are away; keep it choosable
            options.append((f"{current} (no live runner offers it)", current))
        prompt = "Choose a module" if options else "No live runner offers modules"
        return Select(options, id="module", prompt=prompt, value=current or Select.NULL)

    def _limits_row(self, task: dict[str, Any]) -> Horizontal:
        return inline_row(
            ("Pool", Input(task.get("pool", "default"), id="pool", classes="bd-short", max_length=32)),
            ("Timeout s", Input(_number_text(task.get("timeout_sec")), id="timeout", classes="bd-short",
                                type="number", placeholder="none")),
            ("Retries", Input(str(task.get("retries", 0)), id="retries", classes="bd-short", type="integer")),
        )

    def _switches_row(self, task: dict[str, Any]) -> Horizontal:
        return inline_row(
            ("Shell", Switch(bool(task.get("shell", False)), id="shell")),
            ("Cancellable", Switch(bool(task.get("cancellable", True)), id="cancellable")),
            ("Trace", Switch(bool(task.get("trace", True)), id="trace")),
        )

    def on_mount(self) -> None:
        self._show_kind()

    # ---- live feedback -----------------------------------------------------------

    @on(Select.Changed, "#kind")
    def _kind_changed(self) -> None:
        self._show_kind()

    @on(Input.Changed, "#command")
    @on(Switch.Changed, "#shell")
    def _command_changed(self) -> None:
        self._show_command()

    @on(Select.Changed, "#module")
    def _module_changed(self) -> None:
        self._prefill_params()
        self._show_module()

    def _show_kind(self) -> None:
        is_module = self._kind() == "module"
        for selector in ("#command-field", "#command-hint"):
            self.query_one(selector).set_class(is_module, "-hidden")
        for selector in ("#module-field", "#module-hint"):
            self.query_one(selector).set_class(not is_module, "-hidden")
        self.query_one("#shell", Switch).disabled = is_module  # `shell` applies to commands only
        self.query_one("#params-hint", Static).update(
            "JSON object of the module's parameters" if is_module
            else "JSON object; its values fill {{ name }} placeholders in the command"
        )
        self._show_command()
        self._show_module()

    def _show_command(self) -> None:
        line = self.query_one("#command-hint", Static)
        shell = self.query_one("#shell", Switch).value
        try:
            argv = _parse_command(self.query_one("#command", Input).value, shell)
        except FormError as err:
            line.update(str(err))
            return
        line.update("runs as one /bin/sh -c script" if shell else f"argv {json.dumps(argv, ensure_ascii=False)}")

    def _show_module(self) -> None:
        module = self.modules.get(self._module_name() or "")
        self.query_one("#module-hint", Static).update(_module_help(module) if module else "")

    def _prefill_params(self) -> None:
        """Fill params with a newly chosen module's defaults, unless the user wrote their own."""
        name = self._module_name()
        module = self.modules.get(name or "")
        params = self.query_one("#params", TextArea)
        if name == self.params_module or module is None:  # Select reports its initial value too
            return
        if params.text.strip() not in ("", "{}", self.prefilled_params.strip()):
            return
        self.params_module = name
        self.prefilled_params = json.dumps(_param_defaults(module), indent=2)
        params.load_text(self.prefilled_params)

    # ---- building the spec -------------------------------------------------------

    def _kind(self) -> str:
        return str(self.query_one("#kind", Select).value)

    def _module_name(self) -> str | None:
        value = self.query_one("#module", Select).value
        return None if value is Select.NULL else str(value)

    def _spec(self) -> dict[str, Any]:
        """Every field the form holds, as TaskSpec data; FormError names a bad field."""
        shell = self.query_one("#shell", Switch).value
        spec: dict[str, Any] = {
            "name": self.query_one("#name", Input).value.strip(),
            "description": self.query_one("#description", Input).value.strip(),
            "kind": self._kind(),
            "params": _parse_params(self.query_one("#params", TextArea).text),
            "pool": self.query_one("#pool", Input).value.strip() or "default",
            "timeout_sec": _parse_timeout(self.query_one("#timeout", Input).value),
            "retries": _parse_retries(self.query_one("#retries", Input).value),
            "cancellable": self.query_one("#cancellable", Switch).value,
            "trace": self.query_one("#trace", Switch).value,
            # The other kind's fields are cleared, so an edit that switches kind is valid.
            "command": None, "module": None, "shell": False,
        }
        if spec["kind"] == "command":
            spec["command"] = self._command(shell)
            spec["shell"] = shell
        else:
            spec["module"] = self._module_name()
            if spec["module"] is None:
                raise FormError("module: choose the module this task runs")
        return spec

    def _command(self, shell: bool) -> list[str]:
        text = self.query_one("#command", Input).value
        task = self.original or {}
        if task.get("command") and text == self.initial_command and shell == task.get("shell", False):
            return task["command"]  # as stored: the one-line text may not round-trip exactly
        return _parse_command(text, shell)

    def build(self) -> dict[str, Any] | None:
        """The body for `save`: the whole spec for a new task; for an edit, `id`,
        `version` and the changed fields, or None when nothing changed."""
        request = spec_request(self._spec(), self.original, SPEC_DEFAULTS)
        return {**self.chosen_id(), **request} if request is not None else None


# ---- fields ----------------------------------------------------------------------


def _command_text(task: dict[str, Any] | None) -> str:
    """A stored command as the one line the form edits."""
    command = (task or {}).get("command") or []
    if (task or {}).get("shell"):
        return " ".join(command)  # the runner joins a shell command with spaces, so do we
    return shlex.join(command)


def _number_text(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def _module_help(module: dict[str, Any]) -> str:
    lines = [module["description"]] if module.get("description") else []
    for param in module.get("params", []):
        flags = f"{param.get('type', 'string')}, required" if param.get("required") else param.get("type", "string")
        about = f" · {param['description']}" if param.get("description") else ""
        lines.append(f"{param['name']} ({flags}){about}")
    return "\n".join(lines)


def _param_defaults(module: dict[str, Any]) -> dict[str, Any]:
    """The module's parameters with their defaults; required ones without a default are
    listed as null so the user sees what to fill in."""
    return {param["name"]: param.get("default") for param in module.get("params", [])
            if param.get("default") is not None or param.get("required")}


def _parse_command(text: str, shell: bool) -> list[str]:
    """The argv of one command line. With `shell` the line is one script: the runner
    passes it to /bin/sh -c as it is, so splitting it would lose its quoting."""
    if not text.strip():
        raise FormError("command: type the program to run, e.g. echo hello")
    if shell:
        return [text.strip()]
    try:
        return shlex.split(text)
    except ValueError as err:
        raise FormError(f"command: {err} (check the quotes)") from None


def _parse_params(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as err:
        raise FormError(f"params: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(params, dict):
        raise FormError('params: must be a JSON object, e.g. {"db": "main"}')
    return params


def _parse_timeout(text: str) -> float | None:
    if not text.strip():
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise FormError(f"timeout: {text.strip()!r} is not a number of seconds (e.g. 300, or empty for none)") from None
    if seconds <= 0:
        raise FormError("timeout: must be more than 0 seconds (or empty for none)")
    return seconds


def _parse_retries(text: str) -> int:
    if not text.strip():
        return 0
    try:
        return int(text)
    except ValueError:
        raise FormError(f"retries: {text.strip()!r} is not a whole number") from None
