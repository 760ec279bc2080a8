"""`{{ name }}` templates in command arguments.

Each argument is rendered on its own and stays one argument: a value is never split
into several, so `; rm -rf /` in a value reaches the program as that literal text.
With `shell: true` every substituted value is shell-quoted instead.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


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


def command_argv(command: list[str], values: dict[str, Any], shell: bool) -> list[str]:
    """The argv to execute: each argument rendered alone; with `shell`, one `sh -c` script
    whose substituted values are quoted."""
    rendered = [render(arg, values, quote=shell) for arg in command]
    for position, argument in enumerate(rendered):
        if "\x00" in argument:
            raise TemplateError(f"argument {position} ({command[position]!r}) renders with a NUL byte (\\u0000), "
                                "which no process argument can carry")
    if shell:
        return ["/bin/sh", "-c", " ".join(rendered)]
    return rendered
