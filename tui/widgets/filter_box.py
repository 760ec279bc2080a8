"""The `/` filter: a one-line input over a LiveTable that keeps the rows matching what
is typed, as k9s does. Enter keeps the filter and goes back to the table; escape
clears it."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input

from tui.widgets.live_table import LiveTable


class FilterBox(Input):
    BINDINGS = [Binding("escape", "clear", "Clear filter", id="filter-clear")]
    DEFAULT_CSS = """
    FilterBox { display: none; height: 3; }
    FilterBox.-open { display: block; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.table: LiveTable | None = None

    def open_for(self, table: LiveTable) -> None:
        self.table = table
        self.placeholder = f"filter {table.id}: rows containing this text; enter keeps it, escape clears"
        self.value = table.filter_text
        self.add_class("-open")
        self.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.table is not None:
            self.table.set_filter(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._close()

    def action_clear(self) -> None:
        self.value = ""
        if self.table is not None:
            self.table.set_filter("")
        self._close()

    def _close(self) -> None:
        self.remove_class("-open")
        if self.table is not None:
            self.table.focus()
