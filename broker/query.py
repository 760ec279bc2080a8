"""Filter, sort and page a list of records, as every `*.list` endpoint does.

`filter` maps a field to a value (equality) or a list of values (any of); `sort` is a
field name with `-` for descending; records without the sort field's value come last
either way.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from broker import codec
from broker.errors import BadRequest
from broker.types import ListRequest, Page

# Values compared by equality only: filtering on objects would be ambiguous.
_SCALARS = (str, int, float, bool, type(None))


def _check_fields(request: ListRequest, fields: frozenset[str]) -> None:
    for name in request.filter:
        if name not in fields:
            raise BadRequest(f"cannot filter on unknown field {name!r}", {"fields": sorted(fields)})
        wanted = request.filter[name]
        values = wanted if isinstance(wanted, list) else [wanted]
        if not all(isinstance(v, _SCALARS) for v in values):
            raise BadRequest(f"filter on {name!r} takes a value or a list of values (strings, numbers, booleans, null)")
    if request.sort is not None and request.sort.lstrip("-") not in fields:
        raise BadRequest(f"cannot sort on unknown field {request.sort.lstrip('-')!r}", {"fields": sorted(fields)})


def _matches(record: msgspec.Struct, filters: dict[str, Any]) -> bool:
    for name, wanted in filters.items():
        value = _plain(getattr(record, name))
        if isinstance(wanted, list):
            if not any(_equal(value, w) for w in wanted):
                return False
        elif not _equal(value, wanted):
            return False
    return True


def _equal(value: Any, wanted: Any) -> bool:
    # bool is an int in Python: keep true != 1 as JSON has it.
    if isinstance(value, bool) != isinstance(wanted, bool):
        return False
    return value == wanted


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (1, 0)
    if isinstance(value, (dict, list)):
        return (0, codec.encode(value))
    if isinstance(value, bool):
        return (0, int(value))
    return (0, value)


def page_of(records: list[msgspec.Struct], request: ListRequest, fields: frozenset[str], default_sort: str) -> Page:
    """Apply `request` (filter, sort, page, per_page) to records of one type. Only the
    page's records are turned into plain objects (a list over 100 000 executions)."""
    _check_fields(request, fields)
    if request.filter:
        records = [r for r in records if _matches(r, request.filter)]
    sort = request.sort or default_sort
    name, descending = sort.lstrip("-"), sort.startswith("-")
    rows = sorted(records, key=lambda r: str(getattr(r, "id", "")))  # ties keep a stable, id order
    present = [r for r in rows if getattr(r, name) is not None]
    missing = [r for r in rows if getattr(r, name) is None]
    try:
        present.sort(key=lambda r: _sort_key(_plain(getattr(r, name))), reverse=descending)
    except TypeError:
        raise BadRequest(f"cannot sort on {name!r}: its values are of mixed types") from None
    rows = present + missing
    total = len(rows)
    start = (request.page - 1) * request.per_page
    return Page(
        items=[codec.to_builtins(r) for r in rows[start : start + request.per_page]],
        page=request.page,
        per_page=request.per_page,
        total=total,
        pages=math.ceil(total / request.per_page) if total else 0,
    )


def _plain(value: Any) -> Any:
    """A field's value as it is on the wire (a nested record as a dict)."""
    return codec.to_builtins(value) if isinstance(value, (msgspec.Struct, list, dict)) else value


def field_names(type_: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(type_.__struct_fields__)
