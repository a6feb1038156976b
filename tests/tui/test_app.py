"""The Textual app through Pilot: it starts on the runs dashboard, `2` shows the preset
browser, which lists presets and shows a resolved config; `q` quits.

The other screens have their own tests (test_screens.py, test_logic.py,
test_snapshots.py, test_tmux.py). The workspace is a temp folder
(never ~/.trialdeck), and no test here starts an engine.
"""

from __future__ import annotations

import pytest
from textual.widgets import Static, Tree

from trialdeck.engine.workspace import Workspace
from trialdeck.tui.app import make_app
from trialdeck.tui.testing import wait_for

SIZE = (120, 40)


@pytest.fixture
def app(ws):
    return make_app(ws, start_engine=False)


async def presets_screen(pilot) -> None:
    """The preset browser is view 2."""
    await pilot.press("2")
    await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "PresetsScreen" and pilot.app.screen.is_mounted,
                   what="the presets screen")


def config_text(app) -> str:
    """The detail pane's text as displayed (markup applied), not as passed to update()."""
    visual = app.screen.query_one("#config", Static).render()
    return visual.plain if hasattr(visual, "plain") else str(visual)


def leaf(tree: Tree, name: str):
    return next(node for group in tree.root.children for node in group.children if node.data == name)


async def highlight(pilot, tree: Tree, name: str) -> None:
    """Walk the tree with the arrow keys, as a person would, until `name` is highlighted."""
    for _ in range(60):
        if tree.cursor_node is not None and tree.cursor_node.data == name:
            return
        await pilot.press("down")
    raise AssertionError(f"{name} never highlighted; stopped on {tree.cursor_node and tree.cursor_node.data}")


async def test_app_starts_on_the_runs_dashboard(app):
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.current_mode == "runs"
        assert type(app.screen).__name__ == "RunsScreen"
        assert app.focused is not None and app.focused.id == "runs-table"


async def test_the_preset_browser_starts_with_the_seed_group_expanded(app):
    async with app.run_test(size=SIZE) as pilot:
        await presets_screen(pilot)
        tree = app.screen.query_one(Tree)
        groups = {str(node.label): node for node in tree.root.children}
        assert "seed" in groups
        seed = groups["seed"]
        assert seed.is_expanded
        leaves = {node.data for node in seed.children}
        assert {"seed/step-decay", "seed/l1-l2", "seed/tpe-mnist"} <= leaves
        assert len(leaves) == 11
        assert app.focused is tree
        # The first seed preset is shown on start, so the right pane is never empty.
        assert tree.cursor_node is not None and tree.cursor_node.data in leaves
        assert tree.cursor_node.data in config_text(app)


async def test_highlighting_a_preset_shows_its_resolved_config(app):
    async with app.run_test(size=SIZE) as pilot:
        await presets_screen(pilot)
        tree = app.screen.query_one(Tree)
        tree.move_cursor(leaf(tree, "seed/step-decay"))
        await pilot.pause()
        assert tree.cursor_node.data == "seed/step-decay"
        text = config_text(app)
        assert "seed/step-decay" in text
        assert "epochs_drop" in text
        assert 'kind = "step"' in text
        assert 'name = "sgd"' in text  # resolved through extends, not only the file's own keys
        assert 'dataset = "digits"' in text


async def test_every_seed_preset_can_be_highlighted_with_the_arrow_keys(app):
    async with app.run_test(size=SIZE) as pilot:
        await presets_screen(pilot)
        tree = app.screen.query_one(Tree)
        seed = next(group for group in tree.root.children if str(group.label) == "seed")
        for node in seed.children:
            await highlight(pilot, tree, node.data)
            await pilot.pause()
            assert node.data in config_text(app)


async def test_an_invalid_workspace_preset_shows_its_error_line(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "home").ensure()
    (ws.presets_dir / "broken.toml").write_text('extends = ["base/digits-mlp"]\n[model]\nwidth = 3\n')
    app = make_app(ws, start_engine=False)
    async with app.run_test(size=SIZE) as pilot:
        await presets_screen(pilot)
        tree = app.screen.query_one(Tree)
        node = leaf(tree, "broken")
        node.parent.expand()
        await pilot.pause()
        tree.move_cursor(node)
        await pilot.pause()
        text = config_text(app)
        assert "invalid preset" in text
        assert "broken.toml: unknown key 'width' in [model]" in text


async def test_a_workspace_preset_appears_in_the_tree(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "home").ensure()
    (ws.presets_dir / "mine.toml").write_text('extends = ["seed/step-decay"]\n[train]\nepochs = 3\n')
    app = make_app(ws, start_engine=False)
    async with app.run_test(size=SIZE) as pilot:
        await presets_screen(pilot)
        tree = app.screen.query_one(Tree)
        leaves = [leaf.data for group in tree.root.children for leaf in group.children]
        assert "mine" in leaves


async def test_q_quits(app):
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running
    assert app.return_code in (0, None)
