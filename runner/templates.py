"""`{{ name }}` templates in command arguments.

Each argument is rendered on its own and stays one argument: a value is never split
into several, so `; rm -rf /` in a value reaches the program as that literal text.
With `shell: true` every substituted value is shell-quoted instead. The program (the
first argument) takes its values from the task's params only: a start's context may
fill arguments, never choose what runs (broker.overrides).
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from broker.types import TEMPLATE_PLACEHOLDER as PLACEHOLDER


class TemplateError(ValueError):
    """A template names a value that the run does not have."""


def as_text(value: Any) -> str:
    """How a value reads inside an argument: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def render(argument: str, values: dict[str, Any], quote: bool = False) -> str:
    """Fill the placeholders of one argument; raise TemplateError naming unknown ones."""
    missing = [name for name in PLACEHOLDER.findall(argument) if name not in values]
    if missing:
        known = ", ".join(sorted(values)) or "none"
        raise TemplateError(f"unknown template value(s) {', '.join(sorted(set(missing)))} in {argument!r}; known: {known}")

    def substitute(match: re.Match[str]) -> str:
        text = as_text(values[match.group(1)])
        return shlex.quote(text) if quote else text

    return PLACEHOLDER.sub(substitute, argument)


def command_argv(command: list[str], values: dict[str, Any], shell: bool, params: dict[str, Any]) -> list[str]:
    """The argv to execute: each argument rendered alone, the program from `params` only
    and the rest from `values` (context and params); with `shell`, one `sh -c` script
    whose substituted values are quoted."""
    if not command:
        return []
    program_needs = [name for name in PLACEHOLDER.findall(command[0]) if name not in params]
    if program_needs:
        raise TemplateError(f"the program {command[0]!r} takes {', '.join(program_needs)} from the task's params, "
                            "which do not hold it (a start's context never names the program)")
    rendered = [render(command[0], params, quote=shell)] + [render(arg, values, quote=shell) for arg in command[1:]]
    for position, argument in enumerate(rendered):
        if "\x00" in argument:
            raise TemplateError(f"argument {position} ({command[position]!r}) renders with a NUL byte (\\u0000), "
                                "which no process argument can carry")
    if shell:
        return ["/bin/sh", "-c", " ".join(rendered)]
    return rendered
