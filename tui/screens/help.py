"""The key help: every binding active where the user pressed `?`, by where it comes from.

The caller collects the rows with `binding_rows(screen)` before pushing `HelpScreen`:
once the help is on top, the bindings active are the help's own.
"""

from __future__ import annotations

from rich.cells import cell_len
from textual.app import ComposeResult
from textual.binding import ActiveBinding, Binding
from textual.containers import Horizontal, VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

HelpRow = tuple[str, str, str]
"""(section, keys as displayed, description)."""


def binding_rows(screen: Screen) -> list[HelpRow]:
    """The bindings active on `screen`: the focused widget's (and its containers') first,
    then the screen's, then the app's; keys bound to one action share a row."""
    by_action: dict[tuple[DOMNode, str], list[ActiveBinding]] = {}
    for active in screen.active_bindings.values():
        if active.binding.system:  # e.g. ctrl+c: Textual's own, not ours to document
            continue
        by_action.setdefault((active.node, active.binding.action), []).append(active)
    rows = [_row(screen, node, actives) for (node, _action), actives in by_action.items()]
    # A priority binding can take over a key listed earlier, which interleaves the
    # sections; a stable sort by first appearance groups them again.
    first_seen: dict[str, int] = {}
    for section, _, _ in rows:
        first_seen.setdefault(section, len(first_seen))
    return sorted(rows, key=lambda row: first_seen[row[0]])


def _row(screen: Screen, node: DOMNode, actives: list[ActiveBinding]) -> HelpRow:
    keys = " ".join(dict.fromkeys(screen.app.get_key_display(active.binding) for active in actives))
    binding = actives[0].binding
    description = binding.description or binding.action.replace("_", " ")
    if not actives[0].enabled:
        description += " (not available now)"
    return _section(screen, node), keys, description


def _section(screen: Screen, node: DOMNode) -> str:
    if node.BINDING_GROUP_TITLE:
        return node.BINDING_GROUP_TITLE
    if node is screen.app:
        return "Everywhere"
    if node is screen:
        return "This screen"
    return f"Focused {type(node).__name__}"


class HelpScreen(ModalScreen[None]):
    """Shows the given rows, a section header over each group, keys in one column."""

    CSS_PATH = "forms.css"
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close help", id="help.close")]

    def __init__(self, rows: list[HelpRow], title: str = "Keys") -> None:
        super().__init__()
        self.rows = rows
        self.dialog_title = title

    def compose(self) -> ComposeResult:
        # Cells, not characters: key names such as "↑" may be wide. +4: indent and gap.
        key_width = max((cell_len(keys) for _, keys, _ in self.rows), default=4) + 4
        with VerticalScroll(classes="bd-dialog bd-help") as dialog:
            dialog.border_title = self.dialog_title
            dialog.border_subtitle = "esc close · ↑↓ scroll"
            if not self.rows:
                yield Static("No keys are bound here.", classes="bd-hint")
            for section, rows in _grouped(self.rows).items():
                yield Static(section, classes="bd-help-section", markup=False)
                for keys, description in rows:
                    yield _help_row(keys, description, key_width)

    def action_close(self) -> None:
        self.dismiss(None)


def _grouped(rows: list[HelpRow]) -> dict[str, list[tuple[str, str]]]:
    groups: dict[str, list[tuple[str, str]]] = {}
    for section, keys, description in rows:
        groups.setdefault(section, []).append((keys, description))
    return groups


def _help_row(keys: str, description: str, key_width: int) -> Horizontal:
    key = Static(keys, classes="bd-help-key", markup=False)
    key.styles.width = key_width  # the widest key of all sections: one column throughout
    return Horizontal(key, Static(description, classes="bd-help-description", markup=False), classes="bd-help-row")
