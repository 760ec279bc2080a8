"""How values look in the dashboard: statuses, times, durations, progress, schedules.

Pure functions of their inputs (`now` is passed in), so tables render the same in
tests and snapshots.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from cron_descriptor import Options, get_description
from rich.text import Text

from broker import schedule
from broker.timestamps import parse_iso
from broker.types import RUNNER_ALIVE_SECONDS

STATUS_STYLES = {
    "queued": "cyan",
    "running": "bold blue",
    "succeeded": "green",
    "failed": "bold red",
    "timed_out": "red",
    "lost": "magenta",
    "canceled": "yellow",
    "skipped": "dim",
}
STATUS_GLYPHS = {
    "queued": "◷", "running": "▶", "succeeded": "✔", "failed": "✘", "timed_out": "⧗",
    "lost": "?", "canceled": "■", "skipped": "·",
}
BAR_WIDTH = 12


def status(value: str | None) -> Text:
    if not value:
        return Text("—", style="dim")
    return Text(f"{STATUS_GLYPHS.get(value, ' ')} {value}", style=STATUS_STYLES.get(value, ""))


def outcome_strip(statuses: list[str], width: int = 12) -> Text:
    """One coloured block per recent run, oldest left; dots pad a short history."""
    strip = Text("·" * (width - len(statuses[-width:])), style="dim")
    for value in statuses[-width:]:
        strip.append("█" if value != "skipped" else "▁", style=STATUS_STYLES.get(value, "").replace("bold ", ""))
    return strip


def duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    seconds = ms / 1000
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def elapsed_ms(start: str | None, end: str | None, now: datetime) -> float | None:
    """Milliseconds from start to end (or to now while it runs)."""
    if start is None:
        return None
    finish = parse_iso(end) if end else now
    return max(0.0, (finish - parse_iso(start)).total_seconds() * 1000)


def relative(moment: datetime | None, now: datetime) -> str:
    """'in 4m', '12s ago', or '—'."""
    if moment is None:
        return "—"
    delta = (moment - now).total_seconds()
    text = _span(abs(delta))
    return f"in {text}" if delta >= 0 else f"{text} ago"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def clock_time(text: str | None, now: datetime) -> str:
    """An RFC 3339 time as local HH:MM:SS (month-day and HH:MM when it is not today)."""
    if not text:
        return "—"
    moment = parse_iso(text).astimezone()
    today = now.astimezone().date()
    return moment.strftime("%H:%M:%S" if moment.date() == today else "%m-%d %H:%M")


def progress(percent: float | None, text: str | None, state: str) -> Text:
    """A bar with its percentage and text, for a running execution."""
    if percent is None:
        if state == "running":
            return Text(text or "running…", style="blue")
        return Text(text or "", style="dim")
    filled = max(0.0, min(1.0, percent / 100)) * BAR_WIDTH
    whole = int(filled)
    bar = Text("█" * whole, style="blue")
    if whole < BAR_WIDTH:
        bar.append("▌" if filled - whole >= 0.5 else " ", style="blue")
        bar.append("·" * (BAR_WIDTH - whole - 1), style="dim")
    bar.append(f" {percent:3.0f}%")
    if text:
        bar.append(f" {text}", style="dim")
    return bar


@lru_cache(maxsize=512)
def cron_words(expression: str) -> str:
    """'At 02:30, Monday through Friday' — or the expression itself if it has no words."""
    try:
        options = Options()
        options.use_24hour_time_format = True
        return get_description(expression, options)
    except Exception:  # cron-descriptor raises its own types for forms it does not know
        return expression


def next_run(cron: str | None, tz_name: str, enabled: bool, now: datetime) -> datetime | None:
    if not enabled or not cron:
        return None
    try:
        return schedule.next_times(cron, tz_name, after=now, count=1)[0]
    except (schedule.ScheduleError, ValueError, IndexError):
        return None


def runner_alive(heartbeat_at: str | None, now: datetime) -> bool:
    """As `runner.list` computes `alive`: a heartbeat within RUNNER_ALIVE_SECONDS."""
    return heartbeat_at is not None and (now - parse_iso(heartbeat_at)).total_seconds() <= RUNNER_ALIVE_SECONDS


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip(" ,") + "…"
