"""History commands: `batchdeck sql` (a table, JSON or CSV of a `history.sql` query) and
`batchdeck logs EXEC_ID [-f]` (an execution's log, then its live lines)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
from typing import Any

from rich.table import Table
from rich.text import Text

from batchdeck import output
from broker.client import ApiClient
from broker.errors import NotFound, Unavailable
from broker.log_feed import log_batches

LEVEL_STYLES = {"error": "red", "warning": "yellow", "debug": "dim"}


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    query = sub.add_parser("sql", parents=[common], help="run a read-only SQL query over the history (docs/sql.md)")
    query.add_argument("query", metavar="SQL", help='e.g. "SELECT * FROM task_stats ORDER BY failed DESC"')
    query.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    logs = sub.add_parser("logs", parents=[common], help="print an execution's log (-f: then follow it live)")
    logs.add_argument("execution_id", metavar="EXEC_ID")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the run ends")


async def run_sql(api: ApiClient, args: argparse.Namespace) -> None:
    reply = await api.call("history", "sql", {"sql": args.query}, timeout=30)
    if args.json:
        output.print_json(reply)
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(reply["columns"])
        writer.writerows(reply["rows"])
    else:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in reply["columns"]:
            table.add_column(column)
        for row in reply["rows"]:
            table.add_row(*("" if v is None else v if isinstance(v, str) else json.dumps(v) for v in row))
        output.console.print(table)
        output.console.print(f"[dim]{len(reply['rows'])} rows[/dim]", highlight=False)


async def run_logs(api: ApiClient, args: argparse.Namespace) -> None:
    """Print the stored history, then the stream's newer lines (broker.log_feed: no gap,
    no duplicate); with -f, until the run ends. `nc` is the connection `api` uses."""
    await _check_known(api, args.execution_id)
    printer = _LinePrinter(args.json)
    async with contextlib.aclosing(log_batches(api, args.execution_id, args.follow)) as batches:
        async for batch in batches:
            printer.print_all(batch)


async def _check_known(api: ApiClient, execution_id: str) -> None:
    """Raise NotFound for an id neither the live state (7 days) nor the history knows:
    an empty log would look like a run that printed nothing, and `-f` would wait forever."""
    try:
        await api.call("exec", "get", {"id": execution_id})
        return
    except NotFound:
        pass
    try:
        await api.call("exec", "logs", {"id": execution_id, "limit": 1})  # 404 when the history has no such run
    except NotFound:
        raise NotFound(f"execution {execution_id!r} not found: not in the live state (the last 7 days) "
                       "nor in the history", {"kind": "execution", "id": execution_id}) from None
    except Unavailable:
        raise NotFound(f"execution {execution_id!r} not found in the live state (the last 7 days), "
                       "and no store runs to ask the history", {"kind": "execution", "id": execution_id}) from None


class _LinePrinter:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def print_all(self, lines: list[dict[str, Any]]) -> None:
        for line in lines:
            self.print(line)

    def print(self, line: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(line, ensure_ascii=False), flush=True)
            return
        text = Text(f"{line.get('idx') or 0:>6} ", style="dim")
        text.append(f"{output.when_short(line.get('ts')):>8} ", style="dim")
        text.append(line.get("msg") or "", style=LEVEL_STYLES.get(line.get("level") or "", ""))
        output.console.print(text, highlight=False, soft_wrap=True)
