"""Messages the app sends its screens."""

from __future__ import annotations

from textual.message import Message

from tui.live import Kind


class LiveChanged(Message):
    """Some of the live state changed: repaint what shows it (`kinds`: which collections)."""

    def __init__(self, kinds: frozenset[Kind]) -> None:
        super().__init__()
        self.kinds = kinds
