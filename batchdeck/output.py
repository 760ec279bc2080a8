"""How the CLI prints API replies: rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table
from rich.text import Text

from broker.timestamps import parse_iso

# Piped output is read by scripts and `less`, not cut to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True)

STATUS_STYLES = {
    "queued": "cyan",
    "running": "bold blue",
    "succeeded": "green",
    "failed": "bold red",
    "canceled": "yellow",
    "timed_out": "red",
    "lost": "magenta",
    "skipped": "dim",
}


def print_json(data: Any) -> None:
    # Plain print, not rich: scripts pipe this into jq.
    print(json.dumps(data, indent=2, ensure_ascii=False))


def when(value: str | None) -> str:
    """A time for people: local-free, second precision, 'in 5m' / '3m ago' appended."""
    if not value:
        return ""
    try:
        moment = parse_iso(value)
    except ValueError:
        return value
    delta = (moment - datetime.now(timezone.utc)).total_seconds()
    relative = _span(abs(delta))
    stamp = moment.strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} ({'in ' + relative if delta > 0 else relative + ' ago'})"


def when_short(value: str | None) -> str:
    """A time for a table cell: 'in 11h' or '3m ago' (UTC date and time with --json)."""
    if not value:
        return ""
    try:
        delta = (parse_iso(value) - datetime.now(timezone.utc)).total_seconds()
    except ValueError:
        return value
    return f"in {_span(delta)}" if delta > 0 else f"{_span(-delta)} ago"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _utc(value: Any) -> str:
    if not value:
        return ""
    try:
        return parse_iso(value).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (ValueError, AttributeError, TypeError):  # a refused trigger echoes whatever was sent
        return str(value)


def lag(trigger: dict[str, Any]) -> str:
    """fired_at - scheduled_at of a trigger, in milliseconds."""
    try:
        delta = parse_iso(trigger["fired_at"]) - parse_iso(trigger["scheduled_at"])
    except (KeyError, TypeError, ValueError, AttributeError):  # a manual start has no scheduled_at
        return ""
    return f"{delta.total_seconds() * 1000:.0f} ms"


def print_next(reply: dict[str, Any]) -> None:
    """`batch next`: fire times in UTC and in the batch's timezone."""
    zone = ZoneInfo(reply["timezone"])
    state = "" if reply.get("is_enabled") else "  [yellow](disabled: it will not fire until enabled)[/yellow]"
    console.print(f"cron {reply['cron']}  timezone {reply['timezone']}{state}", highlight=False)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for title in ("#", "UTC", f"LOCAL ({reply['timezone']})", "WHEN"):
        table.add_column(title)
    for number, value in enumerate(reply["items"], 1):
        moment = parse_iso(value)
        table.add_row(str(number), moment.strftime("%Y-%m-%d %H:%M:%S"),
                      moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z"), when_short(value))
    console.print(table)


def duration(ms: int | None) -> str:
    if ms is None:
        return ""
    return f"{ms / 1000:.1f}s" if ms < 60_000 else _span(ms / 1000)


def status(value: Any) -> Text:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    return Text(text, style=STATUS_STYLES.get(text, ""))


def yes_no(value: bool | None) -> Text:
    return Text("yes", style="green") if value else Text("no", style="dim")


def _task_what(task: dict[str, Any]) -> str:
    if task.get("kind") == "module":
        return f"module {task.get('module')}"
    return " ".join(task.get("command") or [])


def _schedule(batch: dict[str, Any]) -> str:
    if batch.get("cron_expression"):
        return batch["cron_expression"]
    schedule = batch.get("schedule") or {}
    return "schedule " + json.dumps({k: v for k, v in schedule.items() if v}, separators=(",", ":"))


Column = tuple[str, Callable[[dict[str, Any]], Any]]

COLUMNS: dict[str, list[Column]] = {
    "task": [
        ("ID", lambda t: t["id"]),
        ("NAME", lambda t: t["name"]),
        ("RUNS", lambda t: _task_what(t)),
        ("POOL", lambda t: t.get("pool")),
        ("STARTS", lambda t: str(t.get("start_count", 0))),
        ("VERSION", lambda t: str(t.get("version"))),
        ("DELETED", lambda t: when_short(t.get("deleted_at"))),
    ],
    "batch": [
        ("ID", lambda b: b["id"]),
        ("NAME", lambda b: b["name"]),
        ("SCHEDULE", _schedule),
        ("TZ", lambda b: b.get("timezone")),
        ("ENABLED", lambda b: yes_no(b.get("is_enabled"))),
        ("NEXT RUN", lambda b: when_short(b.get("next_run_at"))),
        ("ACTIONS", lambda b: str(len(b.get("actions") or []))),
        ("VERSION", lambda b: str(b.get("version"))),
    ],
    "trigger": [
        ("SCHEDULED", lambda t: _utc(t.get("scheduled_at")) or "-"),
        ("FIRED", lambda t: _utc(t.get("fired_at"))),
        ("LAG", lambda t: lag(t)),
        ("SOURCE", lambda t: t.get("source")),
        ("STATUS", lambda t: status(t.get("status"))),
        ("EXECUTION", lambda t: t.get("execution_id") or ""),
        ("ERROR", lambda t: t.get("error") or ""),
    ],
    "exec": [
        ("ID", lambda e: e["id"]),
        ("NAME", lambda e: e.get("name")),
        ("STATUS", lambda e: status(e.get("status"))),
        ("SOURCE", lambda e: e.get("source")),
        ("PROGRESS", lambda e: "" if e.get("progress_percent") is None else f"{e['progress_percent']:.0f}%"),
        ("QUEUED", lambda e: when_short(e.get("queued_at"))),
        ("DURATION", lambda e: duration(e.get("duration_ms"))),
        ("RUNNER", lambda e: e.get("runner_id") or ""),
    ],
}


def print_page(kind: str, page: dict[str, Any]) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = COLUMNS[kind]
    for title, _ in columns:
        # Ids are never cut (people copy them); long text is, with an ellipsis.
        if title == "ID":
            table.add_column(title, no_wrap=True)
        else:
            table.add_column(title, no_wrap=True, overflow="ellipsis", max_width=40)
    for item in page["items"]:
        table.add_row(*(_cell(get(item)) for _, get in columns))
    console.print(table)
    shown = len(page["items"])
    console.print(
        f"[dim]{shown} of {page['total']} · page {page['page']} of {max(page['pages'], 1)}[/dim]", highlight=False
    )


def print_object(obj: dict[str, Any]) -> None:
    """Every non-empty field of one object, one per line."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in obj.items():
        if value in (None, "", [], {}):
            continue
        if name == "status":
            cell: Any = status(value)
        elif name.endswith("_at") and isinstance(value, str):
            cell = when(value)
        elif isinstance(value, (dict, list)):
            cell = json.dumps(value, ensure_ascii=False)
        else:
            cell = str(value)
        table.add_row(name, cell)
    console.print(table)


def _cell(value: Any) -> Any:
    return value if isinstance(value, Text) else Text(str(value if value is not None else ""))
