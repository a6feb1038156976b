"""The dashboard's event pane: early stops, prunes, failures and finished runs, as they happen."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual import events
from textual.reactive import reactive
from textual.widgets import RichLog

from trialdeck.tui.live import LogEntry

KIND_STYLES = {"failed": "bold red", "nan_loss": "bold red", "early_stopped": "yellow", "pruned": "magenta",
               "finished": "green", "cancelled": "dim", "interrupted": "yellow"}


class EventLog(RichLog):
    """Append-only: only entries past the last one written are added. A line wider than the pane
    wraps (an early stop's reason, a Dask worker's address): a horizontal scroll bar would be drawn
    as a stray block glyph just above the engine line, and hide the end of the line anyway."""

    entries: reactive[tuple[tuple[int, LogEntry], ...]] = reactive((), init=False, always_update=True)
    """(sequence number, entry) pairs, oldest first; the app keeps the last few hundred."""

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=500, wrap=True, markup=False, highlight=False, auto_scroll=True, **kwargs)
        self._last = -1

    def watch_entries(self, entries: Sequence[tuple[int, LogEntry]]) -> None:
        # Wrapped at the pane's own width, once it has one (RichLog would measure against the
        # console's width instead); entries that come before that are written on the first resize.
        width = self.scrollable_content_region.width
        if width <= 0:
            return
        for seq, entry in entries:
            if seq > self._last:
                self.write(self._line(entry), width=width)
                self._last = seq

    def on_resize(self, event: events.Resize) -> None:
        if self._last < 0:
            self.watch_entries(self.entries)

    @staticmethod
    def _line(entry: LogEntry) -> Text:
        text = Text(entry.line())
        style = KIND_STYLES.get(entry.kind)
        if style:
            start = text.plain.find(entry.kind, 15)
            if start >= 0:
                text.stylize(style, start, start + len(entry.kind))
        return text
