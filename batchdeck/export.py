"""`batchdeck export --parquet DIR [--since DATE]`: the history as Parquet files, one
directory per table, partitioned by day (`DIR/logs/day=2026-11-23/*.parquet`), for tools
that want files.

The store's database never touches files other than its own, so the export is made
here, on the client's side: each table is read through `history.sql` (the caller's org,
in pages ordered by the table's key), gathered in an in-memory DuckDB with the store's
schema, and written with DuckDB's `COPY ... (FORMAT parquet, PARTITION_BY (day))`.
"""

from __future__ import annotations

import argparse
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from batchdeck import output
from broker.client import ApiClient
from broker.errors import BadRequest
from store import schema
from store.history import insert_columns

PAGE = 2000
"""Rows asked per history.sql page (halved while a reply would be too large)."""

# table -> (the time that picks its day, the key it is paged by)
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "executions": ("queued_at", ("id",)),
    "execution_actions": ("coalesce(started_at, finished_at)", ("execution_id", "action_index")),
    "logs": ("ts", ("execution_id", "idx")),
    "triggers": ("coalesce(fired_at, scheduled_at)", ()),
    "tasks": ("valid_from", ()),
    "batches": ("valid_from", ()),
    "runners": ("last_seen", ("id",)),
    "notifications": ("created_at", ("execution_id", "target")),
}


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("export", parents=[common], help="write the history as Parquet files, by table and day")
    parser.add_argument("--parquet", type=Path, required=True, metavar="DIR", help="where to write (created)")
    parser.add_argument("--since", type=_day, metavar="DATE", help="only rows from this day on (YYYY-MM-DD, UTC)")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


async def run(api: ApiClient, args: argparse.Namespace) -> None:
    since = datetime.combine(args.since, datetime.min.time(), timezone.utc).isoformat() if args.since else None
    local = duckdb.connect()
    schema.create(local)
    counts = {}
    for table, (when, key) in TABLES.items():
        counts[table] = await _copy_table(api, local, table, when, key, since)
    target = args.parquet
    target.mkdir(parents=True, exist_ok=True)
    for table, (when, _) in TABLES.items():
        if counts[table]:
            path = str(target / table).replace("'", "''")
            local.execute(
                f"COPY (SELECT *, CAST({when} AS DATE) AS day FROM bd_history.{table}) TO '{path}' "
                "(FORMAT parquet, PARTITION_BY (day), OVERWRITE_OR_IGNORE)")
    local.close()
    if args.json:
        output.print_json({"directory": str(target), "rows": counts})
    else:
        for table, count in counts.items():
            output.console.print(f"{table:<18} {count:>10} rows", highlight=False)
        output.console.print(f"written to {target}/<table>/day=YYYY-MM-DD/", highlight=False)


async def _copy_table(api: ApiClient, local: duckdb.DuckDBPyConnection, table: str, when: str,
                      key: tuple[str, ...], since: str | None) -> int:
    """Page the table from the store into `local`; returns the rows copied."""
    copied, after, page = 0, None, PAGE
    while True:
        query, params = _page_query(table, when, key, since, after, copied, page)
        try:
            reply = await api.call("history", "sql", {"sql": query, "params": params}, timeout=60)
        except BadRequest as err:
            if "reply is" in err.message and page > 1:  # the page did not fit one message
                page //= 2
                continue
            raise
        rows = reply["rows"]
        if not rows:
            return copied
        columns = reply["columns"]
        insert_columns(local, table, tuple(columns), {c: [row[i] for row in rows] for i, c in enumerate(columns)})
        copied += len(rows)
        if key:
            last = rows[-1]
            after = [last[columns.index(k)] for k in key]
        if len(rows) < page:
            return copied


def _page_query(table: str, when: str, key: tuple[str, ...], since: str | None, after: list[Any] | None,
                offset: int, page: int) -> tuple[str, list[Any]]:
    conditions, params = [], []
    if since is not None:
        conditions.append(f"{when} >= CAST(? AS TIMESTAMPTZ)")
        params.append(since)
    if key and after is not None:
        conditions.append(f"({', '.join(key)}) > ({', '.join('?' for _ in key)})")
        params += after
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    order = ", ".join(key) if key else "ALL"
    paging = f" LIMIT {page}" if key else f" LIMIT {page} OFFSET {offset}"
    return f"SELECT * FROM {table}{where} ORDER BY {order}{paging}", params
