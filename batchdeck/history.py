"""History commands: `batchdeck sql` (a table, JSON or CSV of a `history.sql` query) and
`batchdeck logs EXEC_ID [-f]` (an execution's log, then its live lines)."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from typing import Any

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import DeliverPolicy
from rich.table import Table
from rich.text import Text

from batchdeck import output
from broker import codec, subjects
from broker.client import ApiClient
from broker.errors import Unavailable
from broker.types import FINAL_STATUSES

LOG_PAGE = 2000
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


async def run_logs(nc: Client, api: ApiClient, args: argparse.Namespace) -> None:
    """Stored history first (the store), then the stream from its start, skipping lines
    already printed (by idx): no gap, no duplicate. With -f, until the run ends."""
    printer = _LinePrinter(args.json)
    try:
        offset = 0
        while True:
            page = await api.call("exec", "logs", {"id": args.execution_id, "offset": offset, "limit": LOG_PAGE})
            if not page["items"]:
                break
            printer.print_all(page["items"])
            offset = page["items"][-1]["idx"]  # a page may hold fewer than asked (reply size)
    except Unavailable:
        pass  # no store running: the stream alone has what it still holds (7 days)
    await _from_stream(nc, api.org, args.execution_id, printer, args.follow)


class _LinePrinter:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.last_idx = 0

    def print_all(self, lines: list[dict[str, Any]]) -> None:
        for line in lines:
            self.print(line)

    def print(self, line: dict[str, Any]) -> None:
        idx = line.get("idx") or 0
        if idx <= self.last_idx:
            return
        self.last_idx = idx
        if self.as_json:
            print(json.dumps(line, ensure_ascii=False), flush=True)
            return
        text = Text(f"{idx:>6} ", style="dim")
        text.append(f"{output.when_short(line.get('ts')):>8} ", style="dim")
        text.append(line.get("msg") or "", style=LEVEL_STYLES.get(line.get("level") or "", ""))
        output.console.print(text, highlight=False, soft_wrap=True)


async def _from_stream(nc: Client, org: str, execution_id: str, printer: _LinePrinter, follow: bool) -> None:
    js = nc.jetstream()
    ended = asyncio.Event()

    async def on_state(msg: Any) -> None:
        if codec.decode(msg.data, dict[str, Any]).get("status") in FINAL_STATUSES:
            ended.set()

    logs = await js.subscribe(subjects.exec_event(org, execution_id, "log"), ordered_consumer=True)
    states = await js.subscribe(subjects.exec_event(org, execution_id, "state"), cb=on_state,
                                ordered_consumer=True, deliver_policy=DeliverPolicy.LAST)
    try:
        while True:
            try:
                msg = await logs.next_msg(timeout=0.5)
            except (NatsTimeout, asyncio.TimeoutError):
                if not follow or ended.is_set():  # quiet for 0.5 s: what the stream had is printed
                    return
                continue
            printer.print(codec.decode(msg.data, dict[str, Any]))
    finally:
        await logs.unsubscribe()
        await states.unsubscribe()
