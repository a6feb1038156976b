"""A new user's second day in the TUI (issue 28): the run view's header names the Dask worker a run
trained on; a script run's view shows only the plots a script can fill (no learning-rate plot it
never reports); and nothing is drawn between the event pane and the engine line, in cluster mode or
not, whatever the width of an event."""

from __future__ import annotations

import pytest

from tests.tui.conftest import SMALL, loaded, new_app, screen_is
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.types import RunState
from trialdeck.tui.app import make_app
from trialdeck.tui.messages import OpenRun
from trialdeck.tui.probes import EngineSample, FixedProbe, cluster_text
from trialdeck.tui.testing import NOW, T0, _new_run, fixed_clock, screen_text, wait_for


def finished(ws, preset: str, history: list[dict], sets: list[str] | None = None, **placed) -> str:
    """A completed run of `preset` with `history`, placed as `placed` says (slot, device, host)."""
    store = Store(ws)
    run = _new_run(store, ws, preset, sets)
    store.transition(run["id"], RunState.RUNNING, **{"slot": "cpu.0", "device": "cpu", **placed})
    store.transition(run["id"], RunState.COMPLETED, history=history)
    store.update_run(run["id"], started_at=T0, finished_at=T0 + 10)
    return run["id"]


async def open_run(pilot, run_id: str):
    await loaded(pilot)
    pilot.app.post_message(OpenRun(run_id))
    await wait_for(pilot, lambda: screen_is(pilot.app, "RunDetailScreen") and pilot.app.screen.record is not None,
                   what=f"{run_id}'s view")
    return pilot.app.screen


async def test_the_run_views_header_names_the_dask_worker_and_its_device(ws, utc):
    history = [{"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "val_acc": 0.7, "lr": 0.1}]
    remote = finished(ws, "seed/step-decay", history, slot="box1-cpu0", host="box1-cpu0")
    local = finished(ws, "seed/step-decay", history)
    async with new_app(ws).run_test(size=SMALL) as pilot:
        await open_run(pilot, remote)
        assert f"{remote} completed  seed/step-decay  on box1-cpu0 (cpu)  epoch 1" in screen_text(pilot.app)
        await pilot.press("escape")
        await open_run(pilot, local)
        assert f"{local} completed  seed/step-decay  on cpu.0  epoch 1" in screen_text(pilot.app)


@pytest.mark.parametrize(("reported", "curves", "accuracy"), [
    pytest.param({"train_loss": 0.9, "val_loss": 0.8}, {"train", "val"}, False, id="losses"),
    pytest.param({"val_loss": 0.8, "val_acc": 0.7}, {"val"}, True, id="loss-and-accuracy"),
    pytest.param({"accuracy": 0.7, "loss": 0.8}, {"accuracy", "loss"}, False, id="its-own-names"),
])
async def test_a_script_runs_view_shows_only_the_plots_its_script_reports(ws, utc, reported, curves, accuracy):
    history = [{"epoch": e, **{k: v / e for k, v in reported.items()}} for e in (1, 2, 3)]
    run_id = finished(ws, "examples/script", history)
    async with new_app(ws).run_test(size=SMALL) as pilot:
        view = await open_run(pilot, run_id)
        await pilot.pause()
        text = screen_text(pilot.app)
        assert "learning rate" not in text and not view.query_one("#plot-lr").display
        assert "no data yet" not in text
        loss, acc, grid = view.query_one("#plot-loss"), view.query_one("#plot-acc"), view.query_one("#run-curves")
        assert {s.label for s in loss.series if s.xs} == curves
        assert acc.display == accuracy
        if accuracy:  # the one plot below the loss takes the whole width
            assert acc.size.width == loss.size.width
        else:  # the loss (or the script's own numbers) takes the whole grid
            assert loss.size.height == grid.size.height


async def test_a_built_in_run_keeps_its_three_plots(ws, utc):
    history = [{"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "val_acc": 0.7, "lr": 0.1}]
    run_id = finished(ws, "seed/step-decay", history)
    async with new_app(ws).run_test(size=SMALL) as pilot:
        view = await open_run(pilot, run_id)
        assert all(view.query_one(f"#plot-{n}").display for n in ("loss", "acc", "lr"))
        assert "learning rate" in screen_text(pilot.app)


@pytest.mark.parametrize("cluster", [True, False], ids=["cluster", "local"])
async def test_nothing_is_drawn_between_the_event_pane_and_the_engine_line(ws, utc, cluster):
    from trialdeck.tui.testing import seed_workspace

    seed_workspace(ws, study=False)  # its early stop's event line is wider than 80 columns
    words = cluster_text({"url": "tcp://10.0.0.5:8786", "state": "connected",
                          "workers": [{"name": "box1-cpu0", "runs": ["r5"]}, {"name": "box2-gpu0", "runs": []}]})
    engine = EngineSample(True, 4242, NOW - 62, () if cluster else ("cpu.0",), words if cluster else None)
    app = make_app(ws, start_engine=False, clock=fixed_clock, probe=FixedProbe(engine), interval=0.05,
                   cursor_blink=False)
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: app.catalog is not None and app.status is not None
                       and "early_stopped" in screen_text(app), what="the dashboard")
        lines = screen_text(app).splitlines()
        engine_line = next(i for i, line in enumerate(lines) if line.startswith(" engine pid 4242"))
        above = lines[engine_line - 1]
        assert not set(above) & set("▏▎▍▌▋▊▉█"), f"a scroll bar above the engine line: {above!r}"
        shown = " ".join(" ".join(lines[:engine_line]).split())
        assert "did not improve by more than 0 for 5 epochs; best" in shown  # the long event is shown whole
