"""Rows of `key = value` inputs for preset overrides, as `--set key=value` takes them.

Reports the non-empty rows as `--set` items; the parent validates them and
sets `invalid_row` and `message` (the one-line error naming what is allowed),
which are shown next to the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.suggester import Suggester, SuggestFromList
from textual.widgets import Input, Static

from trialdeck.tui.composition import dotted_keys, value_choices


class ValueSuggester(Suggester):
    """Completes a value with the options its row's key takes (`model.kind` = "torchvision",
    `model.arch` = "resnet18"...): `key` reads that row's key input when asked."""

    def __init__(self, key: Callable[[], str]) -> None:
        super().__init__(use_cache=False, case_sensitive=False)
        self.key = key

    async def get_suggestion(self, value: str) -> str | None:
        for choice in value_choices(self.key()):
            if choice.casefold().startswith(value) or choice.casefold().strip('"').startswith(value):
                return choice
        return None


class OverrideEditor(Vertical):
    """`rows` pairs of inputs: a dotted key (with suggestions) and a TOML value."""

    invalid_row: reactive[int | None] = reactive(None, init=False)
    """Index among the reported items of the override that is invalid, if one is."""
    message: reactive[str] = reactive("", init=False)
    """The validation result: an error line, or a summary of what will run."""
    valid: reactive[bool] = reactive(True, init=False)
    """Whether the whole composition validates."""

    @dataclass
    class Changed(Message):
        editor: OverrideEditor
        items: tuple[str, ...]
        """"key=value" for each row with a key, top to bottom."""

    @dataclass
    class Submitted(Message):
        editor: OverrideEditor

    def __init__(self, rows: int = 3, initial: Sequence[tuple[str, str]] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows = max(rows, len(initial))
        self.initial = list(initial)
        self._suggester = SuggestFromList(dotted_keys(), case_sensitive=False)
        self._row_of_item: list[int] = []

    def compose(self) -> ComposeResult:
        for i in range(self.rows):
            key, value = self.initial[i] if i < len(self.initial) else ("", "")
            with Horizontal(classes="override-row"):
                key_input = Input(key, placeholder="key, e.g. train.epochs", suggester=self._suggester,
                                  classes="override-key", id=f"key-{i}")
                yield key_input
                yield Static("=", classes="override-eq")
                # The row's own key widget, not a query: a suggestion may be asked after the editor is gone.
                def key_of(row_key: Input = key_input) -> str:
                    return row_key.value

                yield Input(value, placeholder="value, e.g. 5", classes="override-value", id=f"value-{i}",
                            suggester=ValueSuggester(key_of))
        yield Static("", classes="override-message")

    def items(self) -> tuple[str, ...]:
        out, rows = [], []
        for i in range(self.rows):
            key = self.query_one(f"#key-{i}", Input).value.strip()
            value = self.query_one(f"#value-{i}", Input).value.strip()
            if key:
                out.append(f"{key}={value}")
                rows.append(i)
        self._row_of_item = rows
        return tuple(out)

    def on_mount(self) -> None:
        self.post_message(self.Changed(self, self.items()))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Changed(self, self.items()))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Submitted(self))

    def _mark(self) -> None:
        bad = None
        if self.invalid_row is not None and self.invalid_row < len(self._row_of_item):
            bad = self._row_of_item[self.invalid_row]
        for i in range(self.rows):
            self.query_one(f"#value-{i}", Input).set_class(i == bad, "-invalid")
            self.query_one(f"#key-{i}", Input).set_class(i == bad, "-invalid")
        line = self.query_one(".override-message", Static)
        line.update(Text(self.message))  # it may quote a value: literal, not markup
        line.set_class(not self.valid, "-error")

    def watch_invalid_row(self) -> None:
        self._mark()

    def watch_message(self) -> None:
        self._mark()

    def watch_valid(self) -> None:
        self._mark()
