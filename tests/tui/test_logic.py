"""The TUI's logic without Textual: sparklines, metric followers, the event feed, table rows,
queue reordering, preset composition (same rules as the CLI), trial filters, keymaps,
and the engine-facing operations on a real store."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from trialdeck.engine.catalogue.metrics import JsonlMetricsWriter
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import BadInput
from trialdeck.engine.presets import preset_roots, resolve
from trialdeck.engine.presets.authoring import write_preset
from trialdeck.engine.runtime.control.actions import REPEAT_LIMIT
from trialdeck.engine.runtime.runners.recorder import METRICS_NAME
from trialdeck.engine.types import RunState
from trialdeck.tui.cli import app
from trialdeck.tui.composition import Composition, PresetLibrary, dotted_keys, lr_curve
from trialdeck.tui.control import Control, QueueRequest, reorder, specs_for
from trialdeck.tui.keymap import ACTIONS, Place, check_clashes, load_keymap
from trialdeck.tui.live import (
    BLOCKS,
    Catalog,
    EventFeed,
    LossTrace,
    MetricsFollower,
    finished_since,
    fmt_seconds,
    resample,
    run_row,
    spark,
)
from trialdeck.tui.probes import EngineSample, GpuSample, HardwareSample, status_text
from trialdeck.tui.testing import NOW, T0, seed_workspace
from trialdeck.tui.trials import history, intermediate_curves, page_of, parse_filter, short_names, slice_of, sort_trials
from trialdeck.tui.widgets.live_table import fit_columns

# ----------------------------------------------------------------------------- sparklines


def test_spark_scales_between_the_lowest_and_highest_point():
    assert spark([]) == ""
    assert spark([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == BLOCKS
    assert spark([3, 3, 3]) == "▄▄▄"
    assert spark([1.0, float("nan"), None, float("inf"), 2.0]) == "▁█"  # NaN losses are skipped, not plotted


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=500), st.integers(1, 40))
def test_spark_is_never_wider_than_asked(values, width):
    line = spark(values, width)
    assert 1 <= len(line) <= width and set(line) <= set(BLOCKS)
    assert len(resample(values, width)) == min(len(values), width)


def test_loss_trace_stays_bounded_and_keeps_the_shape():
    trace = LossTrace(cap=64)
    for i in range(10_000):
        trace.add(10_000 - i)
    values = trace.values()
    assert len(values) <= 64
    assert values == sorted(values, reverse=True)  # still decreasing
    assert math.isclose(sum(values) / len(values), 5000, rel_tol=0.05)


# ----------------------------------------------------------------------------- followers


def write(path, *records):
    with JsonlMetricsWriter(path) as w:
        for r in records:
            w.write(r)


def test_the_follower_reads_only_what_was_appended(ws):
    follower = MetricsFollower(ws)
    assert follower.poll(["r1"]) is None  # no file yet
    assert not (ws.runs_dir / "r1").exists()  # and a viewer creates nothing
    path = ws.run_dir("r1") / METRICS_NAME
    write(path, {"kind": "start"}, {"t": 1, "epoch": 1, "step": 8, "loss": 2.0})
    live = follower.poll(["r1"])["r1"]
    assert live.loss == 2.0 and live.epoch == 1 and live.spark == "▄"
    assert follower.poll(["r1"]) is None  # nothing new: nothing posted
    with open(path, "ab") as f:
        f.write(b'{"kind": "epoch", "epoch": 1, "train_loss": 1.0, "val_loss": 1.5, "val_acc": 0.7, "lr": 0.1}\n{"t": 2, "ep')
    live = follower.poll(["r1"])["r1"]
    assert live.epochs_done == 1 and live.val_acc == 0.7 and live.best_val_acc == 0.7 and live.spark == "█▁"
    with open(path, "ab") as f:  # the torn line completes
        f.write(b'och": 2, "step": 8, "loss": 0.5}\n')
    live = follower.poll([])["r1"]  # no longer active: read to the end once, then left alone
    assert live.loss == 0.5 and live.epoch == 2
    write(path, {"t": 3, "epoch": 2, "step": 16, "loss": 0.1})
    assert follower.poll([]) is None


def test_a_scripts_sparkline_counts_each_epoch_once_when_it_goes_back(ws):
    """A script run has epoch records only; one it records again (a resume, a restart) replaces
    itself and the epochs after it in the sparkline instead of adding points."""
    follower = MetricsFollower(ws, width=16)
    path = ws.run_dir("r2") / METRICS_NAME
    write(path, {"kind": "start", "command": ["python3", "t.py"]},
          *({"kind": "epoch", "epoch": e, "loss": 5.0 - e} for e in (1, 2, 3, 4)))
    assert follower.poll(["r2"])["r2"].spark == "█▆▃▁"
    write(path, {"kind": "start", "rewound": 3, "params": None},  # went back to epoch 3
          {"kind": "epoch", "epoch": 3, "loss": 1.0}, {"kind": "epoch", "epoch": 4, "loss": 0.5})
    assert follower.poll(["r2"])["r2"].spark == "█▆▂▁"  # still four points
    write(path, {"kind": "epoch", "epoch": 1, "val_loss": 3.0})  # started over, without the marker
    assert follower.poll(["r2"])["r2"].spark == "▄"


def test_the_event_feed_reports_late_events_once():
    feed = EventFeed(window=30)
    old = [{"run": "r1", "kind": "failed", "epoch": 2, "message": "boom", "time": 100.0}]
    assert [e.kind for e in feed.prime(old)] == ["failed"]
    assert feed.since() == 70.0
    late = {"run": "r2", "kind": "early_stopped", "epoch": 5, "message": "stop", "time": 95.0}  # flushed late
    fresh = feed.take([*old, late])
    assert [(e.run, e.kind) for e in fresh] == [("r2", "early_stopped")]
    assert feed.take([*old, late]) == []


def test_finished_lines_come_from_runs_that_reached_completed():
    before = Catalog((1,), ({"id": "r1", "state": "running"}, {"id": "r2", "state": "completed"}))
    after = Catalog((2,), ({"id": "r1", "state": "completed", "preset": "p", "finished_at": 5.0,
                            "history": [{"val_acc": 0.5}, {"val_acc": 0.75}]},
                           {"id": "r2", "state": "completed"}))
    [entry] = finished_since(before, after)
    assert (entry.run, entry.kind, entry.time) == ("r1", "finished", 5.0)
    assert entry.message == "p: 2 epochs, best val_acc 0.7500"
    assert finished_since(None, after) == []


def test_run_rows_use_the_injected_clock(ws):
    ids = seed_workspace(ws, study=False)
    store = Store(ws)
    running = store.get_run(ids["running"])
    row = run_row(running, None, NOW, 30)
    assert row[:3] == (ids["running"], "running", "seed/l1-l2")
    assert row[4] == "6/30" and row[-1] == fmt_seconds(NOW - (T0 + 3000)) == "10m00s"
    queued = run_row(store.get_run(ids["queued"]), None, NOW, 50)
    assert queued[1] == "queued" and queued[3] == "" and queued[-1] == ""
    assert fmt_seconds(3 * 86400 + 7200) == "3d02h"


def test_status_line_text():
    engine = EngineSample(True, 4242, NOW - 62, ("cpu.0", "cpu.1"))
    hw = HardwareSample(37.4, 3 << 30, 16 << 30, (GpuSample(0, 55, 2 << 30, 80 << 30),))
    text = status_text(engine, hw, {"running": 2, "queued": 5}, NOW)
    assert text == ("engine pid 4242 up 1m02s slots cpu.0,cpu.1 │ 2 running 5 queued │ cpu 37% ram 3.0/16.0G │ "
                    "gpu0 55% 2.0/80.0G")
    assert status_text(EngineSample(False), None, {}, NOW).startswith("engine stopped")


# ----------------------------------------------------------------------------- queue order


def dispatch(queue, changes):
    runs = [dict(r, priority=changes.get(r["id"], r["priority"])) for r in queue]
    return [r["id"] for r in sorted(runs, key=lambda r: (-r["priority"], r["seq"]))]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=12), st.data())
def test_moving_one_place_swaps_exactly_two_runs(priorities, data):
    queue = [{"id": f"r{i}", "priority": p, "seq": i} for i, p in enumerate(priorities)]
    order = dispatch(queue, {})
    queue = sorted(queue, key=lambda r: order.index(r["id"]))
    i = data.draw(st.integers(0, len(queue) - 1))
    where = data.draw(st.sampled_from(["up", "down"]))
    changes = reorder(queue, queue[i]["id"], where)
    j = i - 1 if where == "up" else i + 1
    expected = list(order)
    if 0 <= j < len(order):
        expected[i], expected[j] = expected[j], expected[i]
    assert dispatch(queue, changes) == expected
    assert len(changes) <= len(queue)


def test_moving_an_unqueued_run_is_refused():
    with pytest.raises(BadInput, match="not queued"):
        reorder([{"id": "r1", "priority": 0, "seq": 1}], "r9", "up")
    with pytest.raises(BadInput, match="allowed: top, up, down"):
        reorder([{"id": "r1", "priority": 0, "seq": 1}], "r1", "sideways")


# ----------------------------------------------------------------------------- composition


@pytest.fixture(scope="module")
def library():
    return PresetLibrary(preset_roots(None))


def test_one_parent_resolves_like_the_cli(library):
    spec = library.resolve(Composition(("seed/step-decay",), ("train.epochs=5",)))
    assert spec == resolve("seed/step-decay", ["train.epochs=5"])


def test_a_composition_matches_what_presets_new_saves(library, ws):
    parents = ("base/digits-mlp", "reg/l2", "sched/step-decay", "es/patience-5")
    sets = ("train.epochs=7", "model.hidden=[64, 64]")
    mine = library.resolve(Composition(parents, sets, "mine/combo"))
    _path, saved = write_preset(ws.presets_dir, "mine/combo", parents=list(parents), sets=list(sets),
                                roots=preset_roots(ws.presets_dir))
    assert mine.content_hash == saved.content_hash
    assert mine.config() == resolve("mine/combo", [], preset_roots(ws.presets_dir)).config()


@pytest.mark.parametrize("sets, bad, words", [
    (("train.epochs=5", "optimizer.name=lbfgs"), 1, "allowed: 'sgd', 'adam', 'adamw' or 'rmsprop'"),
    (("train.epoch=5",), 0, "did you mean 'epochs'?"),
    (("train.epochs=five",), 0, "valid integer"),
    (("train.epochs=",), 0, "give a value"),
    (("data.train_fraction=1.5",), 0, "less than or equal to 1"),
    (("bogus.key=1",), 0, "unknown section 'bogus'"),
])
def test_an_invalid_override_is_named_with_what_is_allowed(library, sets, bad, words):
    check = library.check(Composition(("seed/step-decay",), sets))
    assert not check.ok and check.bad_set == bad
    assert words in check.error


def test_a_broken_parent_is_reported_without_blaming_an_override(library):
    check = library.check(Composition(("no/such-preset",), ("train.epochs=5",)))
    assert not check.ok and check.bad_set is None and "not found" in check.error


def test_diff_against_parents_and_lr_preview(library):
    parents, changes = library.diff("seed/step-decay")
    assert parents == ["base/digits-mlp", "sched/step-decay"]
    assert ("optimizer.name", "adam", "sgd") in changes and ("train.epochs", 20, 50) in changes
    assert all(not key.startswith(("preset", "description")) for key, _, _ in changes)
    curve = lr_curve(library.resolve(Composition(("seed/step-decay",))))
    assert len(curve) == 50 and curve[0] == 0.1 and curve[9] == 0.05 and curve[19] == 0.025
    assert "train.epochs" in dotted_keys() and "optimizer.lr" in dotted_keys()


def test_repeat_gives_consecutive_seeds(library):
    specs = specs_for(library, QueueRequest(Composition(("seed/step-decay",), ("train.seed=7",)), repeat=3))
    assert [s.train.seed for s in specs] == [7, 8, 9]
    limit = f"allowed: a whole number from 1 to {REPEAT_LIMIT}"  # the same limit as `trialdeck run --repeat`
    with pytest.raises(BadInput, match=limit):
        specs_for(library, QueueRequest(Composition(("seed/step-decay",)), repeat=0))
    with pytest.raises(BadInput, match=limit):
        specs_for(library, QueueRequest(Composition(("seed/step-decay",)), repeat=REPEAT_LIMIT + 1))
    too_many = CliRunner().invoke(app, ["run", "seed/step-decay", "--repeat", str(REPEAT_LIMIT + 1)])
    assert too_many.exit_code == 2 and f"--repeat {REPEAT_LIMIT + 1}: {limit}" in too_many.stderr


# ----------------------------------------------------------------------------- control (real store, no engine)


def test_control_queues_cancels_and_requeues(ws, library):
    woken = []
    control = Control(ws, Store(ws), start_engine=False, ensure=lambda w: None, wake=lambda w: woken.append(1) or False)
    ids = seed_workspace(ws, study=False)
    store = Store(ws)
    [record] = control.enqueue(specs_for(library, QueueRequest(Composition(("seed/step-decay",)))), priority=3)
    assert record["state"] == "queued" and record["priority"] == 3 and woken
    assert "cancelled (it was queued)" in control.cancel(record["id"])
    assert "no engine was running" in control.cancel(ids["running"])
    assert store.get_run(ids["running"])["state"] == "cancelled"
    with pytest.raises(BadInput, match="already completed"):
        control.cancel(ids["completed"])
    again = control.requeue(ids["failed"])
    assert again["state"] == "queued" and again["config"] == store.get_run(ids["failed"])["config"]
    assert control.move(ids["queued"], "top") == {ids["queued"]: 6}
    assert [r["id"] for r in store.queued()][0] == ids["queued"]
    assert control.clear() == 3
    with pytest.raises(BadInput, match="priority"):
        control.enqueue([], priority=True)


def test_cancelling_a_running_run_with_an_engine_asks_the_engine(ws):
    ids = seed_workspace(ws, study=False)
    control = Control(ws, Store(ws), start_engine=False, ensure=lambda w: None, wake=lambda w: True)
    assert "cancel requested" in control.cancel(ids["running"])
    record = Store(ws).get_run(ids["running"])
    assert record["state"] == "running" and record["cancel_requested"] is True
    Store(ws).transition(ids["running"], RunState.INTERRUPTED)
    assert control.cancel(ids["running"]) == f"{ids['running']} cancelled"


# ----------------------------------------------------------------------------- trials


TRIALS = [
    {"number": 0, "state": "complete", "value": 0.5, "params": {"optimizer.lr": 0.01, "model.activation": "relu"}},
    {"number": 1, "state": "pruned", "value": None, "params": {"optimizer.lr": 0.1, "model.activation": "tanh"},
     "intermediate": {"1": 0.9, "2": 0.8}},
    {"number": 2, "state": "complete", "value": 0.3, "params": {"optimizer.lr": 0.001, "model.activation": "tanh"}},
    {"number": 3, "state": "running", "value": None, "params": {"optimizer.lr": 0.05, "model.activation": "relu"},
     "intermediate": {"1": 0.7, "10": 0.4, "2": 0.6}},
]
PARAMS = ["optimizer.lr", "model.activation"]


@pytest.mark.parametrize("text, numbers", [
    ("", [0, 1, 2, 3]),
    ("complete", [0, 2]),
    ("complete pruned", [0, 1, 2]),
    ("state=running,pruned", [1, 3]),
    ("lr<0.05", [0, 2]),
    ("lr>=0.05", [1, 3]),
    ("lr=0.005..0.06", [0, 3]),
    ("activation=tanh", [1, 2]),
    ("activation!=tanh complete", [0]),
    ("value<0.4", [2]),
    ("optimizer.lr=0.1", [1]),
])
def test_trial_filters(text, numbers):
    keep = parse_filter(text, PARAMS)
    assert [t["number"] for t in TRIALS if keep(t)] == numbers


@pytest.mark.parametrize("text, words", [
    ("lr<abc", "< needs a number"),
    ("lr=0.1..0.01", "low end 0.1 is above the high end 0.01"),
    ("speed>3", "unknown field 'speed'; allowed: state, value, number, duration, optimizer.lr, model.activation"),
    ("state=done", "allowed: state=complete,pruned,fail,running,waiting"),
    ("???", "write a state"),
])
def test_bad_trial_filters_say_what_is_allowed(text, words):
    with pytest.raises(BadInput) as info:
        parse_filter(text, PARAMS)
    assert words in info.value.message


def test_trial_sorting_paging_and_plot_data():
    by_value = sort_trials(TRIALS, "value")
    assert [t["number"] for t in by_value] == [2, 0, 1, 3]  # missing values last
    assert [t["number"] for t in sort_trials(TRIALS, "value", reverse=True)] == [0, 2, 1, 3]
    assert [t["number"] for t in sort_trials(TRIALS, "model.activation")][:2] == [0, 3]
    items, page, pages = page_of(list(range(450)), 5, size=200)
    assert (page, pages, items[0], len(items)) == (2, 3, 400, 50)
    h = history(TRIALS, "minimize")
    assert h.xs == (0.0, 2.0) and h.best == (0.5, 0.3)
    s = slice_of(TRIALS, "model.activation")
    assert s.ticks == ((0.0, 1.0), ("relu", "tanh")) and s.xs == (0.0, 1.0)
    assert slice_of(TRIALS, "optimizer.lr").ticks is None
    curves, running = intermediate_curves(TRIALS)
    assert running and curves == [("#3", [1.0, 2.0, 10.0], [0.7, 0.6, 0.4])]


# ----------------------------------------------------------------------------- keymap


def test_keys_toml_overrides_by_binding_id(ws):
    assert load_keymap(ws.root) == ({}, [])
    (ws.root / "keys.toml").write_text('[keys]\nquit = "x"\ncancel = "ctrl+k,f8"\n')
    assert load_keymap(ws.root) == ({"quit": "x", "cancel": "ctrl+k,f8"}, [])
    (ws.root / "keys.toml").write_text('[keys]\nquit = ""\nfly = "f"\n[colors]\n')
    keymap, problems = load_keymap(ws.root)
    assert keymap == {}
    assert any("unknown action 'fly'" in p and "allowed: show_runs" in p for p in problems)
    assert any("quit = ''" in p for p in problems)
    assert any("unknown section 'colors'" in p for p in problems)
    (ws.root / "keys.toml").write_text("[keys\n")
    assert "TOML syntax error" in load_keymap(ws.root)[1][0]
    assert {"quit", "help", "open", "queue", "cancel", "filter", "show_runs", "show_presets"} <= set(ACTIONS)


APP = Place("everywhere", frozenset({"show_runs", "show_queue", "help", "quit"}))
PLACES = [Place("the Queue view", frozenset({"open", "clear", "cancel"})),
          Place("a yes/no question", frozenset({"yes", "no", "back"}), under_app=False)]


def test_a_key_two_actions_of_one_place_would_share_is_refused():
    kept, problems = check_clashes({"quit": "1"}, APP, PLACES, path="ws/keys.toml")
    assert kept == {}  # quit stays on q, and 1 still shows the runs
    assert problems == ["ws/keys.toml: quit = '1' not applied: '1' is already show_runs (Runs) everywhere, and one "
                        "key cannot do both. quit keeps 'q'; to use '1' for it, give show_runs another key too."]
    # Both moved: no clash. "?" is question_mark, as Textual reads it.
    assert check_clashes({"quit": "1", "show_runs": "f1"}, APP, PLACES) == ({"quit": "1", "show_runs": "f1"}, [])
    kept, problems = check_clashes({"quit": "?"}, APP, PLACES)
    assert kept == {} and "'?' is already help (Help)" in problems[0]
    # Both set in keys.toml: the later one is refused; a refused one falls back to its default, which may clash too.
    kept, problems = check_clashes({"cancel": "k", "clear": "k"}, APP, PLACES)
    assert kept == {"cancel": "k"} and "clear = 'k' not applied" in problems[0] and "on the Queue view" in problems[0]
    kept, problems = check_clashes({"help": "q", "quit": "1"}, APP, PLACES)
    assert kept == {} and len(problems) == 2


def test_a_key_shared_by_an_app_action_and_a_screen_action_is_kept_and_reported():
    kept, problems = check_clashes({"quit": "x"}, APP, PLACES)
    assert kept == {"quit": "x"}
    assert problems == ["keys.toml: 'x' is quit (Quit) everywhere and clear (Clear queue) on the Queue view; "
                        "there it does clear."]
    assert check_clashes({"quit": "y"}, APP, PLACES) == ({"quit": "y"}, [])  # the app's keys do not reach a dialog
    assert check_clashes({}, APP, PLACES) == ({}, [])


# ----------------------------------------------------------------------------- narrow terminals


def test_trial_columns_name_indexed_parameters_apart():
    # seed/tpe-mnist's space: one unit count and one dropout per layer. The last dotted part
    # alone ("0", "0") made two columns read the same.
    params = ["model.depth", "model.hidden.0", "model.hidden.1", "model.dropout.0", "data.batch_size",
              "optimizer.name", "model.name", "optimizer.lr"]
    names = short_names(params)
    assert names == {"model.depth": "depth", "model.hidden.0": "hidden.0", "model.hidden.1": "hidden.1",
                     "model.dropout.0": "dropout.0", "data.batch_size": "batch_size",
                     "optimizer.name": "optimizer.name", "model.name": "model.name", "optimizer.lr": "lr"}
    assert len(set(names.values())) == len(params)
    trial = {"number": 0, "state": "complete", "value": 0.2,
             "params": {"model.hidden.0": 512, "model.dropout.0": 0.3, "optimizer.name": "adam"}}
    for param, header in names.items():  # each header is a key the trial filter takes
        if param in trial["params"]:
            assert parse_filter(f"{header}={trial['params'][param]}", params)(trial)


def test_table_columns_fit_80_columns_by_shrinking_then_dropping_the_least_useful():
    spec = [("id", "id", 6), ("state", "state", 13), ("preset", "preset", 20), ("loss", "loss", 16),
            ("epoch", "epoch", 9), ("val_acc", "val_acc", 7), ("best", "best", 7), ("slot", "slot", 8),
            ("elapsed", "elapsed", 8)]
    drop, shrink = ("slot", "best", "elapsed"), {"preset": 14}
    assert fit_columns(spec, 0, drop, shrink) == list(enumerate(spec))  # not laid out yet
    assert fit_columns(spec, 200, drop, shrink) == list(enumerate(spec))
    narrow = fit_columns(spec, 80, drop, shrink)
    assert [c[0] for _, c in narrow] == ["id", "state", "preset", "loss", "epoch", "val_acc"]
    assert sum(c[2] + 2 for _, c in narrow) <= 80
    assert dict((c[0], c[2]) for _, c in narrow)["preset"] == 17  # the room left goes back to the preset
    assert [i for i, _ in narrow] == [0, 1, 2, 3, 4, 5]  # indices into the row's cells
    middle = fit_columns(spec, 100, drop, shrink)
    assert [c[0] for _, c in middle] == ["id", "state", "preset", "loss", "epoch", "val_acc", "best", "elapsed"]
    assert [i for i, _ in middle][-1] == 8
