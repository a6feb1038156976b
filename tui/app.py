"""The Textual app. `make_app()` is the one factory the CLI and the tests call.

This first screen is the preset browser: presets by group on the left, the
selected preset's fully resolved configuration on the right. It reads the same
preset roots as `trialdeck presets list|show`.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, Header, Static, Tree

from engine.errors import TrialdeckError
from engine.workspace import Workspace


class PresetTree(Tree[str]):
    """Presets grouped by folder; the leaf data is the preset name."""

    def __init__(self, presets: list[tuple[str, Path]], **kwargs) -> None:
        super().__init__("presets", **kwargs)
        self.show_root = False
        groups: dict[str, list[str]] = {}
        for name, _ in presets:
            group, _, _rest = name.rpartition("/")
            groups.setdefault(group or "(top)", []).append(name)
        for group in sorted(groups, key=lambda g: (g != "seed", g)):
            node = self.root.add(group, expand=group == "seed")
            for name in groups[group]:
                node.add_leaf(name.rpartition("/")[2], data=name)


class TrialdeckApp(App[None]):
    TITLE = "trialdeck"
    CSS_PATH = "trialdeck.tcss"
    BINDINGS = [
        Binding("q", "quit", "Quit", id="quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, id="quit2"),
        Binding("question_mark", "help", "Help", id="help"),
    ]

    def __init__(self, ws: Workspace) -> None:
        super().__init__()
        self.ws = ws
        from engine.presets import list_presets, preset_roots

        self.roots = preset_roots(ws.presets_dir)
        self.presets = list_presets(self.roots)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            yield PresetTree(self.presets, id="presets")
            with VerticalScroll(id="detail"):
                yield Static("Select a preset to see its resolved configuration.", id="config")
        yield Footer()

    def on_mount(self) -> None:
        tree = self.query_one(PresetTree)
        tree.focus()
        first = next((n for n in tree.root.children if n.is_expanded), None)
        if first and first.children:
            tree.move_cursor(first.children[0])
            self._show(first.children[0].data)

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[str]) -> None:
        if event.node.data:
            self._show(event.node.data)

    def _show(self, name: str) -> None:
        from engine.presets import resolve
        from engine.presets.authoring import config_toml

        config = self.query_one("#config", Static)
        try:
            spec = resolve(name, [], self.roots)
        except TrialdeckError as exc:
            config.update(Text.assemble(("invalid preset\n", "bold red"), exc.message))
            return
        body = config_toml(spec.config())
        config.update(Text.assemble((name, "bold"), f"  hash {spec.content_hash}\n{spec.description}\n\n", body))

    def action_help(self) -> None:
        self.notify("arrows: browse presets  enter: expand group  q / ctrl+q: quit", title="keys", timeout=6)


def make_app(ws: Workspace | None = None) -> TrialdeckApp:
    return TrialdeckApp(ws or Workspace.resolve().ensure())
