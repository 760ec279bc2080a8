"""`history.sql`: a read-only SQL query confined to the caller's org.

Layers, each enough on its own for what it guards:
1. DuckDB's own parser: exactly one statement, of type SELECT (a WITH query is one).
2. DuckDB's own syntax tree (`json_serialize_sql`): every table the query reads is a
   documented table or view, or a CTE *in scope where it is named* (a CTE is visible in
   the query after it and in later CTEs, in its own body only when it is recursive:
   `WITH duckdb_tables AS (SELECT * FROM duckdb_tables)` reads the catalog in its body);
   no schema or catalog prefix (`bd_history.logs`, `information_schema.tables`); no
   table function (`read_csv`, `duckdb_settings()`, ...); no function that describes the
   database rather than the rows (`current_setting`, `stats`, `pg_*`, `duckdb_*`, ...:
   `stats(col)` shows a column's minimum and maximum over every org).
3. What DuckDB binds (`EXPLAIN`): every table the plan scans is one of the history's,
   and no table function runs (a system macro can expand into one).
4. The query runs on a connection of its own whose plain table names are views that
   hold only the caller's org rows; the database was opened with external access off,
   so no file, network or extension can be reached whatever a function does.
5. A row limit and a time limit, each with a clear error.
"""

from __future__ import annotations

import json
import threading
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import duckdb
import msgspec

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


REFUSED_FUNCTIONS = frozenset({
    "stats", "current_setting", "getvariable", "current_database", "current_catalog", "current_schema",
    "current_schemas", "current_query", "current_query_id", "current_connection_id", "current_transaction_id",
    "txid_current", "in_search_path", "nextval", "currval", "version", "col_description", "obj_description",
    "shobj_description", "format_pg_type", "format_type", "which_secret", "current_user", "session_user", "user",
})
"""Functions that describe the database, its settings or its statistics rather than rows."""
REFUSED_FUNCTION_PREFIXES = ("duckdb_", "pg_", "pragma_", "has_", "sqlite_", "icu_")


def _walk(node: Any, ctes: frozenset[str]) -> None:
    """Check every table reference and function call, with the CTE names in scope where
    it stands."""
    if isinstance(node, list):
        for value in node:
            _walk(value, ctes)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "BASE_TABLE":
        _check_table(node, ctes)
    elif kind == "TABLE_FUNCTION":
        name = (node.get("function") or {}).get("function_name", "?")
        raise Refused(f"table functions such as {name}() are not allowed; query the tables of docs/sql.md")
    elif kind == "SHOW_REF":
        raise Refused("SHOW and DESCRIBE are not allowed; the tables and their columns are in docs/sql.md")
    elif node.get("class") == "FUNCTION" and not node.get("is_operator"):
        _check_function(node)
    cte_map = node.get("cte_map")
    if isinstance(cte_map, dict) and cte_map.get("map"):
        # Each CTE's body sees the CTEs before it (and itself only as a recursive CTE's
        # recursive term); the rest of the node sees them all.
        for entry in cte_map["map"]:
            name = entry["key"].lower()
            _walk_cte_body((entry.get("value") or {}).get("query_node"), name, ctes)
            ctes = ctes | {name}
    for key, value in node.items():
        if key != "cte_map":
            _walk(value, ctes)


def _walk_cte_body(body: Any, name: str, ctes: frozenset[str]) -> None:
    if isinstance(body, dict) and body.get("type") == "RECURSIVE_CTE_NODE" and body.get("cte_name", "").lower() == name:
        for key, value in body.items():  # the anchor (left) cannot name the CTE; the recursive term can
            _walk(value, ctes | {name} if key == "right" else ctes)
        return
    _walk(body, ctes)


def _check_function(call: dict[str, Any]) -> None:
    name = str(call.get("function_name", "")).lower()
    qualified = [p for p in (call.get("catalog"), call.get("schema")) if p]
    if qualified:
        raise Refused(f"write plain function names: {'.'.join([*qualified, name])}() is not allowed")
    if name in REFUSED_FUNCTIONS or name.startswith(REFUSED_FUNCTION_PREFIXES):
        raise Refused(f"{name}() describes the database, not its rows, and is not allowed")


def check_plan(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> None:
    """Refuse a statement whose bound plan scans anything but the history's tables, or
    runs a table function (what a system macro could expand into)."""
    try:
        rows = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchall()
    except duckdb.Error as err:
        raise Refused(_first_line(err)) from None
    for _, plan in rows:
        for operator in _operators(json.loads(plan)):
            info = operator.get("extra_info") or {}
            table = str(info.get("Table", "")) if isinstance(info, dict) else ""
            function = str(info.get("Function", "")) if isinstance(info, dict) else ""
            if table and table.split(".")[-2:-1] != ["bd_history"]:
                raise Refused(f"the query reads {table}, which is not a table of docs/sql.md")
            if function and function not in PLAN_FUNCTIONS:
                raise Refused(f"the query runs {function.lower()}(), which is not allowed; query the tables of "
                              "docs/sql.md")


PLAN_FUNCTIONS = frozenset({"SEQ_SCAN", "UNNEST", "UNNEST_FUNCTION"})
"""Plan operators that name a function and are allowed: a table's scan, and unnest in a select list."""


def _operators(nodes: Any) -> Any:
    for node in nodes if isinstance(nodes, list) else [nodes]:
        if isinstance(node, dict):
            yield node
            yield from _operators(node.get("children") or [])


def _check_table(table: dict[str, Any], ctes: frozenset[str]) -> None:
    qualified = [p for p in (table.get("catalog_name"), table.get("schema_name")) if p]
    name = table.get("table_name", "")
    if qualified:
        raise Refused(f"write plain table names: {'.'.join([*qualified, name])} is not allowed")
    if name.lower() not in ctes and name.lower() not in schema.QUERYABLE:
        known = ", ".join(sorted(schema.QUERYABLE))
        raise Refused(f"unknown table {name!r}; the tables and views are: {known}")


FETCH_ROWS = 500
"""Rows converted at a time: the reply's size is known as it grows, not at the end."""


def run(cursor: duckdb.DuckDBPyConnection, org: str, sql: str, params: list[Any] | None = None,
        max_rows: int = MAX_ROWS, timeout: float = TIMEOUT_SECONDS, max_bytes: int | None = None,
        query_memory: int | None = None, time_limit: float | None = None) -> dict[str, Any]:
    """Check and run `sql` for `org` on `cursor` (a connection of its own, closed by the
    caller), interrupted after `timeout` seconds (what is left of `time_limit`, the limit
    a refusal names), its sorts and hash tables bounded by `query_memory` bytes, its rows
    by `max_rows` and (JSON-encoded) `max_bytes`. Returns {columns, rows}; raises Refused."""
    too_long = f"the query ran longer than {time_limit or timeout:g} s; narrow it (WHERE, LIMIT) or aggregate"
    if timeout <= 0:
        raise Refused(too_long)
    check(sql, cursor)
    schema.open_session(cursor, org)
    if query_memory is not None:
        cursor.execute(f"SET operator_memory_limit = '{query_memory // (1024 * 1024)}MB'")
    check_plan(cursor, sql, params or [])
    timer = threading.Timer(timeout, cursor.interrupt)
    timer.start()
    rows: list[list[Any]] = []
    size = 0
    try:
        result = cursor.execute(sql, params or [])
        while len(rows) <= max_rows:
            chunk = [[plain(v) for v in row] for row in result.fetchmany(FETCH_ROWS)]
            if not chunk:
                break
            rows += chunk
            size += len(msgspec.json.encode(chunk))
            if max_bytes is not None and size > max_bytes:
                raise Refused(f"the result is over {max_bytes} bytes, more than one reply holds; select fewer "
                              "columns or rows, or aggregate")
    except duckdb.InterruptException:
        raise Refused(too_long) from None
    except duckdb.OutOfMemoryException:
        raise Refused("the query needs more memory than the store lets a query have; narrow it (WHERE, LIMIT), "
                      "aggregate less at once, or select fewer columns") from None
    except duckdb.Error as err:
        if not timer.is_alive():
            raise Refused(too_long) from None
        raise Refused(_first_line(err)) from None
    finally:
        timer.cancel()
    if len(rows) > max_rows:
        raise Refused(f"the query returns more than {max_rows} rows; add a LIMIT or aggregate")
    columns = [d[0] for d in result.description or []]
    return {"columns": columns, "rows": rows}


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
