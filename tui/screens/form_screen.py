"""What the dashboard's forms share: the dialog frame, the error strip, the save path.

A form reads its fields into a request (`build`), hands it to the caller's `save`, which
makes the API call, and dismisses with what `save` returned. A field the user must fix
(`FormError`) or an error from `save` (an `ApiError`'s message, or any other exception's
text) is shown in the red strip above the buttons and the form stays open.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import msgspec
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Static

from broker.errors import ApiError
from broker.types import ID_PATTERN

Save = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class FormError(ValueError):
    """A field the user must fix; the text names the field and says what is wrong."""


class FormScreen(ModalScreen[dict | None]):
    """A dialog of fields over a save button. Dismisses with what `save` returned, or
    None when cancelled or when `build` finds nothing to send.

    A subclass yields its fields from `compose_fields` and reads them in `build`; the
    class attributes below name what ctrl+s does."""

    CSS_PATH = "forms.css"
    BINDINGS = [
        # Priority: a focused Input, TextArea or list would otherwise take the key.
        Binding("ctrl+s", "save", "Save", id="form.save", priority=True),
        Binding("escape", "cancel", "Cancel", id="form.cancel"),
    ]

    VERB: ClassVar[str] = "save"  # ctrl+s: the button (label and id), the subtitle, a failure
    VERB_VARIANT: ClassVar[str] = "primary"  # the button's look
    WHAT: ClassVar[str] = "form"  # what is saved, for the worker's name and the log

    def __init__(self, save: Save, title: str) -> None:
        super().__init__()
        self.save = save
        self.dialog_title = title
        self.saving = False

    # ---- for subclasses ----------------------------------------------------------

    def compose_fields(self) -> ComposeResult:
        """The form's fields, top to bottom."""
        yield from ()

    def build(self) -> dict[str, Any] | None:
        """The request for `save`, or None when there is nothing to send (the form then
        just closes); raises FormError for a field the user must fix."""
        raise NotImplementedError

    # ---- layout ------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        # The dialog scrolls when the terminal is short; the footer stays docked.
        with VerticalScroll(classes="bd-dialog bd-form", can_focus=False) as dialog:
            dialog.border_title = self.dialog_title
            dialog.border_subtitle = f"ctrl+s {self.VERB} · esc cancel"
            yield from self.compose_fields()
            with Vertical(classes="bd-form-footer"):
                yield Static(id="form-error", classes="bd-error -hidden", markup=False)
                with Horizontal(classes="bd-buttons"):
                    yield Button("Cancel", id="cancel")
                    yield Button(self.VERB.capitalize(), id=self.VERB, variant=self.VERB_VARIANT)

    def new_id_field(self, is_new: bool) -> ComposeResult:
        """On create, an optional ID (a new ULID when left empty); a record's id never changes."""
        if is_new:
            yield field_row("ID", Input(id="record-id", max_length=64, restrict=r"[A-Za-z0-9_-]*",
                                        placeholder="optional: a new ULID when empty"))

    def chosen_id(self) -> dict[str, str]:
        """`{"id": …}` when the user typed one, `{}` when not (or when editing); FormError
        when it is no id."""
        fields = self.query("#record-id")
        value = fields.first(Input).value.strip() if fields else ""
        if not value:
            return {}
        if not re.fullmatch(ID_PATTERN, value):
            raise FormError("id: 1-64 letters, digits, '_' or '-', starting with a letter or a digit")
        return {"id": value}

    def show_text(self, selector: str, text: str) -> None:
        """Show `text` in the Static at `selector`; hide it while there is none."""
        widget = self.query_one(selector, Static)
        widget.update(text)
        widget.set_class(not text, "-hidden")

    def show_error(self, message: str) -> None:
        self.show_text("#form-error", message)

    # ---- saving ------------------------------------------------------------------

    def action_save(self) -> None:
        if self.saving:  # one request at a time; a second ctrl+s must not send it twice
            return
        try:
            request = self.build()
        except FormError as err:
            self.show_error(str(err))
            return
        if request is None:
            self.dismiss(None)
            return
        self.show_error("")
        self._set_saving(True)
        self.run_worker(self._save(request), name=f"{self.VERB} {self.WHAT}", group="form-save")

    async def _save(self, request: dict[str, Any]) -> None:
        try:
            result = await self.save(request)
        except ApiError as err:
            self.show_error(err.message)
        except Exception as err:  # the dashboard must outlive a failed request of any kind
            self.log.error(f"{self.VERB} {self.WHAT} failed", err)
            self.show_error(f"could not {self.VERB}: {err}")
        else:
            self.dismiss(result)
            return
        self._set_saving(False)

    def _set_saving(self, saving: bool) -> None:
        self.saving = saving
        self.query_one(f"#{self.VERB}", Button).disabled = saving

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == self.VERB:
            self.action_save()
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter moves to the next field."""
        event.stop()
        self.focus_next()


# ---- fields ----------------------------------------------------------------------


def field_row(label: str, widget: Widget, *, required: bool = False, field_id: str | None = None) -> Horizontal:
    """A row: the label in the label column, then the widget."""
    classes = "bd-label -required" if required else "bd-label"
    return Horizontal(Label(f"{label} *" if required else label, classes=classes), widget,
                      classes="bd-field", id=field_id)


def inline_row(*fields: tuple[str, Widget]) -> Horizontal:
    """Several short fields on one row: the first label in the label column, each other
    one just before its widget."""
    children: list[Widget] = []
    for index, (label, widget) in enumerate(fields):
        children += [Label(label, classes="bd-label bd-inline-label" if index else "bd-label"), widget]
    return Horizontal(*children, classes="bd-field")


def hint(text: str = "", id: str | None = None) -> Static:
    """A muted line under a field, lined up with the widgets."""
    return Static(text, id=id, classes="bd-hint", markup=False)


# ---- specs -----------------------------------------------------------------------


def spec_defaults(spec_type: type[msgspec.Struct]) -> dict[str, Any]:
    """The contract's own defaults: what a field holds when a stored record leaves it out."""
    defaults = {}
    for field in msgspec.structs.fields(spec_type):
        if field.default is not msgspec.NODEFAULT:
            defaults[field.name] = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            defaults[field.name] = field.default_factory()
    return defaults


def spec_request(spec: dict[str, Any], original: dict[str, Any] | None,
                 defaults: dict[str, Any]) -> dict[str, Any] | None:
    """The body that saves `spec`: all of it but the empty fields for a new record; for
    an edit of `original`, its `id`, `version` and the changed fields, or None when
    nothing changed."""
    if original is None:
        return {name: value for name, value in spec.items() if value is not None}
    changes = {name: value for name, value in spec.items() if value != original.get(name, defaults.get(name))}
    if not changes:
        return None
    return {"id": original["id"], "version": original.get("version"), **changes}
