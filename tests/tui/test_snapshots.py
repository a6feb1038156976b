"""SVG snapshots of the main screens at 80x24 and 120x40 (pytest-textual-snapshot).

Deterministic: a seeded workspace with fixed timestamps (trialdeck.tui.testing), the app's
clock fixed, hardware readings fixed (FixedProbe), TZ=UTC, the workspace
isolated through TRIALDECK_HOME, the cursor not blinking. Each screenshot is
taken once the screen shows its data (`run_before` waits for it).

Update with `pytest tests/tui/test_snapshots.py --snapshot-update`, and look at
the SVGs (tests/tui/__snapshots__/test_snapshots/) before committing them.
"""

from __future__ import annotations

import pytest

from tests.tui.conftest import LARGE, SMALL, loaded, new_app, screen_is, show
from trialdeck.engine.workspace import Workspace
from trialdeck.tui.testing import seed_workspace, wait_for


@pytest.fixture
def ws(tmp_path, utc):
    """The seeded workspace every snapshot shows (tui.testing.seed_workspace), in UTC."""
    home = Workspace(tmp_path / "home").ensure()
    seed_workspace(home)
    return home


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_runs_dashboard(ws, snap_compare, size):
    app = new_app(ws)

    async def ready(pilot):
        await loaded(pilot, everything=True)
        await wait_for(pilot, lambda: pilot.app.screen.query_one("#runs-table").row_count == 10, what="rows")

    assert snap_compare(app, terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_presets_config(ws, snap_compare, size):
    app = new_app(ws)

    async def ready(pilot):
        await loaded(pilot, everything=True)
        await show(pilot, "2", "PresetsScreen")
        screen = pilot.app.screen
        tree = screen.query_one("#presets")
        tree.move_cursor(tree.leaf("seed/step-decay"))
        await wait_for(pilot, lambda: screen.highlighted == "seed/step-decay", what="step-decay")

    assert snap_compare(app, terminal_size=size, run_before=ready)


def test_presets_composer_with_an_invalid_value(ws, snap_compare):
    app = new_app(ws)

    async def ready(pilot):
        await loaded(pilot, everything=True)
        await show(pilot, "2", "PresetsScreen")
        screen = pilot.app.screen
        await pilot.press("v")
        blocks = screen.query_one("#compose-blocks")
        values = [blocks.get_option_at_index(i).value for i in range(blocks.option_count)]
        for name in ("reg/l2", "sched/step-decay"):
            blocks.select(name)
        blocks.highlighted = values.index("sched/step-decay")
        screen.query_one("#key-0").focus()
        await pilot.press(*"optimizer.name", "tab", *"lbfgs")
        await wait_for(pilot, lambda: "not allowed" in screen.query_one("#compose-overrides").message, what="the error")

    assert snap_compare(app, terminal_size=LARGE, run_before=ready)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_queue(ws, snap_compare, size):
    app = new_app(ws)

    async def ready(pilot):
        await loaded(pilot, everything=True)
        await show(pilot, "3", "QueueScreen")
        await wait_for(pilot, lambda: pilot.app.screen.query_one("#queue-table").row_count == 3, what="rows")

    assert snap_compare(app, terminal_size=size, run_before=ready)


def test_queue_dialog(ws, snap_compare):
    app = new_app(ws)

    async def ready(pilot):
        await loaded(pilot, everything=True)
        await show(pilot, "2", "PresetsScreen")
        screen = pilot.app.screen
        tree = screen.query_one("#presets")
        tree.move_cursor(tree.leaf("seed/step-decay"))
        await wait_for(pilot, lambda: screen.highlighted == "seed/step-decay", what="step-decay")
        await show(pilot, "r", "QueueDialog")
        await pilot.press("tab", "tab", *"train.epochs", "tab", *"400")
        await wait_for(pilot, lambda: "400 epochs" in pilot.app.screen.query_one("#queue-overrides").message,
                       what="the summary")

    assert snap_compare(app, terminal_size=SMALL, run_before=ready)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_studies(ws, snap_compare, size):
    app = new_app(ws)

    async def ready(pilot):
        await loaded(pilot, everything=True)
        await show(pilot, "4", "StudiesScreen")
        await wait_for(pilot, lambda: pilot.app.screen.query_one("#trial-table").row_count == 7, what="trials")

    assert snap_compare(app, terminal_size=size, run_before=ready)


def test_study_history_plot(ws, snap_compare):
    app = new_app(ws)

    async def ready(pilot):
        await loaded(pilot, everything=True)
        await show(pilot, "4", "StudiesScreen")
        await wait_for(pilot, lambda: pilot.app.screen.query_one("#trial-table").row_count == 7, what="trials")
        await pilot.press("v")

    assert snap_compare(app, terminal_size=LARGE, run_before=ready)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_run_detail(ws, snap_compare, size):
    app = new_app(ws)

    async def ready(pilot):
        await loaded(pilot, everything=True)
        table = pilot.app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 10, what="rows")
        table.select_key("r1")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_is(pilot.app, "RunDetailScreen") and pilot.app.screen.record is not None,
                       what="the run")

    assert snap_compare(app, terminal_size=size, run_before=ready)


def test_help(ws, snap_compare):
    app = new_app(ws)

    async def ready(pilot):
        await loaded(pilot, everything=True)
        await show(pilot, "question_mark", "HelpScreen")

    assert snap_compare(app, terminal_size=SMALL, run_before=ready)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_compare(ws, snap_compare, size):
    app = new_app(ws)

    async def ready(pilot):
        await loaded(pilot, everything=True)
        table = pilot.app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: table.row_count == 10, what="rows")
        for run_id in ("r1", "r2", "r3"):
            table.select_key(run_id)
            await pilot.press("space")
        await pilot.press("C")
        await wait_for(pilot, lambda: screen_is(pilot.app, "CompareScreen") and pilot.app.screen.loaded,
                       what="the compare view")

    assert snap_compare(app, terminal_size=size, run_before=ready)
