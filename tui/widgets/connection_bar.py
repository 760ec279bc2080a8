"""The top line of every screen: where the dashboard is connected, for which org, and
whether the connection is up, with the screen's title and a few live counts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.widgets import Static

if TYPE_CHECKING:
    from tui.app import BatchdeckApp

STATE_STYLES = {"connected": "green", "connecting": "yellow", "reconnecting": "bold yellow", "closed": "red"}


class ConnectionBar(Static):
    DEFAULT_CSS = """
    ConnectionBar { height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    def __init__(self, title: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.title_text = title
        self.counts = ""

    @property
    def bd_app(self) -> BatchdeckApp:
        return self.app  # type: ignore[return-value]

    def on_mount(self) -> None:
        self.watch(self.app, "connection", self._render_bar, init=True)

    def set_counts(self, counts: str) -> None:
        if counts != self.counts:
            self.counts = counts
            self._render_bar(self.bd_app.connection)

    def _render_bar(self, state: str) -> None:
        bar = Text()
        bar.append(" batchdeck ", style="bold reverse")
        bar.append(f" {self.title_text} ", style="bold")
        bar.append("│ ", style="dim")
        bar.append(self.bd_app.server, style="")
        bar.append("  org ", style="dim")
        bar.append(self.bd_app.org, style="bold")
        style = STATE_STYLES.get(state.split(":")[0], "red")  # "reconnecting: why" is still reconnecting
        bar.append("  ● ", style=style)
        bar.append(state, style=style)
        if self.counts:
            bar.append(f"  │ {self.counts}", style="dim")
        self.update(bar)
