"""What every dashboard screen shares: the typed app, and API calls whose replies come
back to a callback (errors are already notifications by then)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from textual import work
from textual.screen import Screen

from tui.widgets.live_table import LiveTable

if TYPE_CHECKING:
    from datetime import datetime

    from tui.app import BatchdeckApp
    from tui.live import LiveState


T = TypeVar("T")


class BatchdeckScreen(Screen[None]):
    @property
    def bd_app(self) -> BatchdeckApp:
        return self.app  # type: ignore[return-value]

    def repaint(self) -> None:
        """Show the live state as it is now (once connected)."""
        live = self.bd_app.live
        if live is not None:
            self.paint(live, self.bd_app.clock())

    def paint(self, live: LiveState, now: datetime) -> None:
        """Fill the screen's widgets from `live`; screens that show live state override it."""

    @work(group="api")
    async def call_then(self, resource: str, verb: str, body: dict[str, Any],
                        then: Callable[[Any], Any] = lambda reply: None) -> None:
        """Request in a worker; `then(reply)` with the reply, or None after an error."""
        then(await self.bd_app.call(resource, verb, body))

    def selected(self, table: LiveTable, records: Mapping[str, T] | None, noun: str) -> T | None:
        """The record under the table's cursor, or None (and a hint to select one)."""
        key = table.selected_key
        if records is None or key is None or key not in records:
            self.notify(f"Select {noun} first", severity="warning")
            return None
        return records[key]
