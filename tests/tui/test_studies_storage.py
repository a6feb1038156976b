"""The Studies view on any Optuna study: storages opened with `tui --storage` (and `o`), studies plain
Optuna made (tests/optuna_studies.py), every new tab driven with Pilot and checked against Optuna's
own numbers, a study another process writes while the view shows it, and snapshots of each new tab
at 120x40 and 80x24 (look at the SVGs in __snapshots__ before accepting them)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import optuna
import pytest
from textual.widgets import TabbedContent

from tests import optuna_studies
from tests.tui.conftest import LARGE, SMALL, loaded, screen_is, show
from trialdeck.engine.tuning import storages
from trialdeck.engine.workspace import Workspace
from trialdeck.tui.app import make_app
from trialdeck.tui.probes import FixedProbe
from trialdeck.tui.testing import fixed_clock, screen_text, wait_for
from trialdeck.tui.widgets.study_plots import FRONT, FrontTable, ImportancePane

SEP = "\x1f"


def storage_app(ws: Workspace, *wheres: str):
    return make_app(ws, start_engine=False, clock=fixed_clock, probe=FixedProbe(), interval=0.05, cursor_blink=False,
                    storages=[storages.parse(w) for w in wheres])


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    """Studies plain Optuna wrote; shared by the tests of this module, which only read them."""
    where = f"sqlite:///{tmp_path_factory.mktemp('db') / 'studies.sqlite3'}"
    optuna_studies.build(where)
    optuna_studies.fixed(where)
    return where


async def open_study(pilot, where: str, name: str, n: int) -> None:
    await loaded(pilot)
    await show(pilot, "4", "StudiesScreen")
    screen = pilot.app.screen
    key = f"{name}{SEP}{storages.parse(where)}"
    await wait_for(pilot, lambda: key in screen.query_one("#study-table").keys, what=f"{name} listed", timeout=15)
    screen.study = key
    await wait_for(pilot, lambda: len(screen.trials) == n, what=f"{n} trials", timeout=15)


def tab(pilot, name: str) -> None:
    pilot.app.screen.query_one(TabbedContent).active = name


async def test_every_new_tab_on_a_foreign_two_objective_study_gives_optunas_numbers(ws, db):
    study = optuna.load_study(study_name="two", storage=db)
    app = storage_app(ws, db)
    async with app.run_test(size=LARGE) as pilot:
        await open_study(pilot, db, "two", len(study.trials))
        screen = app.screen
        listed = {k.split(SEP)[0] for k in screen.query_one("#study-table").keys if SEP in k}
        assert listed == {"single", "two", "three", "size-vs-accuracy"}
        text = screen_text(app)
        assert "not made by trialdeck" in text and "(studies.sqlite3)" in text
        front = sorted(t.number for t in study.best_trials)

        tab(pilot, "tab-pareto")
        table = screen.query_one(FrontTable)
        await wait_for(pilot, lambda: sorted(int(k) for k in table.keys) == front, what="the front's trials")
        table.focus()
        await pilot.press("down")
        await wait_for(pilot, lambda: f"#{table.current_key}: accuracy" in screen_text(app), what="the cursor named")
        marked = [s for s in screen.query_one("#pareto-plot").series if s.label == "cursor"]
        cursor = study.trials[int(table.current_key)]
        assert marked and (marked[0].xs[0], marked[0].ys[0]) == tuple(cursor.values)

        tab(pilot, "tab-hv")
        plot = screen.query_one("#hv-plot")
        await wait_for(pilot, lambda: bool(plot.series), what="the hypervolume")
        from optuna._hypervolume import compute_hypervolume

        # Optuna's hypervolume of every trial, against the reference point the view names.
        loss = np.array([[-t.values[0], t.values[1]] for t in study.trials])
        ref = _reference(loss)
        assert plot.series[0].ys[-1] == pytest.approx(compute_hypervolume(loss, ref), rel=1e-9)
        assert f"accuracy {-ref[0]:.4g}" in screen_text(app)

        tab(pilot, "tab-edf")
        edf = screen.query_one("#edf-plot")
        await wait_for(pilot, lambda: bool(edf.series), what="the EDF")
        values = sorted(t.values[0] for t in study.trials)
        assert edf.series[0].xs[::2] == tuple(values) and edf.series[0].ys[-1] == 1.0

        tab(pilot, "tab-parallel")
        parallel = screen.query_one("#parallel-plot")
        await wait_for(pilot, lambda: bool(parallel.series), what="parallel coordinates")
        assert parallel.xticks[1] == ("width", "lr", "accuracy")
        assert sum(len(s.xs) for s in parallel.series) == 4 * len(study.trials)

        tab(pilot, "tab-importance")
        pane = screen.query_one(ImportancePane)
        await wait_for(pilot, lambda: pane.result is not None and pane.result[0].objective == 0, what="importances",
                       timeout=20)
        expected = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target=lambda t: -t.values[0])
        assert pane.result[1] == {k: round(v, 6) for k, v in expected.items()}
        pane.query_one("#importance-objective").value = FRONT
        await wait_for(pilot, lambda: pane.result[0].objective == FRONT, what="importances for the front", timeout=20)
        expected = optuna.importance.get_param_importances(study)
        assert pane.result[1] == {k: round(v, 6) for k, v in expected.items()}


def _reference(loss: np.ndarray) -> np.ndarray:
    worst, best = loss.max(axis=0), loss.min(axis=0)
    return worst + 0.1 * (worst - best)


async def test_m_picks_the_objective_and_the_trial_table_has_one_column_each(ws, db):
    app = storage_app(ws, db)
    async with app.run_test(size=LARGE) as pilot:
        await open_study(pilot, db, "three", 30)
        screen = app.screen
        assert [c[1] for c in screen.query_one("#trial-table")._spec[2:5]] == ["values_0", "values_1", "values_2"]
        screen.query_one("#trial-table").focus()
        await pilot.press("m")
        await wait_for(pilot, lambda: screen.objective == 1, what="the second objective")
        assert screen.query_one("#plot-history").title == "optimisation history of values_1"
        await pilot.press("slash", *"values_2>0.5", "enter")
        study = optuna.load_study(study_name="three", storage=db)
        wanted = sum(1 for t in study.trials if t.values[2] > 0.5)
        await wait_for(pilot, lambda: str(screen.query_one("#trial-caption").render()).startswith(f"{wanted} of 30"),
                       what="the filter by an objective")


async def test_a_study_another_process_writes_shows_its_new_trials(ws, tmp_path):
    journal = str(tmp_path / "live.journal")
    optuna_studies.two(optuna_studies.storage_of(journal), name="live", n=3)
    app = storage_app(ws, journal)
    async with app.run_test(size=LARGE) as pilot:
        await open_study(pilot, journal, "live", 3)
        screen = app.screen
        writer = subprocess.Popen([sys.executable, optuna_studies.__file__, journal, "live", "4"])
        try:
            await wait_for(pilot, lambda: len(screen.trials) >= 5, what="trials written meanwhile", timeout=30)
        finally:
            writer.wait(timeout=60)
        await wait_for(pilot, lambda: len(screen.trials) == 7, what="all seven", timeout=15)


async def test_o_opens_a_storage_and_a_bad_one_is_said(ws, tmp_path):
    journal = tmp_path / "more.journal"
    optuna_studies.three(optuna_studies.storage_of(str(journal)))
    app = storage_app(ws)
    async with app.run_test(size=LARGE) as pilot:
        await loaded(pilot)
        await show(pilot, "4", "StudiesScreen")
        screen = app.screen
        await pilot.press("o")
        await wait_for(pilot, lambda: screen_is(app, "StorageDialog"), what="the dialog")
        await pilot.press(*str(tmp_path / "missing.journal"), "enter")
        await wait_for(pilot, lambda: any("no such file" in n.message for n in app._notifications), what="the reason")
        await pilot.press("o")
        await wait_for(pilot, lambda: screen_is(app, "StorageDialog"), what="the dialog")
        await pilot.press(*str(journal), "enter")
        await wait_for(pilot, lambda: any(k.startswith(f"three{SEP}") for k in screen.query_one("#study-table").keys),
                       what="the opened storage's study", timeout=15)
        assert app.ctx.storages == [f"journal:{journal}"]


# ----------------------------------------------------------------------------- snapshots


@pytest.fixture(scope="module")
def fixed_db(tmp_path_factory) -> str:
    where = f"sqlite:///{tmp_path_factory.mktemp('fixed') / 'sweep.sqlite3'}"
    optuna_studies.fixed(where)
    return where


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
@pytest.mark.parametrize("name", ["tab-trials", "tab-pareto", "tab-hv", "tab-parallel", "tab-edf", "tab-importance"])
def test_snapshot(ws, fixed_db, snap_compare, size, name):
    app = storage_app(ws, fixed_db)

    async def ready(pilot):
        await open_study(pilot, fixed_db, "size-vs-accuracy", 60)
        tab(pilot, name)
        screen = pilot.app.screen
        if name == "tab-pareto":
            await wait_for(pilot, lambda: len(screen.query_one(FrontTable).keys) > 0, what="the front")
        if name == "tab-importance":
            pane = screen.query_one(ImportancePane)
            await wait_for(pilot, lambda: pane.result is not None, what="importances", timeout=20)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=ready)
