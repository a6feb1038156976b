"""A DataTable whose rows are keyed by id and updated cell by cell.

Live views refresh many times a second; rebuilding a table each time would
redraw every row and lose the cursor. `show(rows)` compares with what is on
screen: same keys in the same order update only the cells that changed; a
different set or order rebuilds once, keeping the cursor on the same key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.widgets import DataTable

Row = tuple[str, tuple[Any, ...]]

STATE_STYLES = {
    "running": "bold green",
    "queued": "cyan",
    "completed": "green",
    "complete": "green",
    "early_stopped": "yellow",
    "pruned": "magenta",
    "failed": "bold red",
    "fail": "bold red",
    "cancelled": "dim",
    "interrupted": "yellow",
}


class KeyedTable(DataTable):
    """Subclasses name their columns: (key, label, width or None for auto)."""

    COLUMNS: ClassVar[tuple[tuple[str, str, int | None], ...]] = ()
    STYLED: ClassVar[dict[str, dict[str, str]]] = {}
    """column key -> {cell text: style}."""
    COLUMN_STYLES: ClassVar[dict[str, str]] = {}
    """column key -> style of every cell in it."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("cursor_type", "row")
        super().__init__(**kwargs)
        self._keys: list[str] = []
        self._cells: dict[str, tuple[Any, ...]] = {}

    def on_mount(self) -> None:
        for key, label, width in self.COLUMNS:
            self.add_column(label, key=key, width=width)

    @property
    def current_key(self) -> str | None:
        """Key of the row under the cursor."""
        if not self._keys or self.cursor_row < 0 or self.cursor_row >= self.row_count:
            return None
        return self.coordinate_to_cell_key((self.cursor_row, 0)).row_key.value

    def cell(self, column: int, value: Any) -> Any:
        key = self.COLUMNS[column][0]
        styles = self.STYLED.get(key)
        if styles is not None and isinstance(value, str) and value in styles:
            return Text(value, style=styles[value])
        style = self.COLUMN_STYLES.get(key)
        if style is not None and isinstance(value, str):
            return Text(value, style=style)
        return value

    def show(self, rows: Sequence[Row]) -> None:
        keys = [k for k, _ in rows]
        if keys != self._keys:
            self._rebuild(rows)
            return
        columns = [c[0] for c in self.COLUMNS]
        for key, cells in rows:
            old = self._cells.get(key)
            if old == cells:
                continue
            for i, value in enumerate(cells):
                if old is None or old[i] != value:
                    self.update_cell(key, columns[i], self.cell(i, value))
            self._cells[key] = cells

    def _rebuild(self, rows: Sequence[Row]) -> None:
        keep = self.current_key
        self.clear()
        for key, cells in rows:
            self.add_row(*(self.cell(i, v) for i, v in enumerate(cells)), key=key)
        self._keys = [k for k, _ in rows]
        self._cells = dict(rows)
        if keep in self._cells:
            self.move_cursor(row=self._keys.index(keep), animate=False)
        elif self._keys:
            self.move_cursor(row=min(self.cursor_row, len(self._keys) - 1), animate=False)

    def select_key(self, key: str) -> bool:
        if key not in self._cells:
            return False
        self.move_cursor(row=self._keys.index(key), animate=False)
        return True
