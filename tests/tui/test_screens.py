"""Every screen through Pilot, on a seeded workspace (trialdeck.tui.testing): the main key paths.

No engine is started: the app is made with `start_engine=False`, so queueing
writes the store (asserted here) and cancelling a running run with no engine
alive marks it cancelled, as the CLI does. Clock and hardware readings are
fixed; the workspace is a temp folder.
"""

from __future__ import annotations

import json
import random

import pytest
from textual.widgets import Input, SelectionList, Static, TabbedContent

from tests.tui.conftest import SIZE, loaded, new_app, screen_name, show
from trialdeck.engine.catalogue import sealed_trials
from trialdeck.engine.catalogue.metrics import JsonlMetricsWriter
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.presets import preset_roots, resolve
from trialdeck.engine.runtime.runners.recorder import LOG_NAME, METRICS_NAME
from trialdeck.engine.types import RunState
from trialdeck.engine.workspace import Workspace
from trialdeck.tui.live import LogEntry
from trialdeck.tui.messages import EventsArrived, OpenRun
from trialdeck.tui.testing import NOW, screen_text, seed_study, wait_for


def table(app, selector: str):
    return app.screen.query_one(selector)


def row_keys(tbl) -> list[str]:
    return tbl.keys


def row_of(tbl, key: str) -> list[str]:
    return list(tbl.cells(key))


async def cursor_to(pilot, tbl, key: str) -> None:
    tbl.focus()
    assert tbl.select_key(key)
    await pilot.pause()
    assert tbl.current_key == key


def log_text(app) -> str:
    """The event pane's lines."""
    pane = app.screen.query_one("#event-log")
    return "\n".join(strip.text for strip in pane.lines)


def runs(ws: Workspace, state: str | None = None) -> list[dict]:
    return Store(ws).list_runs(state)


# ----------------------------------------------------------------------------- runs dashboard


async def test_dashboard_lists_every_run_newest_first_with_sparklines(seeded):
    ws, ids = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = table(app, "#runs-table")
        await wait_for(pilot, lambda: tbl.row_count == 10, what="ten rows")
        assert row_keys(tbl) == [f"r{n}" for n in range(10, 0, -1)]
        done = row_of(tbl, ids["completed"])
        assert done[:3] == ["r1", "completed", "seed/step-decay"]
        assert done[4] == "12/12" and done[-1] == "12s"
        assert set(done[3]) <= set("▁▂▃▄▅▆▇█") and len(done[3]) == 12  # one block per epoch
        running = row_of(tbl, ids["running"])
        assert running[1] == "running" and running[4] == "6/30" and running[8] == "cpu.0" and running[7] == ""
        assert done[7] == "12" and row_of(tbl, ids["early_stopped"])[7] == "4"  # the epoch whose weights it kept
        assert running[-1] == "10m00s"  # the injected clock, not the wall clock
        assert row_of(tbl, ids["queued"])[1] == "queued"
        text = screen_text(app)
        assert "1 running 2 queued" in text
        assert "r3     failed epoch 3: CUDA out of memory at epoch 3" in text
        assert "finished: seed/activations" in text


async def test_the_running_runs_sparkline_grows_as_its_metrics_file_does(seeded):
    ws, ids = seeded
    run_id = ids["running"]
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = table(app, "#runs-table")
        await wait_for(pilot, lambda: app.live.get(run_id) is not None, what="the stream followed")
        before = row_of(tbl, run_id)
        with JsonlMetricsWriter(ws.run_dir(run_id) / METRICS_NAME) as w:
            for e in (7, 8, 9):
                for s in (1, 2, 3, 4):
                    w.write({"t": NOW, "epoch": e, "step": s, "loss": 3.0 + e})  # a loss spike
                w.write({"t": NOW, "kind": "epoch", "epoch": e, "train_loss": 3.0 + e, "val_loss": 2.0,
                         "val_acc": 0.5, "lr": 0.1, "seconds": 1.0})
        await wait_for(pilot, lambda: row_of(tbl, run_id)[4] == "9/30", what="epoch 9 in the row")
        after = row_of(tbl, run_id)
        assert after[3] != before[3]
        assert after[3].endswith("█")  # the spike is the highest point now
        assert after[5] == "0.5000"


async def test_new_events_are_logged_and_toasted_once(seeded):
    ws, ids = seeded
    app = new_app(ws)
    toasts: list[str] = []
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        original = app.notify
        app.notify = lambda message, **kw: (toasts.append(message), original(message, **kw))  # type: ignore[method-assign]
        store = Store(ws)
        store.record_epoch_and_events(ids["running"], None,
                                      [{"kind": "early_stopped", "epoch": 7, "message": "val_loss did not improve"}])
        store.transition(ids["running"], RunState.EARLY_STOPPED)
        await wait_for(pilot, lambda: any("early_stopped" in t for t in toasts), what="a toast")
        await pilot.pause(0.3)
        assert sum("early_stopped" in t for t in toasts) == 1
        assert "r5     early_stopped epoch 7: val_loss did not improve" in log_text(app)  # the toast hides the pane
        store.transition(ids["queued_high"], RunState.RUNNING, slot="cpu.0")
        store.transition(ids["queued_high"], RunState.COMPLETED, history=[])
        await wait_for(pilot, lambda: any(t.startswith(f"{ids['queued_high']} finished") for t in toasts),
                       what="a finished toast")


async def test_filter_narrows_the_runs_and_enter_stays_in_the_filter(seeded):
    ws, ids = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = table(app, "#runs-table")
        await wait_for(pilot, lambda: tbl.row_count == 10, what="rows")
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"failed", "enter")
        await pilot.pause()
        assert row_keys(tbl) == [ids["failed"]]
        assert screen_name(app) == "RunsScreen"  # enter closed the filter, it did not open a run
        assert app.focused is tbl
        await pilot.press("slash", "ctrl+u", "escape")
        await wait_for(pilot, lambda: tbl.row_count == 10, what="the filter cleared")


async def test_enter_opens_the_run_detail_with_curves_events_config_and_log(seeded):
    ws, ids = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = table(app, "#runs-table")
        await wait_for(pilot, lambda: tbl.row_count == 10, what="rows")
        await cursor_to(pilot, tbl, ids["completed"])
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "RunDetailScreen" and app.screen.record is not None,
                       what="the run detail")
        detail = app.screen
        assert "r1 completed  seed/step-decay  on cpu.0  epoch 12/12" in screen_text(app)
        assert "kept (epoch 12, the last and the best val_loss): val_loss " in screen_text(app)
        loss = detail.query_one("#plot-loss")
        assert [s.label for s in loss.series] == ["train", "val"] and len(loss.series[0].xs) == 12
        assert len(detail.query_one("#plot-lr").series[0].ys) == 12
        await pilot.press("v")
        assert detail.query_one(TabbedContent).active == "tab-events"
        assert "learning rate 0.1 -> 0.05" in screen_text(app)
        await pilot.press("v")
        assert "[data]" in screen_text(app)
        assert 'name = "sgd"' in str(detail.query_one("#run-config", Static).render())  # further down: scroll
        await pilot.press("v")
        assert "epoch 12 train_loss" in screen_text(app)
        assert detail.check_action("cancel", ()) is None  # greyed: a completed run cannot be cancelled
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen_name(app) == "RunsScreen", what="back on the dashboard")


async def test_requeue_from_the_detail_makes_a_new_run_with_the_same_config(seeded):
    ws, ids = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        app.post_message(__import__("trialdeck.tui.messages", fromlist=["OpenRun"]).OpenRun(ids["failed"]))
        await wait_for(pilot, lambda: screen_name(app) == "RunDetailScreen" and app.screen.record is not None,
                       what="the run detail")
        assert "error: CUDA out of memory at epoch 3" in screen_text(app)
        await pilot.press("r")
        await wait_for(pilot, lambda: len(runs(ws, "queued")) == 3, what="a new queued run")
        old = Store(ws).get_run(ids["failed"])
        new = runs(ws, "queued")[-1]
        assert new["config"] == old["config"] and new["preset"] == old["preset"] and new["id"] == "r11"


async def test_resume_queues_a_failed_run_again_under_its_id_and_only_where_it_applies(seeded):
    ws, ids = seeded
    app = new_app(ws)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await loaded(pilot)
        table = app.screen.query_one("RunsTable")
        order = [table.current_key]
        for _ in range(12):  # walk the rows: R is in the footer exactly on the resumable ones
            await pilot.pause(0.1)
            shown = {k.key for k in footer_keys(app)}
            state = Store(ws).get_run(table.current_key)["state"]
            assert ("R" in shown) == (state in ("failed", "cancelled", "interrupted")), (table.current_key, state)
            assert max(k.region.right for k in footer_keys(app)) <= 80
            if table.current_key == ids["failed"]:
                break
            await pilot.press("down")
            order.append(table.current_key)
        assert table.current_key == ids["failed"], order
        await pilot.press("R")
        await wait_for(pilot, lambda: Store(ws).get_run(ids["failed"])["state"] == "queued", what="the run queued")
        said = f"{ids['failed']} queued; it starts over (it has no checkpoint)"
        await wait_for(pilot, lambda: any(n.message == said for n in app._notifications), what="the toast")
        record = Store(ws).get_run(ids["failed"])
        assert record["error"] is None and record["events"][-1]["kind"] == "requeued"
        assert len(runs(ws, "queued")) == 3  # the same run, not a new one


async def test_a_missing_run_says_so(seeded):
    ws, _ = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        from trialdeck.tui.messages import OpenRun

        app.post_message(OpenRun("r999"))
        await wait_for(pilot, lambda: "no run r999 in this workspace" in screen_text(app), what="the message")
        await pilot.press("c", "r", "v", "escape")
        assert screen_name(app) == "RunsScreen"


LONG_ERROR = ("digits: not found in /srv/datasets/shared/trialdeck/digits-v2/raw and could not be downloaded "
              "(no network?); copy the files into /srv/datasets/shared/trialdeck/digits-v2/raw by hand")


async def test_run_text_with_brackets_shows_literally_in_every_tab(seeded):
    ws, ids = seeded
    store = Store(ws)
    run_id = ids["failed"]
    store.update_run(run_id, error="[data] dataset [bold]digits[/bold] is missing")
    store.record_epoch_and_events(run_id, None, [{"kind": "failed", "epoch": None, "time": NOW - 10,
                                                  "message": "[model] hidden=[64] is [red]too small[/red]"}])
    with open(ws.run_dir(run_id) / LOG_NAME, "a", encoding="utf-8") as f:
        f.write("00:00:09 [data] loading [b]digits[/b]\n")
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        app.post_message(OpenRun(run_id))
        await wait_for(pilot, lambda: screen_name(app) == "RunDetailScreen" and app.screen.record is not None,
                       what="the run detail")
        assert "error: [data] dataset [bold]digits[/bold] is missing" in screen_text(app)
        await pilot.press("v")
        text = screen_text(app)
        assert "[model] hidden=[64] is [red]too small[/red]" in text
        assert "None" not in text  # an event without an epoch shows no epoch
        await pilot.press("v")
        text = screen_text(app)
        for header in ("[data]", "[model]"):  # the first two sections fit on the screen
            assert header in text
        await pilot.press("v")
        assert "00:00:09 [data] loading [b]digits[/b]" in screen_text(app)


async def test_the_header_shows_a_long_error_in_full(seeded):
    ws, ids = seeded
    Store(ws).update_run(ids["failed"], error=LONG_ERROR)
    app = new_app(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        app.post_message(OpenRun(ids["failed"]))
        await wait_for(pilot, lambda: screen_name(app) == "RunDetailScreen" and app.screen.record is not None,
                       what="the run detail")
        assert app.screen.query_one(TabbedContent).active == "tab-curves"  # the error is not on this tab
        words = " ".join(" ".join(screen_text(app).split()).split(" "))
        assert LONG_ERROR in words


async def test_toasts_and_filter_errors_show_brackets_literally(seeded):
    ws, _ = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        entry = LogEntry(NOW, "r3", "failed", None, "folder [b]x[/b] missing")
        app.post_message(EventsArrived((entry,)))
        await wait_for(pilot, lambda: any("folder [b]x[/b]" in n.message for n in app._notifications),
                       what="the toast")
        toast = next(n for n in app._notifications if "folder [b]x[/b]" in n.message)
        assert not toast.markup  # shown as written, not as bold markup
        app.clear_notifications()  # the toast would cover the filter's error line
        await show(pilot, "4", "StudiesScreen")
        await wait_for(pilot, lambda: len(app.screen.trials) == 7, what="trials")
        await pilot.press("slash", *"lr<[b]")
        await pilot.pause()
        assert "optimizer.lr<[b]: < needs a number" in screen_text(app)


# ----------------------------------------------------------------------------- queue


async def test_queue_shows_slots_and_positions_and_cancels(seeded):
    ws, ids = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await show(pilot, "3", "QueueScreen")
        tbl = table(app, "#queue-table")
        await wait_for(pilot, lambda: tbl.row_count == 3, what="queue rows")
        # running first with its slot, then dispatch order: r7 (priority 5) before r6.
        assert row_keys(tbl) == [ids["running"], ids["queued_high"], ids["queued"]]
        assert row_of(tbl, ids["running"])[2] == "cpu.0"
        assert row_of(tbl, ids["queued_high"])[2] == "#1" and row_of(tbl, ids["queued"])[2] == "#2"
        await cursor_to(pilot, tbl, ids["queued_high"])
        await pilot.press("c")
        await wait_for(pilot, lambda: Store(ws).get_run(ids["queued_high"])["state"] == "cancelled", what="cancelled")
        await wait_for(pilot, lambda: tbl.row_count == 2, what="the row gone")
        # A running run with no engine alive is marked cancelled directly.
        await cursor_to(pilot, tbl, ids["running"])
        await pilot.press("c")
        await wait_for(pilot, lambda: Store(ws).get_run(ids["running"])["state"] == "cancelled", what="cancelled")


async def test_queue_reorders_by_priority_and_clears(seeded):
    ws, ids = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await show(pilot, "3", "QueueScreen")
        tbl = table(app, "#queue-table")
        await wait_for(pilot, lambda: tbl.row_count == 3, what="queue rows")
        low, high = ids["queued"], ids["queued_high"]

        def order() -> list[str]:
            return [r["id"] for r in Store(ws).queued()]

        await cursor_to(pilot, tbl, low)
        await pilot.press("t")
        await wait_for(pilot, lambda: order() == [low, high], what="moved to the top")
        await wait_for(pilot, lambda: row_keys(tbl)[1:] == [low, high], what="the table reordered")
        await cursor_to(pilot, tbl, low)
        await pilot.press("minus")
        await wait_for(pilot, lambda: order() == [high, low], what="moved down")
        await wait_for(pilot, lambda: row_keys(tbl)[1:] == [high, low], what="the table reordered")
        await cursor_to(pilot, tbl, low)
        await pilot.press("plus")
        await wait_for(pilot, lambda: order() == [low, high], what="moved up")
        await wait_for(pilot, lambda: row_keys(tbl)[1:] == [low, high], what="the table reordered")
        await cursor_to(pilot, tbl, high)
        await pilot.press("p")
        await wait_for(pilot, lambda: screen_name(app) == "PriorityDialog", what="the priority dialog")
        await pilot.press("ctrl+u", "x", "enter")  # not a number: refused in place
        assert screen_name(app) == "PriorityDialog"
        assert "allowed: a whole number" in screen_text(app)
        await pilot.press("ctrl+u", *"42", "enter")
        await wait_for(pilot, lambda: Store(ws).get_run(high)["priority"] == 42, what="priority 42")
        await cursor_to(pilot, tbl, ids["running"])
        assert app.screen.check_action("move", ("top",)) is None  # a running run cannot move
        await pilot.press("x")
        await wait_for(pilot, lambda: screen_name(app) == "ConfirmDialog", what="the confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: not Store(ws).queued(), what="the queue cleared")
        assert Store(ws).get_run(ids["running"])["state"] == "running"


# ----------------------------------------------------------------------------- presets and composer


async def presets(pilot) -> None:
    await show(pilot, "2", "PresetsScreen")


async def highlight(pilot, name: str) -> None:
    tree = pilot.app.screen.query_one("#presets")
    node = tree.leaf(name)
    if node.parent is not None:
        node.parent.expand()
    await pilot.pause()
    tree.move_cursor(node)
    await wait_for(pilot, lambda: pilot.app.screen.highlighted == name, what=name)


async def test_queue_a_preset_with_overrides_repeat_and_priority(seeded):
    ws, _ = seeded
    app = new_app(ws)
    before = {r["id"] for r in runs(ws)}
    async with app.run_test(size=SIZE) as pilot:
        await presets(pilot)
        await highlight(pilot, "seed/step-decay")
        await pilot.press("r")
        await wait_for(pilot, lambda: screen_name(app) == "QueueDialog", what="the queue dialog")
        await pilot.press("ctrl+u", "2", "tab", "ctrl+u", "4", "tab")  # repeat 2, priority 4
        await pilot.press(*"train.epochs", "tab", "3")
        await wait_for(pilot, lambda: "ok: 2 runs" in screen_text(app), what="the summary")
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(runs(ws)) == len(before) + 2, what="two queued runs")
    new = [r for r in runs(ws) if r["id"] not in before]
    assert [r["state"] for r in new] == ["queued", "queued"]
    assert {r["preset"] for r in new} == {"seed/step-decay"}
    assert [r["config"]["train"]["epochs"] for r in new] == [3, 3]
    assert [r["config"]["train"]["seed"] for r in new] == [0, 1]
    assert [r["priority"] for r in new] == [4, 4]
    spec = resolve("seed/step-decay", ["train.epochs=3"], preset_roots(ws.presets_dir))
    assert new[0]["config"] == spec.config()


async def test_the_queue_dialog_refuses_bad_values_in_place(seeded):
    ws, _ = seeded
    app = new_app(ws)
    before = len(runs(ws))
    async with app.run_test(size=SIZE) as pilot:
        await presets(pilot)
        await highlight(pilot, "seed/step-decay")
        await pilot.press("r")
        await wait_for(pilot, lambda: screen_name(app) == "QueueDialog", what="the queue dialog")
        await pilot.press("tab", "tab", *"optimizer.name", "tab", *"lbfgs")
        editor = app.screen.query_one("#queue-overrides")
        await wait_for(pilot, lambda: "is not allowed; allowed:" in editor.message, what="the error")
        assert editor.message == ("--set optimizer.name: optimizer.name = 'lbfgs' is not allowed; "
                                  "allowed: 'sgd', 'adam', 'adamw' or 'rmsprop'")
        assert "'rmsprop'" in screen_text(app)
        value = app.screen.query_one("#value-0", Input)
        assert value.has_class("-invalid")
        await pilot.press("enter")  # refused: nothing queued, the dialog stays
        await pilot.pause(0.2)
        assert screen_name(app) == "QueueDialog" and len(runs(ws)) == before
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen_name(app) == "PresetsScreen", what="back")
    assert len(runs(ws)) == before


async def test_the_config_tab_shows_the_diff_against_the_parents(seeded):
    ws, _ = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await presets(pilot)
        await highlight(pilot, "seed/step-decay")
        text = screen_text(app)
        assert "differs from base/digits-mlp + sched/step-decay:" in text
        assert "optimizer.name: 'adam' → 'sgd'" in text
        assert "train.epochs: 20 → 50" in text


async def test_compose_validate_inline_save_and_queue(seeded):
    ws, _ = seeded
    app = new_app(ws)
    before = {r["id"] for r in runs(ws)}
    async with app.run_test(size=SIZE) as pilot:
        await presets(pilot)
        screen = app.screen
        await pilot.press("v")
        assert screen.query_one(TabbedContent).active == "tab-compose"
        blocks = screen.query_one("#compose-blocks", SelectionList)
        blocks.focus()
        for name in ("reg/l2", "sched/step-decay"):
            blocks.highlighted = [blocks.get_option_at_index(i).value for i in range(blocks.option_count)].index(name)
            await pilot.press("space")
        assert list(blocks.selected) == ["reg/l2", "sched/step-decay"]
        screen.query_one("#key-0", Input).focus()
        await pilot.press(*"train.epochs", "tab", *"five")
        await wait_for(pilot, lambda: screen.check_action("queue_preset", ()) is None, what="queue greyed")
        editor = screen.query_one("#compose-overrides")
        assert editor.message.startswith("--set train.epochs: train.epochs = 'five': Input should be a valid integer")
        assert "Input should be a valid integer" in screen_text(app)
        assert screen.query_one("#value-0", Input).has_class("-invalid")
        await pilot.press("r")  # refused: greyed, no dialog
        await pilot.pause()
        assert screen_name(app) == "PresetsScreen"
        await pilot.press("ctrl+u", "5")
        await wait_for(pilot, lambda: "ok: digits" in screen_text(app), what="valid again")
        assert not screen.query_one("#value-0", Input).has_class("-invalid")
        assert "5 epochs" in screen_text(app)
        lr = screen.query_one("#lr-plot").series[0].ys
        assert lr == (0.1, 0.1, 0.1, 0.1, 0.1)  # step decay: first drop after epoch 9
        assert screen.check_action("save_preset", ()) is None  # no name yet
        screen.query_one("#compose-name", Input).focus()
        await pilot.press(*"mine/l2-step")
        await wait_for(pilot, lambda: screen.check_action("save_preset", ()) is True, what="save allowed")
        await pilot.press("ctrl+s")
        path = ws.presets_dir / "mine" / "l2-step.toml"
        await wait_for(pilot, lambda: path.exists(), what="the saved preset")
        await wait_for(pilot, lambda: screen.query_one("#presets").leaf("mine/l2-step") is not None, what="in the tree")
        saved = resolve("mine/l2-step", [], preset_roots(ws.presets_dir))
        assert saved.train.epochs == 5 and saved.regularization.l2 == 0.0001 and saved.schedule.kind == "step"
        screen.query_one("#compose-blocks").focus()
        await pilot.press("r")
        await wait_for(pilot, lambda: screen_name(app) == "QueueDialog", what="the queue dialog")
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(runs(ws)) == len(before) + 1, what="one queued run")
    new = [r for r in runs(ws) if r["id"] not in before]
    assert new[0]["preset"] == "mine/l2-step" and new[0]["config"] == saved.config()


async def test_compose_from_a_highlighted_preset_and_filter_the_tree(seeded):
    ws, _ = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await presets(pilot)
        screen = app.screen
        await highlight(pilot, "seed/dropout")
        await pilot.press("n")
        assert screen.query_one(TabbedContent).active == "tab-compose"
        assert screen.composition.parents == ("seed/dropout",)
        await pilot.press("escape", "slash", *"patience")
        await pilot.pause()
        tree = screen.query_one("#presets")
        leaves = [n.data for g in tree.root.children for n in g.children]
        assert leaves == ["es/patience-5"]


# ----------------------------------------------------------------------------- studies


async def test_studies_browser_sorts_filters_pages_and_opens_a_trial(seeded):
    ws, ids = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await show(pilot, "4", "StudiesScreen")
        screen = app.screen
        trials = screen.query_one("#trial-table")
        await wait_for(pilot, lambda: trials.row_count == 7, what="seven trials")
        text = screen_text(app)
        assert "best: trial #2 value 0.99 (run r10)" in text
        assert row_keys(trials) == [str(n) for n in range(7)]
        await pilot.press("enter")  # from the study list into its trials
        assert app.focused is trials
        await pilot.press("s", "s")  # number -> state -> value
        assert screen.sort_column == "value"
        values = [row_of(trials, k)[2] for k in row_keys(trials)]
        assert values[:5] == ["0.9754", "0.9754", "0.9843", "0.99", "0.99"] and values[5:] == ["", ""]
        await pilot.press("S")
        assert [row_of(trials, k)[2] for k in row_keys(trials)][:2] == ["0.99", "0.99"]
        await pilot.press("slash", *"complete lr<0.01")
        await pilot.pause()
        kept = row_keys(trials)
        assert sorted(kept) == ["0", "1", "4"]
        await pilot.press("ctrl+u", *"lr=0.001..0.03")
        await pilot.pause()
        assert sorted(row_keys(trials)) == ["1", "2", "4"]
        await pilot.press("ctrl+u", *"lr<abc")
        await pilot.pause()
        assert "lr<abc: < needs a number" in screen_text(app)
        assert trials.row_count == 7  # an invalid filter filters nothing, and says why
        await pilot.press("ctrl+u", *"activation=tanh", "enter")
        await pilot.pause()
        assert row_keys(trials) == ["2"] and app.focused is trials
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "RunDetailScreen" and app.screen.record is not None,
                       what="the trial's run")
        assert app.screen.run_id == ids["trial2"]
        assert "study seed-activations" in screen_text(app)


async def test_escape_goes_from_the_trials_back_to_the_study_list(seeded):
    ws, ids = seeded
    seed_study(Store(ws), ws, name="zz-second", trials=2)
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await show(pilot, "4", "StudiesScreen")
        screen = app.screen
        studies, trials = screen.query_one("#study-table"), screen.query_one("#trial-table")
        await wait_for(pilot, lambda: studies.row_count == 2 and trials.row_count == 7, what="two studies")
        assert studies.current_key == "seed-activations"
        await pilot.press("enter")  # into the trials
        assert app.focused is trials
        assert "esc Study list" in screen_text(app)
        await pilot.press("enter")  # the trial's run
        await wait_for(pilot, lambda: screen_name(app) == "RunDetailScreen" and app.screen.record is not None,
                       what="the trial's run")
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen_name(app) == "StudiesScreen", what="back on the studies")
        assert app.focused is trials  # where it was before the run opened
        assert "esc Study list" in screen_text(app)
        await pilot.press("escape")
        assert app.focused is studies
        assert screen.check_action("focus_studies", ()) is None  # greyed: already there
        await pilot.press("down")
        await wait_for(pilot, lambda: screen.study == "zz-second", what="the study list to move")
        await wait_for(pilot, lambda: trials.row_count == 2, what="the second study's trials")


async def test_a_study_whose_trials_are_sealed_shows_them(seeded, monkeypatch):
    ws, _ = seeded
    monkeypatch.setattr(sealed_trials, "SEAL_AT", 1)
    store = Store(ws)
    seed_study(store, ws, name="zz-ended", trials=3)
    store.upsert_study("zz-ended", {"state": "completed"})  # ended: its trials leave catalog.json
    in_file = json.loads(ws.catalog_path.read_bytes())["trials"].values()
    assert not any(t["study"] == "zz-ended" for t in in_file) and len(Store(ws).list_trials("zz-ended")) == 3
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await show(pilot, "4", "StudiesScreen")
        screen = app.screen
        studies, trials = screen.query_one("#study-table"), screen.query_one("#trial-table")
        await wait_for(pilot, lambda: studies.row_count == 2 and trials.row_count == 7, what="two studies")
        await pilot.press("down")
        await wait_for(pilot, lambda: screen.study == "zz-ended", what="the ended study")
        await wait_for(pilot, lambda: trials.row_count == 3, what="its sealed trials")
        assert row_keys(trials) == ["0", "1", "2"]


async def test_the_caption_says_why_the_highlighted_trial_was_pruned(seeded):
    ws, _ = seeded
    app = new_app(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await show(pilot, "4", "StudiesScreen")
        trials = app.screen.query_one("#trial-table")
        await wait_for(pilot, lambda: trials.row_count == 7, what="the trials")
        caption = app.screen.query_one("#trial-caption")
        await pilot.press("enter")
        assert str(caption.render()).startswith("7 of 7 trials")  # trial 0 finished without a reason
        await pilot.press("down", "down", "down")
        await wait_for(pilot, lambda: trials.current_key == "3", what="trial 3")
        await wait_for(pilot, lambda: str(caption.render()).startswith("#3 pruned: val_acc 0.") and
                       "at step 4 was below the median" in str(caption.render()), what="the prune reason")
        await pilot.press("escape")  # back to the study list: the counts again
        await wait_for(pilot, lambda: str(caption.render()).startswith("7 of 7 trials"), what="the counts")


async def test_studies_plots_history_slice_intermediate_importance(seeded):
    ws, _ = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await show(pilot, "4", "StudiesScreen")
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.trials) == 7, what="trials")
        history = screen.query_one("#plot-history").series
        assert history[0].xs == (0.0, 1.0, 2.0, 4.0, 5.0)
        assert history[1].ys == (0.98432, 0.98432, 0.99, 0.99, 0.99)  # best so far, maximising
        slice_plot = screen.query_one("#plot-slice")
        assert slice_plot.xticks is not None and "tanh" in slice_plot.xticks[1]  # categorical parameter
        assert [s.label for s in screen.query_one("#plot-intermediate").series] == ["#6"]  # the running trial
        assert dict(screen.query_one("#importances").bars) == {"model.activation": 0.71, "optimizer.lr": 0.29}
        for _ in range(4):
            await pilot.press("v")
            await pilot.pause()
        assert screen.query_one(TabbedContent).active == "tab-importance"
        assert "model.activation" in screen_text(app)


async def test_an_empty_workspace_shows_every_screen(tmp_path, monkeypatch, utc):
    ws = Workspace(tmp_path / "empty").ensure()
    app = new_app(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        for key, screen in (("2", "PresetsScreen"), ("3", "QueueScreen"), ("4", "StudiesScreen"), ("1", "RunsScreen")):
            await show(pilot, key, screen)
            await pilot.press("enter", "c", "s", "t", "x")
            await pilot.pause()
            if screen == "StudiesScreen":  # t starts a study: its preset picker opens; back out of it
                await wait_for(pilot, lambda: screen_name(app) == "TunePresetDialog", what="the preset picker")
                await pilot.press("escape")
        assert "0 running 0 queued" in screen_text(app)


# ----------------------------------------------------------------------------- app-wide


async def test_help_and_the_command_palette_list_every_action(seeded):
    ws, _ = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: screen_name(app) == "HelpScreen", what="help")
        text = screen_text(app)
        for words in ("Open", "Cancel run", "Run again", "Filter", "Presets", "Quit", "keys.toml"):
            assert words in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen_name(app) == "RunsScreen", what="help closed")
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Open", "Run again", "Filter", "Runs", "Presets", "Queue", "Studies", "Help", "Quit"} <= titles
        await show(pilot, "3", "QueueScreen")
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert "Clear queue" in titles and "Cancel run" in titles
        assert "Move to top" not in titles  # the cursor is on the running run: greyed, so not offered
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: screen_name(app) == "CommandPalette", what="the palette")
        await pilot.press(*"studies")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "StudiesScreen", what="studies from the palette")


async def test_keys_toml_rebinds_actions(seeded):
    ws, _ = seeded
    (ws.root / "keys.toml").write_text('[keys]\nquit = "x"\nshow_queue = "f3"\n')
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("q")
        await pilot.pause()
        assert app.is_running
        assert "f3 Queue" in screen_text(app)
        await show(pilot, "f3", "QueueScreen")
        await pilot.press("x")  # clear is x on the queue screen; app-wide quit is x too: the screen's wins
        await wait_for(pilot, lambda: screen_name(app) == "ConfirmDialog", what="the clear confirmation")
        await pilot.press("n")
        await show(pilot, "1", "RunsScreen")
        await pilot.press("x")
        await pilot.pause()
        assert not app.is_running


async def test_a_bad_keys_toml_is_reported_not_fatal(seeded):
    ws, _ = seeded
    (ws.root / "keys.toml").write_text('[keys]\nlaunch = "l"\nquit = 3\n')
    app = new_app(ws)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        messages = [n.message for n in app._notifications]
        assert any("unknown action 'launch'; allowed: show_runs" in m for m in messages)
        assert any("quit = 3" in m for m in messages)
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


async def test_a_key_given_to_two_actions_is_refused_and_said_so(seeded):
    ws, _ = seeded
    (ws.root / "keys.toml").write_text('[keys]\nquit = "1"\n')
    app = new_app(ws)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        warnings = [n.message for n in app._notifications if n.title == "keys.toml"]
        assert len(warnings) == 1
        assert str(ws.root / "keys.toml") in warnings[0]
        assert "quit = '1' not applied: '1' is already show_runs (Runs)" in warnings[0]
        assert "quit keeps 'q'" in warnings[0]
        await show(pilot, "4", "StudiesScreen")
        await show(pilot, "1", "RunsScreen")  # 1 still shows the runs
        assert app.is_running
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


async def test_a_key_an_app_action_shares_with_a_screen_is_kept_and_said_so(seeded):
    ws, _ = seeded
    (ws.root / "keys.toml").write_text('[keys]\nquit = "x"\n')
    app = new_app(ws)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        warnings = [n.message for n in app._notifications if n.title == "keys.toml"]
        assert warnings == [f"{ws.root / 'keys.toml'}: 'x' is quit (Quit) everywhere and clear (Clear queue) on "
                            "the Queue view; there it does clear."]


async def test_reopening_shows_the_same_workspace(seeded):
    ws, ids = seeded
    for _ in range(2):
        app = new_app(ws)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            tbl = table(app, "#runs-table")
            await wait_for(pilot, lambda tbl=tbl: tbl.row_count == 10, what="rows")
            assert row_of(tbl, ids["running"])[1] == "running"
            await pilot.press("q")
    assert Store(ws).get_run(ids["running"])["state"] == "running"  # closing the TUI stops nothing


def footer_keys(app) -> list:
    from textual.widgets import Footer

    return list(app.screen.query_one(Footer).query("FooterKey"))


async def test_every_footer_fits_80_columns_with_help_and_quit(seeded):
    # The mode bar names the four views; the footer used to repeat them and ran out of room
    # at 80 columns ("/ Fi…" on the Studies view; help and quit never showed).
    ws, _ = seeded
    app = new_app(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        views = (("1", "RunsScreen"), ("2", "PresetsScreen"), ("3", "QueueScreen"), ("4", "StudiesScreen"))
        for key, screen in views:
            await show(pilot, key, screen)
            await pilot.pause(0.2)
            keys = footer_keys(app)
            palette = next(k for k in keys if k.key == "ctrl+p")
            mine = [k for k in keys if k is not palette]
            assert {"question_mark", "q"} <= {k.key for k in mine}, screen
            assert max(k.region.right for k in mine) <= palette.region.x, screen
            assert not {"1", "2", "3", "4"} & {k.key for k in mine}
        text = screen_text(app)
        assert "/ Filter" in text and "? Help" in text and "q Quit" in text
        await pilot.press("question_mark")  # help still names every key in full
        await wait_for(pilot, lambda: screen_name(app) == "HelpScreen", what="help")
        text = screen_text(app)
        for words in ("Sort by next column", "Reverse sort", "Study list", "Next view", "Studies", "Runs"):
            assert words in text


async def test_typing_shows_the_way_out_not_keys_that_would_type(seeded):
    ws, _ = seeded
    app = new_app(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await pilot.press("slash")
        await pilot.pause(0.2)
        shown = {k.key: k.description for k in footer_keys(app)}
        assert shown.get("escape") == "Close filter" and "slash" not in shown  # "/" types a slash here
        await pilot.press("escape")
        await show(pilot, "2", "PresetsScreen")
        assert "escape" not in {k.key for k in footer_keys(app)}  # already in the tree
        await pilot.press("n")  # the composer: the key input has the focus
        await pilot.pause(0.2)
        assert isinstance(app.focused, Input)
        shown = {k.key: k.description for k in footer_keys(app)}
        assert shown.get("escape") == "Preset list" and "slash" not in shown
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.focused, Input)


async def test_runs_table_at_80_columns_keeps_val_acc_whole(seeded):
    ws, _ = seeded
    app = new_app(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        runs_table = table(app, "#runs-table")
        await pilot.pause(0.2)
        assert runs_table.shown_columns == ["id", "state", "preset", "loss", "epoch", "val_acc"]
        assert runs_table.virtual_size.width <= runs_table.scrollable_content_region.width  # no sideways scroll
        assert " val_acc" in screen_text(app).splitlines()[1]
        await pilot.resize_terminal(120, 40)
        await pilot.pause(0.3)
        assert runs_table.shown_columns[-4:] == ["best", "kept", "slot", "elapsed"]


async def test_study_table_and_trial_headers_read_whole(seeded):
    ws, _ = seeded
    store = Store(ws)
    store.upsert_trials("seed-tpe-mnist", [
        {"number": n, "state": "complete", "value": 0.5 - n / 10, "run_id": None, "intermediate": {},
         "params": {"model.depth": 2, "model.hidden.0": 512 + n, "model.hidden.1": 256, "model.dropout.0": 0.25,
                    "model.dropout.1": 0.5, "optimizer.name": "adam"}, "duration": 3.0} for n in range(2)])
    store.upsert_study("seed-tpe-mnist", {"preset": "seed/tpe-mnist", "metric": "val_loss", "direction": "minimize",
                                          "sampler": "tpe", "pruner": "median", "state": "completed",
                                          "counts": {"complete": 2}, "n_trials": 2, "n_done": 2})
    app = new_app(ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        await show(pilot, "4", "StudiesScreen")
        studies, trials = table(app, "#study-table"), table(app, "#trial-table")
        await wait_for(pilot, lambda: studies.row_count == 2, what="two studies")
        assert "completed" in screen_text(app)  # not "complet…"
        studies.focus()
        assert studies.select_key("seed-tpe-mnist")
        await wait_for(pilot, lambda: trials.row_count == 2, what="the tpe study's trials")
        header = next(line for line in screen_text(app).splitlines() if line.lstrip().startswith("#"))
        assert header.split() == ["#", "state", "value", "time", "depth", "hidden.0", "hidden.1", "dropout.0",
                                  "dropout.1", "name"]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_random_key_mashing_does_not_crash(seeded, size):
    ws, _ = seeded
    app = new_app(ws)
    keys = ["1", "2", "3", "4", "enter", "escape", "r", "c", "slash", "question_mark", "up", "down", "left",
            "right", "tab", "shift+tab", "space", "t", "plus", "minus", "p", "x", "y", "n", "s", "S", "v",
            "left_square_bracket", "right_square_bracket", "a", "5", "ctrl+s", "pageup", "pagedown", "home", "end",
            "backspace", "ctrl+u", "period", "equals_sign"]
    rng = random.Random(1234 + size[0])
    async with app.run_test(size=size) as pilot:
        await loaded(pilot)
        for i in range(150):
            await pilot.press(rng.choice(keys))
            if i % 25 == 0:
                await pilot.pause(0.05)
        await pilot.pause(0.3)
        assert app.is_running
        assert app.return_code is None


async def test_failures_become_notifications_not_crashes(seeded):
    ws, ids = seeded
    app = new_app(ws)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        from trialdeck.tui import messages

        app.post_message(messages.CancelRun(ids["completed"]))  # refused by the engine-facing code
        app.post_message(messages.MoveRun(ids["running"], "up"))
        app.post_message(messages.RequeueRun("r999"))
        await wait_for(pilot, lambda: len(app._notifications) >= 3, what="three notifications")
        texts = [n.message for n in app._notifications]
        assert any("r1 is already completed; only queued, running or interrupted runs can be cancelled" in t
                   for t in texts)
        assert any("is not queued; only queued runs can be moved" in t for t in texts)
        assert any("no run 'r999'" in t for t in texts)
        assert app.is_running


async def test_a_corrupt_catalogue_is_reported_and_the_app_goes_on(tmp_path, monkeypatch, utc):
    ws = Workspace(tmp_path / "home").ensure()
    ws.catalog_path.write_text('{"meta": {"1": {"generation": 3}}, "runs": {"1": ')
    app = new_app(ws)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await wait_for(pilot, lambda: any("is corrupt" in n.message for n in app._notifications),
                       what="the corrupt catalogue reported")
        await pilot.press("2", "3", "4", "1")
        await pilot.pause(0.3)
        assert app.is_running
        assert sum("is corrupt" in n.message for n in app._notifications) == 1  # said once, not every tick
