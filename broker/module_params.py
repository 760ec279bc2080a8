"""Checking a module task's params against the module's parameter schema; the broker
checks on create/update (with the schemas live runners advertise), the runner again
before it runs the handler."""

from __future__ import annotations

from typing import Any

from broker.types import ModuleParam, VALUE_TYPES as _TYPES


def validate_params(schema: list[ModuleParam], params: dict[str, Any]) -> dict[str, Any]:
    """Params with defaults filled in; raise ValueError naming every problem."""
    problems = []
    known = {p.name: p for p in schema}
    for name in params:
        if name not in known:
            problems.append(f"unknown parameter {name!r} (known: {', '.join(sorted(known)) or 'none'})")
    result = dict(params)
    for spec in schema:
        if spec.name not in params:
            if spec.required and spec.default is None:
                problems.append(f"parameter {spec.name!r} is required")
            elif spec.default is not None:
                result[spec.name] = spec.default
            continue
        expected = _TYPES.get(spec.type)
        value = params[spec.name]
        if expected and (not isinstance(value, expected) or (spec.type != "boolean" and isinstance(value, bool))):
            problems.append(f"parameter {spec.name!r} must be {spec.type}, got {type(value).__name__}")
    if problems:
        raise ValueError("; ".join(problems))
    return result
