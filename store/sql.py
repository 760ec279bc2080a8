"""`history.sql`: a read-only SQL query confined to the caller's org.

Layers, each enough on its own for what it guards:
1. DuckDB's own parser: exactly one statement, of type SELECT (a WITH query is one).
2. DuckDB's own syntax tree (`json_serialize_sql`): every table the query reads is a
   documented table or view, or one of its own CTEs; no schema or catalog prefix
   (`bd_history.logs`, `information_schema.tables`); no table function (`read_csv`,
   `read_parquet`, `duckdb_settings()`, ...).
3. The query runs on a connection of its own whose plain table names are views that
   hold only the caller's org rows; the database was opened with external access off,
   so no file, network or extension can be reached whatever a function does.
4. A row limit and a time limit, each with a clear error.
"""

from __future__ import annotations

import json
import threading
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import duckdb

from broker.timestamps import to_iso
from store import schema

MAX_ROWS = 10_000
TIMEOUT_SECONDS = 10.0
MAX_SQL_LENGTH = 20_000


class Refused(ValueError):
    """The statement is not allowed (400), or it hit a limit."""


def check(sql: str, conn: duckdb.DuckDBPyConnection) -> None:
    """Raise Refused unless `sql` is one SELECT over the documented tables and views."""
    if len(sql) > MAX_SQL_LENGTH:
        raise Refused(f"the statement is {len(sql)} characters; at most {MAX_SQL_LENGTH}")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise Refused(f"not valid SQL: {_first_line(err)}") from None
    if len(statements) != 1:
        raise Refused(f"send exactly one statement, not {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise Refused(f"only SELECT (or WITH ... SELECT) is allowed, not {kind.name}")
    tree = json.loads(conn.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    if tree.get("error"):
        raise Refused(f"not a plain SELECT: {tree.get('error_message')}")
    _walk(tree, frozenset())


def _walk(node: Any, ctes: frozenset[str]) -> None:
    """Check every table reference, with the CTE names visible where it stands (a CTE
    name counts only inside the query that defines it)."""
    if isinstance(node, list):
        for value in node:
            _walk(value, ctes)
        return
    if not isinstance(node, dict):
        return
    cte_map = node.get("cte_map")
    if isinstance(cte_map, dict) and cte_map.get("map"):
        ctes = ctes | {entry["key"].lower() for entry in cte_map["map"]}
    kind = node.get("type")
    if kind == "BASE_TABLE":
        _check_table(node, ctes)
    elif kind == "TABLE_FUNCTION":
        name = (node.get("function") or {}).get("function_name", "?")
        raise Refused(f"table functions such as {name}() are not allowed; query the tables of docs/sql.md")
    elif kind == "SHOW_REF":
        raise Refused("SHOW and DESCRIBE are not allowed; the tables and their columns are in docs/sql.md")
    for value in node.values():
        _walk(value, ctes)


def _check_table(table: dict[str, Any], ctes: frozenset[str]) -> None:
    qualified = [p for p in (table.get("catalog_name"), table.get("schema_name")) if p]
    name = table.get("table_name", "")
    if qualified:
        raise Refused(f"write plain table names: {'.'.join([*qualified, name])} is not allowed")
    if name.lower() not in ctes and name.lower() not in schema.QUERYABLE:
        known = ", ".join(sorted(schema.QUERYABLE))
        raise Refused(f"unknown table {name!r}; the tables and views are: {known}")


def run(cursor: duckdb.DuckDBPyConnection, org: str, sql: str, params: list[Any] | None = None,
        max_rows: int = MAX_ROWS, timeout: float = TIMEOUT_SECONDS) -> dict[str, Any]:
    """Check and run `sql` for `org` on `cursor` (a connection of its own, closed by the
    caller). Returns {columns, rows}; raises Refused."""
    check(sql, cursor)
    schema.open_session(cursor, org)
    timer = threading.Timer(timeout, cursor.interrupt)
    timer.start()
    try:
        result = cursor.execute(sql, params or [])
        rows = result.fetchmany(max_rows + 1)
    except duckdb.InterruptException:
        raise Refused(f"the query ran longer than {timeout:g} s; narrow it (WHERE, LIMIT) or aggregate") from None
    except duckdb.Error as err:
        if not timer.is_alive():
            raise Refused(f"the query ran longer than {timeout:g} s; narrow it (WHERE, LIMIT) or aggregate") from None
        raise Refused(_first_line(err)) from None
    finally:
        timer.cancel()
    if len(rows) > max_rows:
        raise Refused(f"the query returns more than {max_rows} rows; add a LIMIT or aggregate")
    columns = [d[0] for d in result.description or []]
    return {"columns": columns, "rows": [[plain(v) for v in row] for row in rows]}


def plain(value: Any) -> Any:
    """A value as JSON can carry it (times as RFC 3339 text, decimals as numbers)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        # As everywhere on the wire: RFC 3339 UTC with milliseconds (fixed width, so
        # times also sort right as text).
        return to_iso(value) if value.tzinfo is not None else value.isoformat(timespec="milliseconds")
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
