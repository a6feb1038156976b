"""A keyed table for data that changes many times a second, on the Line API.

Textual's DataTable invalidates every rendered cell on any `update_cell`
(its render caches are keyed by a table-wide update counter), so a dashboard
that changes a few cells twice a second re-renders every visible cell each
time: measured here at about a quarter of a core for 50 live runs. This
table keeps one rendered line per row and re-renders, and repaints, only the
rows whose cells changed.

Rows are `(key, cells)` with string cells; columns are fixed-width. The
header stays pinned while rows scroll; the cursor is a row, and it stays on
its key (not its position) when rows come and go. Rows are given whole
(`show`) or as a `RowSource` (`show_source`): a table of 100,000 runs asks
only for the rows it draws. Messages:
`Highlighted` (cursor moved), `Selected` (enter or click on the cursor row),
`HeaderClicked` (a column header was clicked), `MarksChanged` (a row was
marked or unmarked).

Marks (a set of row keys, kept in the order they were marked) survive rows
coming and going, so a filter can hide a marked row and show it again. A
marked row shows "●" in its first cell's left padding: no width is taken,
and an unmarked table draws exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

Row = tuple[str, tuple[str, ...]]
Column = tuple[str, str, int]
"""(key, label, width)."""

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


_LINES_KEPT = 512
"""Rendered rows cached past which only those on screen are kept."""


class RowSource(Protocol):
    """Rows a table reads as it draws them: how many, and the key and cells at a position."""

    def __len__(self) -> int: ...

    def key(self, i: int) -> str: ...

    def cells(self, i: int) -> tuple[str, ...]: ...

    def index(self, key: str) -> int | None:
        """The position of `key`, or None when it is not among the rows."""
        ...


class ListSource:
    """A `RowSource` over rows given whole."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self.keys = [k for k, _ in rows]
        self.by_key = dict(rows)
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, i: int) -> str:
        return self.keys[i]

    def cells(self, i: int) -> tuple[str, ...]:
        return self.by_key[self.keys[i]]

    def index(self, key: str) -> int | None:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.keys)}
        return self._index.get(key)


def fit_columns(spec: Sequence[Column], width: int, drop: Sequence[str] = (),
                shrink: dict[str, int] | None = None) -> list[tuple[int, Column]]:
    """The columns to draw in `width` cells, as (index in `spec`, column).

    When all of `spec` is wider than `width`: the `shrink` columns are cut to
    their narrowest, then the `drop` columns are hidden in that order until
    the rest fit, then the shrunk ones get back what room is left. With no
    width yet (not laid out), or when everything fits, every column as given.
    """
    def total(cols) -> int:
        return sum(w + 2 for _, (_, _, w) in cols)

    full = list(enumerate(spec))
    if width <= 0 or total(full) <= width:
        return full
    shrink = shrink or {}
    cols = [(i, (k, label, min(w, shrink.get(k, w)))) for i, (k, label, w) in full]
    hidden: set[str] = set()
    for key in drop:
        if total([c for c in cols if c[1][0] not in hidden]) <= width:
            break
        hidden.add(key)
    kept = [c for c in cols if c[1][0] not in hidden]
    room = width - total(kept)
    out = []
    for i, (k, label, w) in kept:
        extra = max(0, min(room, spec[i][2] - w))
        room -= extra
        out.append((i, (k, label, w + extra)))
    return out


def _fit(text: str, width: int, left: bool = False) -> str:
    if cell_len(text) <= width:
        return text + " " * (width - cell_len(text))
    if left:  # keep the end: "…1:40123" tells two workers of one host apart, "127.0.0…" does not
        kept, used = [], 0
        for ch in reversed(text):
            if used + cell_len(ch) > width - 1:
                break
            kept.append(ch)
            used += cell_len(ch)
        return "…" + "".join(reversed(kept)) + " " * (width - 1 - used)
    out, used = [], 0
    for ch in text:
        w = cell_len(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…" + " " * (width - 1 - used)


class LiveTable(ScrollView, can_focus=True):
    """Subclasses set COLUMNS, and optionally STYLED / COLUMN_STYLES."""

    COLUMNS: ClassVar[tuple[Column, ...]] = ()
    STYLED: dict[str, dict[str, str]] = {}
    """column key -> {cell text: style} (a class's, or one table's own: the compare view's run colours)."""
    COLUMN_STYLES: dict[str, str] = {}
    """column key -> style of every cell in it (a class's, or one table's own)."""
    SHRINK: ClassVar[dict[str, int]] = {}
    """column key -> the narrowest it may be cut to (with "…") when the table is narrower than its columns."""
    CUT_LEFT: ClassVar[frozenset[str]] = frozenset()
    """Columns whose too-long cells keep their end, cut at the start (a Dask worker's address in the slot column)."""
    DROP: ClassVar[tuple[str, ...]] = ()
    """Columns hidden, least useful first, while the table is still narrower than its columns
    (an 80-column terminal): better a few whole columns than the key ones scrolled out of sight."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"live-table--header", "live-table--cursor", "live-table--cursor-blur",
                                             "live-table--mark"}
    DEFAULT_CSS = """
    LiveTable {
        height: 1fr;
        background: $surface;
    }
    LiveTable > .live-table--header {
        text-style: bold;
        color: $text-accent;
        background: $panel;
    }
    LiveTable > .live-table--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: bold;
    }
    LiveTable > .live-table--cursor-blur {
        background: $block-cursor-blurred-background;
    }
    LiveTable > .live-table--mark {
        color: $text-warning;
        text-style: bold;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "cursor_to(0)", "First", show=False),
        Binding("end", "cursor_to(-1)", "Last", show=False),
        Binding("enter", "select", "Select", show=False),
    ]

    cursor_row: reactive[int] = reactive(0, init=False)
    """Index of the row under the cursor (0 when there are no rows)."""

    @dataclass
    class Highlighted(Message):
        table: LiveTable
        key: str | None

    @dataclass
    class Selected(Message):
        table: LiveTable
        key: str

    @dataclass
    class HeaderClicked(Message):
        table: LiveTable
        column: str

    @dataclass
    class MarksChanged(Message):
        table: LiveTable
        marked: tuple[str, ...]
        """Every marked key, in the order they were marked (shown or not)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._spec: list[Column] = list(self.COLUMNS)
        self._layout: list[tuple[int, Column]] = list(enumerate(self._spec))
        """The columns drawn at the current width: (index into the row's cells, column)."""
        self._source: RowSource = ListSource([])
        self._drawn: dict[int, tuple[str, tuple[str, ...]]] = {}
        self._cursor_key: str | None = None
        """The key under the cursor when it was last moved or the rows last shown."""
        """Position -> (key, cells) as last drawn: an update repaints only the rows that differ."""
        self._lines: dict[str, tuple[tuple, Strip]] = {}
        self._header: tuple[tuple, Strip] | None = None
        self._styles: dict[str, Style] = {}
        self._marks: dict[str, None] = {}
        """Marked keys, in marking order (a dict: ordered, O(1) membership)."""
        self._update_virtual_size()

    # -- data --------------------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        """Every row's key, in order (all of them: for a short table, or a test)."""
        return [self._source.key(i) for i in range(len(self._source))]

    @property
    def row_count(self) -> int:
        return len(self._source)

    def cells(self, key: str) -> tuple[str, ...]:
        i = self._source.index(key)
        if i is None:
            raise KeyError(key)
        return self._source.cells(i)

    @property
    def current_key(self) -> str | None:
        return self._source.key(self.cursor_row) if 0 <= self.cursor_row < len(self._source) else None

    @property
    def shown_columns(self) -> list[str]:
        """Keys of the columns drawn at the current width."""
        return [key for _, (key, _, _) in self._layout]

    def set_columns(self, spec: Sequence[Column]) -> None:
        if list(spec) == self._spec:
            return
        self._spec = list(spec)
        self._source, self._drawn, self._lines, self._header = ListSource([]), {}, {}, None
        self._relayout()
        self.refresh()

    def _relayout(self) -> None:
        layout = fit_columns(self._spec, self.scrollable_content_region.width, self.DROP, self.SHRINK)
        if layout != self._layout:
            self._layout = layout
            self._lines.clear()
            self._header = None
            self.refresh()
        self._update_virtual_size()

    def on_resize(self, event: events.Resize) -> None:
        self._relayout()

    def watch_show_vertical_scrollbar(self) -> None:
        # Rows outgrew the height (or shrank back): the scrollbar takes or gives back two cells.
        self.call_after_refresh(self._relayout)

    def show(self, rows: Sequence[Row]) -> None:
        """Display `rows`; same keys in the same order repaint only the rows that changed."""
        self.show_source(ListSource(rows))

    def show_source(self, source: RowSource) -> None:
        """Display the rows of `source` (read as they are drawn). The cursor stays on the key it
        was on wherever that row is now (at the nearest position if it is gone); only rows on
        screen whose key or cells changed are repainted."""
        # The key the cursor was on as last shown: a source may be a view over data that changed since.
        keep = self._cursor_key
        moved = len(source) != len(self._source)
        self._source = source
        row = source.index(keep) if keep is not None else None
        if row is None:
            row = min(self.cursor_row, max(0, len(source) - 1)) if keep is not None else 0
        if moved:
            self._update_virtual_size()
        if row != self.cursor_row:
            self.set_reactive(LiveTable.cursor_row, row)
            self._scroll_to_cursor()
            self._drawn.clear()
            self.refresh()
        else:
            self._repaint_changed()
        self._cursor_key = self.current_key
        if keep != self._cursor_key:
            self.post_message(self.Highlighted(self, self._cursor_key))

    def _repaint_changed(self) -> None:
        top = int(self.scroll_offset.y)
        source = self._source
        shown = range(top, top + max(0, self.size.height - 1))
        self._drawn = {i: drawn for i, drawn in self._drawn.items() if i in shown}
        for i in shown:
            now = (source.key(i), source.cells(i)) if i < len(source) else None
            if self._drawn.get(i) != now:
                self.refresh(Region(0, i - top + 1, self.size.width, 1))

    def refresh_rows(self) -> None:
        """The source's rows changed (same source): repaint those on screen that differ."""
        self.show_source(self._source)

    # -- marks -------------------------------------------------------------------------------

    @property
    def marked(self) -> tuple[str, ...]:
        return tuple(self._marks)

    def toggle_mark(self, key: str | None = None) -> bool:
        """Mark the row `key` (default: the cursor's) or unmark it if it was; returns whether it is marked now."""
        key = self.current_key if key is None else key
        if key is None:
            return False
        if key in self._marks:
            del self._marks[key]
        else:
            self._marks[key] = None
        self._repaint_key(key)
        self.post_message(self.MarksChanged(self, self.marked))
        return key in self._marks

    def set_marks(self, keys: Sequence[str]) -> None:
        """Mark exactly `keys` (in this order)."""
        old = set(self._marks)
        self._marks = dict.fromkeys(keys)
        for key in old ^ set(self._marks):
            self._repaint_key(key)
        self.post_message(self.MarksChanged(self, self.marked))

    def _repaint_key(self, key: str) -> None:
        i = self._source.index(key)
        top = int(self.scroll_offset.y)
        if i is not None and top <= i < top + self.size.height - 1:
            self.refresh(Region(0, i - top + 1, self.size.width, 1))

    def select_key(self, key: str) -> bool:
        i = self._source.index(key)
        if i is None:
            return False
        self.cursor_row = i
        return True

    # -- cursor ------------------------------------------------------------------------------

    def validate_cursor_row(self, row: int) -> int:
        return max(0, min(row, len(self._source) - 1)) if len(self._source) else 0

    def watch_cursor_row(self, old: int, new: int) -> None:
        self._cursor_key = self.current_key
        top = int(self.scroll_offset.y)
        for i in (old, new):
            if top <= i < top + self.size.height - 1:
                self.refresh(Region(0, i - top + 1, self.size.width, 1))
        self._scroll_to_cursor()
        self.post_message(self.Highlighted(self, self.current_key))

    def _scroll_to_cursor(self) -> None:
        body = max(1, self.size.height - 1)
        top = int(self.scroll_offset.y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + body:
            self.scroll_to(y=self.cursor_row - body + 1, animate=False)

    def action_cursor(self, delta: int) -> None:
        self.cursor_row += delta

    def action_page(self, delta: int) -> None:
        self.cursor_row += delta * max(1, self.size.height - 2)

    def action_cursor_to(self, row: int) -> None:
        self.cursor_row = row if row >= 0 else len(self._source) - 1

    def action_select(self) -> None:
        if self.current_key is not None:
            self.post_message(self.Selected(self, self.current_key))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = event.x + int(self.scroll_offset.x)
            for _, (key, _label, width) in self._layout:
                if x < width + 2:
                    self.post_message(self.HeaderClicked(self, key))
                    return
                x -= width + 2
            return
        row = int(self.scroll_offset.y) + event.y - 1
        if 0 <= row < len(self._source):
            if row == self.cursor_row:
                self.action_select()
            self.cursor_row = row

    def on_focus(self) -> None:
        self._lines.clear()  # the cursor's style depends on focus
        self.refresh()

    def on_blur(self) -> None:
        self._lines.clear()
        self.refresh()

    # -- rendering ---------------------------------------------------------------------------

    def _update_virtual_size(self) -> None:
        width = sum(w + 2 for _, (_, _, w) in self._layout)
        self.virtual_size = Size(width, len(self._source) + 1)

    def _style(self, name: str) -> Style:
        style = self._styles.get(name)
        if style is None:
            style = self._styles[name] = Style.parse(name)
        return style

    def _render_row(self, cells: tuple[str, ...], base: Style, cursor: Style | None, marked: bool = False) -> Strip:
        segments = []
        for n, (i, (key, _label, width)) in enumerate(self._layout):
            text = cells[i] if i < len(cells) else ""
            style = base
            styled = self.STYLED.get(key)
            name = styled.get(text) if styled is not None else None
            name = name or self.COLUMN_STYLES.get(key)
            if name:
                style = base + self._style(name)
            if cursor is not None:
                style = style + cursor
            if n == 0 and marked:  # the mark sits in the first cell's left padding
                mark = style + self.get_component_rich_style("live-table--mark")
                segments += [Segment("●", mark), Segment(_fit(text, width) + " ", style)]
                continue
            segments.append(Segment(" " + _fit(text, width, key in self.CUT_LEFT) + " ", style))
        return Strip(segments)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        x = int(self.scroll_offset.x)
        base = self.rich_style
        if y == 0:
            header_style = base + self.get_component_rich_style("live-table--header")
            mark = (tuple(self._layout), header_style)
            if self._header is None or self._header[0] != mark:
                strip = Strip([Segment(" " + _fit(label, w) + " ", header_style) for _, (_, label, w) in self._layout])
                self._header = (mark, strip)
            return self._header[1].crop_extend(x, x + width, header_style)
        row = int(self.scroll_offset.y) + y - 1
        if row >= len(self._source):
            self._drawn.pop(row, None)
            return Strip.blank(width, base)
        key, cells = self._source.key(row), self._source.cells(row)
        self._drawn[row] = (key, cells)
        cursor = None
        if row == self.cursor_row:
            cursor = self.get_component_rich_style("live-table--cursor" if self.has_focus else "live-table--cursor-blur")
        marked = key in self._marks
        row_mark = (cells, cursor, base, marked)
        hit = self._lines.get(key)
        if hit is None or hit[0] != row_mark:
            if len(self._lines) > _LINES_KEPT:  # scrolled through many rows: keep those on screen
                drawn = {k for k, _ in self._drawn.values()}
                self._lines = {k: v for k, v in self._lines.items() if k in drawn}
            hit = self._lines[key] = (row_mark, self._render_row(cells, base, cursor, marked))
        return hit[1].crop_extend(x, x + width, base)
