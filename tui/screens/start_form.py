"""Start a task or a batch now, with a context and (for a task) the params it lets a
start set.

One input per such param, its typed text converted to the param's type; a JSON object
as the run's context. The caller's `save` sends the start request.
"""

from __future__ import annotations

import json
import re
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Input, TextArea

from tui.screens.form_screen import FormError, FormScreen, field_row, hint
from tui.screens.form_screen import Save as StartRun  # what `save` must be

TRUE_WORDS = frozenset({"true", "yes", "y", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "n", "off", "0"})
INTEGER = re.compile(r"^[+-]?\d+$")
# Input types that keep letters out of numeric fields while typing.
INPUT_TYPES = {"integer": "integer", "number": "number"}


class StartForm(FormScreen):
    """Dismisses with what `save` returned (e.g. the new execution), or None when cancelled."""

    # The base's ctrl+s (same key and id), described as what it does here.
    BINDINGS = [Binding("ctrl+s", "save", "Start", id="form.save", priority=True)]
    VERB = "start"
    VERB_VARIANT = "success"
    WHAT = "run"

    def __init__(self, title: str, save: StartRun, params: list[dict] | None = None) -> None:
        super().__init__(save, title)
        self.params = list(params or [])

    # ---- layout ------------------------------------------------------------------

    def compose_fields(self) -> ComposeResult:
        for index, param in enumerate(self.params):
            yield _param_field(index, param)
            if param.get("description"):
                yield hint(param["description"])
        yield field_row("Context", TextArea("{}", id="context", show_line_numbers=False))
        yield hint("JSON object given to the run; its values fill the {{ name }} placeholders the params leave "
                   "open (on equal names the params win)")

    # ---- building the request ----------------------------------------------------

    def build(self) -> dict[str, Any]:
        """`{"context": {...}, "params": {...}}`, params only when any were given;
        FormError names a bad field."""
        request: dict[str, Any] = {"context": _parse_context(self.query_one("#context", TextArea).text)}
        params = {}
        for index, param in enumerate(self.params):
            text = self.query_one(f"#param-{index}", Input).value
            if text.strip():
                params[param["name"]] = convert(param, text)
            elif param.get("required") and param.get("default") is None:
                raise FormError(f"{param['name']}: required")
        if params:
            request["params"] = params
        return request

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter moves to the next parameter; on the last one it starts."""
        event.stop()
        inputs = list(self.query(Input))
        if event.input is inputs[-1]:
            self.action_save()
        else:
            self.focus_next()


# ---- fields and values -----------------------------------------------------------


def _param_field(index: int, param: dict[str, Any]) -> Horizontal:
    kind = param.get("type", "string")
    default = param.get("default")
    placeholder = kind if default is None else f"{_as_text(default)} (default)"
    field = Input(id=f"param-{index}", placeholder=placeholder, type=INPUT_TYPES.get(kind, "text"))
    required = bool(param.get("required")) and default is None
    return field_row(param["name"], field, required=required)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def convert(param: dict[str, Any], text: str) -> Any:
    """The typed text as a value of the parameter's `type`; FormError (a ValueError) says why not."""
    name, kind, text = param["name"], param.get("type", "string"), text.strip()
    if kind == "string":
        return text
    if kind == "integer":
        if not INTEGER.match(text):
            raise FormError(f"{name}: {text!r} is not a whole number")
        return int(text)
    if kind == "number":
        try:
            return int(text) if INTEGER.match(text) else float(text)
        except ValueError:
            raise FormError(f"{name}: {text!r} is not a number") from None
    if kind == "boolean":
        if text.lower() in TRUE_WORDS | FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        raise FormError(f"{name}: {text!r} is not true or false")
    if kind in ("object", "array"):
        return _parse_json(name, text, dict if kind == "object" else list)
    if kind == "any":
        try:
            return json.loads(text)  # a number, true, a list ... as typed; else the text itself
        except json.JSONDecodeError:
            return text
    return text  # a type this dashboard does not know: the API checks it


def _parse_json(name: str, text: str, expected: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise FormError(f"{name}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(value, expected):
        raise FormError(f"{name}: must be a JSON {'object' if expected is dict else 'array'}")
    return value


def _parse_context(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    return _parse_json("context", text, dict)
