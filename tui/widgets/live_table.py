"""A DataTable that follows a changing list of rows without losing the user's place.

Rows are given whole, keyed by id, each time the data changes. When the keys are the
same and in the same order, only changed cells are written (DataTable repaints just
those); otherwise the table is rebuilt and the cursor goes back to the row it was on.
A filter text keeps the rows whose cells contain it (case-insensitive).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

Cell = str | Text
Row = tuple[str, Sequence[Cell]]
"""A row's key (an id) and its cells."""


class LiveTable(DataTable[Cell]):
    def __init__(self, columns: Sequence[tuple[str, str]], **kwargs: object) -> None:
        """`columns`: (key, label) pairs."""
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self.BINDING_GROUP_TITLE = f"{str(kwargs.get('id') or 'this').capitalize()} list"  # the help screen's heading
        self._columns = list(columns)
        self._rows: list[Row] = []
        self._shown: list[Row] = []
        self.filter_text = ""

    def on_mount(self) -> None:
        for key, label in self._columns:
            self.add_column(label, key=key)

    @property
    def selected_key(self) -> str | None:
        """The id of the row under the cursor, if any."""
        if not self._shown or self.cursor_row < 0 or self.cursor_row >= len(self._shown):
            return None
        return self._shown[self.cursor_row][0]

    @property
    def shown_keys(self) -> list[str]:
        return [key for key, _ in self._shown]

    def set_rows(self, rows: list[Row]) -> None:
        self._rows = rows
        self._show()

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip().lower()
        self._show()

    def _show(self) -> None:
        rows = [r for r in self._rows if self._matches(r)] if self.filter_text else self._rows
        if [k for k, _ in rows] == [k for k, _ in self._shown]:
            self._update_cells(rows)
        else:
            self._rebuild(rows)
        self._shown = rows

    def _matches(self, row: Row) -> bool:
        return any(self.filter_text in (c.plain if isinstance(c, Text) else c).lower() for c in row[1])

    def _update_cells(self, rows: list[Row]) -> None:
        for (key, cells), (_, old) in zip(rows, self._shown, strict=True):
            for (column, _), cell, before in zip(self._columns, cells, old, strict=True):
                if cell != before:
                    try:
                        self.update_cell(key, column, cell, update_width=True)
                    except (CellDoesNotExist, RowDoesNotExist):
                        return self._rebuild(rows)
        return None

    def _rebuild(self, rows: list[Row]) -> None:
        selected = self.selected_key
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        if selected is not None:
            try:
                self.move_cursor(row=self.get_row_index(selected), animate=False)
            except RowDoesNotExist:
                pass
