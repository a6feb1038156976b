"""The `?` screen: every key of the view underneath, what it does, and whether it applies now."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from trialdeck.tui.keymap import KEYS_FILE, bind


class HelpScreen(ModalScreen[None]):
    """Keys of the screen below (after keys.toml), greyed when unavailable there."""

    BINDINGS = [bind("back", "dismiss", description="Close"), bind("help", "dismiss", description="Close")]

    def __init__(self, rows: list[tuple[str, str, bool]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, description, enabled in self.rows:
            table.add_row(Text(key), Text(description, style="" if enabled else "dim"))  # "[" is a key here
        table.add_row("ctrl+p", "Command palette: every action above, by name")
        with VerticalScroll(id="help-box"):
            yield Static(Text("Keys", style="bold"), id="help-title")
            yield Static(table)
            yield Static(Text(f"Greyed: not available here now. Change keys in <workspace>/{KEYS_FILE}, "
                              f'e.g. [keys] quit = "x". escape or ? closes.', style="dim"), id="help-foot")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
