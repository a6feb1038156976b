"""The one-line bar naming the four top-level views and the key that shows each."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

MODES = (("runs", "Runs"), ("presets", "Presets"), ("queue", "Queue"), ("studies", "Studies"))


class ModeBar(Static):
    """Tabs-like line: the current view highlighted, each view with its key."""

    keys: reactive[tuple[str, ...]] = reactive(("1", "2", "3", "4"), init=False)
    """Display keys of the four views, in MODES order (they follow keys.toml)."""

    def __init__(self, current: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.current = current

    def on_mount(self) -> None:
        mode_keys = getattr(self.app, "mode_keys", None)  # keys.toml may have moved the views
        if mode_keys is not None:
            self.keys = mode_keys()
        self.update(self._text())

    def watch_keys(self) -> None:
        self.update(self._text())

    def _text(self) -> Text:
        out = Text(" trialdeck ", style="bold")
        for (mode, label), key in zip(MODES, self.keys):
            style = "reverse bold" if mode == self.current else "dim"
            out.append(" ")
            out.append(f" {key} {label} ", style=style)
        return out
