"""The runners screen: the org's runners from their heartbeats in KV `bd_runners`, with
whether each is alive, its pools, what it runs now and the modules it offers."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer

from broker.timestamps import parse_iso
from broker.types import Runner
from tui import formatting
from tui.screens.base import BatchdeckScreen
from tui.live import LiveState
from tui.messages import LiveChanged
from tui.widgets.connection_bar import ConnectionBar
from tui.widgets.filter_box import FilterBox
from tui.widgets.live_table import LiveTable, Row

RUNNER_COLUMNS = [("id", "Runner"), ("alive", "State"), ("host", "Host · pid"), ("pools", "Pools"),
                  ("load", "Running"), ("modules", "Modules"), ("beat", "Heartbeat"), ("up", "Up since"),
                  ("version", "Version")]


def runner_row(runner: Runner, now: datetime) -> Row:
    alive = formatting.runner_alive(runner.heartbeat_at, now)
    beat = parse_iso(runner.heartbeat_at) if runner.heartbeat_at else None
    return (runner.id, [
        runner.id,
        Text("● alive", style="green") if alive else Text("○ gone", style="dim red"),
        f"{runner.host} · {runner.pid}" if runner.pid else runner.host,
        ", ".join(runner.pools),
        f"{len(runner.running)}/{runner.concurrency}",
        ", ".join(m.name for m in runner.modules) or "—",
        formatting.relative(beat, now),
        formatting.clock_time(runner.started_at, now),
        runner.version or "—",
    ])


class RunnersScreen(BatchdeckScreen):
    BINDINGS = [
        Binding("escape", "app.show_main", "Back", id="back"),
        Binding("slash", "filter", "Filter", id="runner-filter"),
    ]

    def compose(self) -> ComposeResult:
        yield ConnectionBar("runners")
        yield FilterBox()
        yield LiveTable(RUNNER_COLUMNS, id="runners")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(LiveTable).focus()
        self.repaint()
        self.set_interval(1.0, self.repaint)  # heartbeat ages and alive flags move with the clock

    def on_live_changed(self, message: LiveChanged) -> None:
        if "runners" in message.kinds:
            self.repaint()

    def paint(self, live: LiveState, now: datetime) -> None:
        runners = sorted(live.runners.values(), key=lambda r: (not formatting.runner_alive(r.heartbeat_at, now), r.id))
        self.query_one(LiveTable).set_rows([runner_row(r, now) for r in runners])
        alive = sum(1 for r in runners if formatting.runner_alive(r.heartbeat_at, now))
        self.query_one(ConnectionBar).set_counts(f"{alive} alive of {len(runners)}")

    def action_filter(self) -> None:
        self.query_one(FilterBox).open_for(self.query_one(LiveTable))
