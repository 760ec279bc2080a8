"""List requests over the history's executions, done in SQL.

The live lists (`broker/query.py`) filter and sort records in memory; the history can
hold millions of executions, so here the same request becomes one WHERE / ORDER BY /
LIMIT over `bd_history.executions`, with the same meaning: a filter value matches by
JSON equality (a list means any of; booleans never equal numbers; `null` matches a null
field; JSON columns only ever match null), nulls sort last both ways, ties in id order.
Times match the instant they name, whatever offset the text carries.
"""

from __future__ import annotations

import math
from typing import Any

from broker.errors import BadRequest
from broker.timestamps import parse_iso, request_time
from broker.types import ListRequest, Page
from store.history import EXECUTION_COLUMNS, JSON_COLUMNS, TIME_COLUMNS

FIELDS = EXECUTION_COLUMNS
_NUMBERS = frozenset({"attempt", "duration_ms", "progress_percent", "version"})
_SCALARS = (str, int, float, bool, type(None))
_NOTHING = "FALSE"


class Query:
    """A WHERE clause and its parameters, built up one condition at a time."""

    def __init__(self, org: str) -> None:
        self.conditions = ["org = ?"]
        self.params: list[Any] = [org]

    def add(self, condition: str, *params: Any) -> None:
        self.conditions.append(condition)
        self.params.extend(params)

    @property
    def where(self) -> str:
        return " AND ".join(self.conditions)


def _condition(name: str, value: Any) -> tuple[str, list[Any]]:
    """SQL that is true where column `name` equals the JSON value `value`."""
    if value is None:
        return f"{name} IS NULL", []
    if isinstance(value, bool) or name in JSON_COLUMNS:
        return _NOTHING, []  # no boolean columns; objects only ever match null
    if name in _NUMBERS:
        return (f"{name} = ?", [value]) if isinstance(value, (int, float)) else (_NOTHING, [])
    if not isinstance(value, str):
        return _NOTHING, []
    if name in TIME_COLUMNS:
        try:
            return f"{name} = ?", [parse_iso(value)]
        except ValueError:
            return _NOTHING, []
    return f"{name} = ?", [value]


def add_filters(query: Query, request: ListRequest) -> None:
    for name, wanted in request.filter.items():
        if name not in FIELDS:
            raise BadRequest(f"cannot filter on unknown field {name!r}", {"fields": sorted(FIELDS)})
        values = wanted if isinstance(wanted, list) else [wanted]
        if not all(isinstance(v, _SCALARS) for v in values):
            raise BadRequest(f"filter on {name!r} takes a value or a list of values (strings, numbers, booleans, null)")
        parts = [_condition(name, v) for v in values]
        query.add("(" + (" OR ".join(sql for sql, _ in parts) or _NOTHING) + ")",
                  *[p for _, params in parts for p in params])


def add_window(query: Query, since: str | None, until: str | None) -> None:
    """Executions queued at or after `since` and before `until` (RFC 3339)."""
    for name, text, condition in (("since", since, "queued_at >= ?"), ("until", until, "queued_at < ?")):
        if text is not None:
            query.add(condition, request_time(text, name))


def order_by(request: ListRequest, default: str) -> str:
    sort = request.sort or default
    name = sort.lstrip("-")
    if name not in FIELDS:
        raise BadRequest(f"cannot sort on unknown field {name!r}", {"fields": sorted(FIELDS)})
    direction = "DESC" if sort.startswith("-") else "ASC"
    return f"{name} {direction} NULLS LAST, id ASC"


def page(total: int, request: ListRequest, items: list[dict[str, Any]]) -> Page:
    return Page(items=items, page=request.page, per_page=request.per_page, total=total,
                pages=math.ceil(total / request.per_page) if total else 0)
