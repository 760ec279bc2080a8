"""A yes/no question before a destructive action (delete, cancel, disable)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ConfirmScreen(ModalScreen[bool]):
    """Asks `message`; dismisses with True when confirmed, False when cancelled."""

    CSS_PATH = "forms.css"
    # The confirm button has focus, so `enter` presses it; after tabbing to Cancel,
    # `enter` presses that instead, which is what a focused button promises.
    AUTO_FOCUS = "#confirm"
    BINDINGS = [
        Binding("y", "confirm", "Yes", id="confirm.yes"),
        Binding("enter", "confirm", "Confirm", id="confirm.enter", show=False),
        Binding("n", "cancel", "No", id="confirm.no"),
        Binding("escape", "cancel", "Cancel", id="confirm.cancel"),
    ]

    def __init__(self, title: str, message: str, confirm_label: str = "Confirm", cancel_label: str = "Cancel") -> None:
        super().__init__()
        self.dialog_title = title
        self.message = message
        self.confirm_label = confirm_label
        self.cancel_label = cancel_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="bd-dialog bd-confirm") as dialog:
            dialog.border_title = self.dialog_title
            dialog.border_subtitle = "y confirm · n/esc cancel"
            yield Static(self.message, classes="bd-message", markup=False)
            with Horizontal(classes="bd-buttons"):
                yield Button(self.cancel_label, id="cancel")
                yield Button(self.confirm_label, id="confirm", variant="error")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "confirm")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
