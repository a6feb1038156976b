"""Marking runs (and a study's trials), the compare view and its toggles, tags in the runs table,
and the first screen of an empty workspace, through Pilot on seeded workspaces (no engine)."""

from __future__ import annotations

from tests.tui.conftest import SIZE, SMALL, loaded, new_app, screen_is, show
from trialdeck.engine.catalogue import compare
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.presets import resolve
from trialdeck.tui.testing import screen_text, wait_for


async def mark(pilot, table, *keys: str) -> None:
    """Put the cursor on each row and press space (which marks it and moves down)."""
    table.focus()
    for key in keys:
        assert table.select_key(key)
        await pilot.pause()
        await pilot.press("space")


async def open_compare(pilot) -> object:
    await pilot.press("C")
    await wait_for(pilot, lambda: screen_is(pilot.app, "CompareScreen") and pilot.app.screen.loaded, what="the compare view")
    return pilot.app.screen


def status_line(app) -> str:
    return str(app.screen.query_one("#status-line").render())


async def test_space_marks_runs_and_compare_needs_two(seeded):
    ws, ids = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: tbl.row_count == 10, what="rows")
        assert app.screen.check_action("compare", ()) is None  # greyed: nothing marked
        await mark(pilot, tbl, "r2")
        assert tbl.marked == ("r2",) and tbl.current_key == "r1"  # marked, and the cursor moved on
        assert app.screen.check_action("compare", ()) is None
        assert "1 marked" in status_line(app)
        await pilot.press("space")  # r1, where the cursor went
        assert tbl.marked == ("r2", "r1")
        assert "2 marked (C compares)" in status_line(app)
        assert "●r2" in screen_text(app) and "●r1" in screen_text(app)
        await mark(pilot, tbl, "r2")  # again: unmarked
        assert tbl.marked == ("r1",)
        assert app.screen.check_action("compare", ()) is None
        await pilot.press("C")  # one run: nothing to compare, nothing opens
        await pilot.pause()
        assert screen_is(app, "RunsScreen")


async def test_the_compare_view_overlays_curves_and_lists_differences(seeded):
    ws, ids = seeded
    app = new_app(ws)
    store = Store(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: tbl.row_count == 10, what="rows")
        await mark(pilot, tbl, ids["early_stopped"], ids["completed"], ids["failed"])
        screen = await open_compare(pilot)
        runs = [store.get_run(r) for r in (ids["early_stopped"], ids["completed"], ids["failed"])]

        assert [r["id"] for r in screen.records] == ["r2", "r1", "r3"]  # the order they were marked
        plot = screen.query_one("#compare-plot")
        assert [s.label for s in plot.series] == ["r2", "r1", "r3"]
        assert len({s.color for s in plot.series}) == 3  # one colour per run
        for s, r in zip(plot.series, runs):
            assert list(s.ys) == [h["val_loss"] for h in r["history"]]
        text = screen_text(app)
        assert "● r2" in text and "● r1" in text and "● r3" in text  # the legend
        assert "comparing 3 runs" in text and "metric val_loss" in text

        summary = screen.query_one("#compare-summary")
        assert summary.keys == ["r2", "r1", "r3"]
        best_r1 = min(h["val_loss"] for h in runs[1]["history"])
        assert summary.cells("r1")[:4] == ("● r1", "seed/step-decay", "completed", f"{best_r1:.4g}")

        differs = screen.query_one("#compare-differs")
        assert differs.keys == list(compare.differs(runs))
        assert differs.cells("optimizer.name") == ("optimizer.name", "adam", "sgd", "adam")
        assert "data.dataset" not in differs.keys  # equal everywhere: left out

        await pilot.press("enter")  # the summary's highlighted run (the first): its detail
        await wait_for(pilot, lambda: screen_is(app, "RunDetailScreen") and app.screen.run_id == "r2", what="r2's detail")
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen_is(app, "CompareScreen"), what="back to the comparison")


async def test_metric_ema_and_log_toggles_redraw_the_plot(seeded):
    ws, ids = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: tbl.row_count == 10, what="rows")
        await mark(pilot, tbl, "r1", "r2")
        screen = await open_compare(pilot)
        plot = screen.query_one("#compare-plot")
        raw = {s.label: s.ys for s in plot.series}

        await pilot.press("e")
        assert screen.smooth and "(EMA 0.6)" in plot.title and "EMA on" in screen_text(app)
        for s in plot.series:
            assert list(s.ys) == compare.ema(list(raw[s.label]), 0.6)
            assert s.ys[0] == raw[s.label][0] and s.ys != raw[s.label]
        await pilot.press("e")
        assert {s.label: s.ys for s in plot.series} == raw

        await pilot.press("l")
        assert screen.log_y and plot.log_y and "log y on" in screen_text(app)
        await pilot.press("l")
        assert not plot.log_y

        seen = [screen.metric]
        for _ in range(3):
            await pilot.press("m")
            seen.append(screen.metric)
        assert seen == ["val_loss", "train_loss", "val_acc", "lr"]
        assert plot.title == "lr" and "metric lr" in screen_text(app)
        summary = screen.query_one("#compare-summary")
        assert summary.cells("r1")[3] == f"{min(h['lr'] for h in Store(ws).get_run('r1')['history']):.4g}"
        record = Store(ws).get_run("r1")
        assert list(plot.series[0].ys) == [h["lr"] for h in record["history"]]
        await pilot.press("m")
        assert screen.metric == "val_loss"

        await pilot.press("v")
        await wait_for(pilot, lambda: "optimizer.name" in screen_text(app), what="the differences tab")
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen_is(app, "RunsScreen"), what="back")
        assert app.screen.query_one("#runs-table").marked == ("r1", "r2")  # marks stay for another look


async def test_the_compare_view_follows_a_run_that_is_still_training(seeded):
    ws, ids = seeded
    app = new_app(ws)
    store = Store(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: tbl.row_count == 10, what="rows")
        await mark(pilot, tbl, ids["running"], ids["completed"])
        screen = await open_compare(pilot)
        before = len(screen.records[0]["history"])
        hist = store.get_run(ids["running"])["history"]
        store.update_run(ids["running"], history=[*hist, {**hist[-1], "epoch": hist[-1]["epoch"] + 1, "val_loss": 0.05}])
        await wait_for(pilot, lambda: len(screen.query_one("#compare-plot").series[0].xs) == before + 1,
                       what="the new epoch on the plot")


async def test_tags_show_in_the_table_and_the_filter_finds_them(seeded):
    ws, ids = seeded
    Store(ws).tag_run(ids["failed"], add=["oom", "retry-me"])
    Store(ws).set_note(ids["completed"], "the baseline from the article")
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: tbl.row_count == 10, what="rows")
        assert "tags" in tbl.shown_columns
        assert tbl.cells(ids["failed"])[-1] == "#oom #retry-me"
        assert "#oom #retry-me" in screen_text(app)
        await pilot.press("slash", *"#oom")
        await wait_for(pilot, lambda: tbl.keys == [ids["failed"]], what="the tagged run alone")
        await pilot.press("ctrl+u", *"baseline")
        await wait_for(pilot, lambda: tbl.keys == [ids["completed"]], what="the run whose note matches")


async def test_a_studys_trials_are_marked_and_compared(seeded):
    ws, ids = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await show(pilot, "4", "StudiesScreen")
        trials = app.screen.query_one("#trial-table")
        await wait_for(pilot, lambda: trials.row_count == 7, what="trials")
        assert app.screen.check_action("mark", ()) is False  # the study list has the focus: no marking there
        await mark(pilot, trials, "0", "2")
        assert trials.marked == ("0", "2")
        await mark(pilot, trials, "4")  # a trial with no run on this box: nothing to compare, not marked
        assert trials.marked == ("0", "2")
        assert "2 marked, C compares" in screen_text(app)
        screen = await open_compare(pilot)
        assert [r["id"] for r in screen.records] == [ids["trial0"], ids["trial2"]]
        assert "model.activation" in screen.query_one("#compare-differs").keys


async def test_footers_fit_80_columns_while_marking_and_comparing(seeded):
    ws, ids = seeded
    app = new_app(ws)
    async with app.run_test(size=SMALL) as pilot:
        await loaded(pilot)
        tbl = app.screen.query_one("#runs-table")
        await wait_for(pilot, lambda: tbl.row_count == 10, what="rows")
        await mark(pilot, tbl, "r1", "r2")
        for _ in range(2):
            text = screen_text(app).splitlines()[-1]
            assert "? Help" in text and "q Quit" in text, text
            if screen_is(app, "RunsScreen"):
                assert "␣ Mark" in text
                await open_compare(pilot)
            else:
                assert "m Metric" in text and "e EMA" in text and "l Log y" in text
        await pilot.press("escape")
        await show(pilot, "4", "StudiesScreen")
        trials = app.screen.query_one("#trial-table")
        await wait_for(pilot, lambda: trials.row_count == 7, what="trials")
        assert "␣ marks trials to compare" in screen_text(app)  # the caption: the footer has no room
        await mark(pilot, trials, "0", "1")
        assert "2 marked, C compares" in screen_text(app)


async def test_an_empty_workspace_says_how_to_queue_a_first_run(ws, utc):
    app = new_app(ws)
    async with app.run_test(size=SMALL) as pilot:
        await loaded(pilot)
        hint = app.screen.query_one("#runs-hint")
        await wait_for(pilot, lambda: hint.display, what="the hint")
        lines = [line.strip() for line in str(hint.render()).splitlines() if line.strip()]
        assert lines == ["No runs yet. Press 2 for the presets, then r to queue the one highlighted.",
                         "Runs train in a background engine that goes on after this terminal closes."]
        assert all(len(line) <= 76 for line in lines)  # two whole lines at 80 columns
        spec = resolve("seed/step-decay", [])
        Store(ws).create_run(preset=spec.preset, config=spec.config(), config_hash=spec.content_hash)
        await wait_for(pilot, lambda: not hint.display, what="the hint to go once a run exists")
        await show(pilot, "4", "StudiesScreen")
        said = str(app.screen.query_one("#study-best").render())
        assert "no studies yet" in said and "starts one" in said and "trialdeck tune" in said  # how to start a study
