"""The main screen: batches, live executions, and the log of the selected execution.

Everything shown comes from the app's live state (KV watches and state events); the
actions call the API and report errors as notifications. Tables are repainted when
the live state changes and once a second for the clocks (next run, durations).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Static

from broker.types import Batch, Execution
from tui import flows, formatting
from tui.screens.base import BatchdeckScreen
from tui.live import LiveState
from tui.messages import LiveChanged
from tui.widgets.connection_bar import ConnectionBar
from tui.widgets.filter_box import FilterBox
from tui.widgets.live_table import LiveTable, Row
from tui.widgets.log_pane import LogPane

EXECUTIONS_SHOWN = 200
SCHEDULE_WORDS = 36
"""Characters of a schedule in words shown in the batches table (the cron follows it)."""

BATCH_COLUMNS = [("name", "Batch"), ("schedule", "Schedule"), ("next", "Next run"), ("enabled", "On"),
                 ("last", "Last"), ("recent", "Recent runs")]
EXECUTION_COLUMNS = [("status", "Status"), ("name", "Name"), ("progress", "Progress"), ("runner", "Runner"),
                     ("started", "Started"), ("duration", "Duration"), ("id", "Execution")]


def batch_cron(batch: Batch) -> str | None:
    if batch.cron_expression:
        return batch.cron_expression
    return batch.schedule.to_cron() if batch.schedule is not None else None


class MainScreen(BatchdeckScreen):
    BINDINGS = [
        Binding("s", "start", "Start", id="start"),
        Binding("S", "start_now", "Start now", show=False, id="start-now"),
        Binding("x", "cancel", "Cancel run", id="cancel"),
        Binding("e", "toggle", "Enable/disable", id="toggle"),
        Binding("d", "delete", "Delete", id="delete"),
        Binding("n", "new", "New batch", id="new"),
        Binding("slash", "filter", "Filter", id="filter"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.followed: str | None = None

    def compose(self) -> ComposeResult:
        yield ConnectionBar("batches & runs", id="bar")
        yield FilterBox(id="filter")
        with Vertical(id="lists"):
            yield Static("Batches", classes="pane-title", id="batches-title")
            yield LiveTable(BATCH_COLUMNS, id="batches")
            yield Static("Executions", classes="pane-title", id="executions-title")
            yield LiveTable(EXECUTION_COLUMNS, id="executions")
        yield LogPane(id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(1.0, self._tick)
        self.query_one("#batches", LiveTable).focus()

    # ---- painting ----------------------------------------------------------------------

    def on_live_changed(self, message: LiveChanged) -> None:
        self.repaint()

    def on_screen_resume(self) -> None:
        self.repaint()

    def _tick(self) -> None:
        self.repaint()

    def paint(self, live: LiveState, now: datetime) -> None:
        self.query_one("#batches", LiveTable).set_rows(self._batch_rows(live, now))
        executions = sorted(live.executions.values(), key=lambda e: e.queued_at or "", reverse=True)
        self.query_one("#executions", LiveTable).set_rows(
            [self._execution_row(e, now) for e in executions[:EXECUTIONS_SHOWN]])
        running = sum(1 for e in live.executions.values() if e.status == "running")
        queued = sum(1 for e in live.executions.values() if e.status == "queued")
        alive = sum(1 for r in live.runners.values() if formatting.runner_alive(r.heartbeat_at, now))
        self.query_one(ConnectionBar).set_counts(f"{running} running · {queued} queued · {alive} runner{'' if alive == 1 else 's'}")

    def _batch_rows(self, live: LiveState, now: datetime) -> list[Row]:
        runs = live.runs_by_batch()
        batches = sorted((b for b in live.batches.values() if b.deleted_at is None), key=lambda b: b.name.lower())
        rows: list[Row] = []
        for batch in batches:
            cron = batch_cron(batch)
            history = runs.get(batch.id, [])
            words = formatting.shorten(formatting.cron_words(cron), SCHEDULE_WORDS) if cron else "—"
            rows.append((batch.id, [
                batch.name,
                f"{words}  ({cron})" if cron else "—",
                formatting.relative(formatting.next_run(cron, batch.timezone, batch.is_enabled, now), now),
                "✔" if batch.is_enabled else "—",
                formatting.status(history[-1].status if history else None),
                formatting.outcome_strip([e.status for e in history if e.is_final]),
            ]))
        return rows

    def _execution_row(self, execution: Execution, now: datetime) -> Row:
        took = execution.duration_ms if execution.is_final and execution.duration_ms is not None else \
            formatting.elapsed_ms(execution.started_at, execution.finished_at, now)
        return (execution.id, [
            formatting.status(execution.status),
            execution.name,
            formatting.progress(execution.progress_percent, execution.progress_text, execution.status),
            execution.runner_id or "—",
            formatting.clock_time(execution.started_at or execution.queued_at, now),
            formatting.duration(took),
            execution.id,
        ])

    # ---- selection -------------------------------------------------------------------

    @on(DataTable.RowHighlighted, "#executions")
    def _execution_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value if event.row_key is not None else None
        if key != self.followed and self.bd_app.api is not None:
            self.followed = key
            self.query_one(LogPane).follow_execution(self.bd_app.api, key)

    def _selected_batch(self) -> Batch | None:
        live = self.bd_app.live
        return self.selected(self.query_one("#batches", LiveTable), live and live.batches, "a batch")

    def _selected_execution(self) -> Execution | None:
        live = self.bd_app.live
        return self.selected(self.query_one("#executions", LiveTable), live and live.executions, "an execution")

    # ---- actions -----------------------------------------------------------------------

    def action_start(self) -> None:
        batch = self._selected_batch()
        if batch is not None:
            flows.start_batch_form(self.bd_app, batch)

    def action_start_now(self) -> None:
        batch = self._selected_batch()
        if batch is not None:
            self.start_batch(batch.id)

    def start_batch(self, batch_id: str) -> None:
        self.call_then("batch", "start", {"id": batch_id}, lambda reply: flows.said_started(self.bd_app, reply))

    def action_cancel(self) -> None:
        execution = self._selected_execution()
        if execution is not None:
            self.cancel_execution(execution.id)

    def cancel_execution(self, execution_id: str) -> None:
        def said(reply: dict[str, Any] | None) -> None:
            if reply:
                self.notify(f"Cancel {reply.get('acknowledged', 'ok')}: {execution_id}", title="cancel")

        self.call_then("exec", "cancel", {"id": execution_id}, said)

    def action_toggle(self) -> None:
        batch = self._selected_batch()
        if batch is not None:
            self.toggle_batch(batch.id)

    def toggle_batch(self, batch_id: str) -> None:
        live = self.bd_app.live
        if live is None or batch_id not in live.batches:
            return
        batch = live.batches[batch_id]
        body = {"id": batch.id, "is_enabled": not batch.is_enabled, "version": batch.version}

        def said(reply: dict[str, Any] | None) -> None:
            if reply:
                self.notify(f"{reply['name']} is {'enabled' if reply['is_enabled'] else 'disabled'}")

        self.call_then("batch", "status", body, said)

    def action_delete(self) -> None:
        batch = self._selected_batch()
        if batch is not None:
            flows.delete_batch(self.bd_app, batch)

    def action_new(self) -> None:
        flows.batch_form(self.bd_app, None)

    @on(DataTable.RowSelected, "#batches")
    def _edit_batch(self) -> None:
        batch = self._selected_batch()
        if batch is not None:
            flows.batch_form(self.bd_app, batch)

    @on(DataTable.RowSelected, "#executions")
    def _read_log(self) -> None:
        self.query_one(LogPane).focus()

    def action_filter(self) -> None:
        focused = self.focused
        table = focused if isinstance(focused, LiveTable) else self.query_one("#batches", LiveTable)
        self.query_one(FilterBox).open_for(table)


