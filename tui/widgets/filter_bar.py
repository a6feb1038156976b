"""A one-line filter that appears on `/` and reports what was typed.

The parent decides what the text means and may set `error` to say why it
cannot be applied (shown next to the input, in words).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Input, Static

from trialdeck.tui.keymap import bind


class FilterBar(Horizontal):
    """Hidden until `open()`; escape hides it again (the filter stays unless cleared)."""

    # Shown: while typing, the footer names the way out (the view's own keys type into the filter).
    BINDINGS = [bind("back", "close", description="Close filter")]

    error: reactive[str] = reactive("", init=False)
    """Why the current text cannot be applied; empty when it can."""

    @dataclass
    class Changed(Message):
        """The filter text changed (it may be empty)."""

        bar: FilterBar
        text: str

    @dataclass
    class Closed(Message):
        bar: FilterBar

    def __init__(self, placeholder: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        yield Static("/", classes="filter-prompt")
        yield Input(placeholder=self.placeholder, classes="filter-input")
        yield Static("", classes="filter-error")

    @property
    def text(self) -> str:
        return self.query_one(Input).value

    def open(self) -> None:
        self.display = True
        self.query_one(Input).focus()

    def action_close(self) -> None:
        self.display = False
        self.post_message(self.Closed(self))

    def watch_error(self, error: str) -> None:
        self.query_one(".filter-error", Static).update(Text(error))  # it quotes what was typed

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Changed(self, event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_close()
