"""Tuning end to end: `trialdeck tune`, `studies`, and `worker` against real engine processes.

Every scenario gets its own temporary workspace (`--home` and TRIALDECK_HOME
both point at it) and stops its own engine in teardown (`engine stop`, then
SIGKILL of the pid in engine.pid). Commands are real `trialdeck` processes with
list argvs; every wait is bounded and its failure message carries the tail of
engine.log. Results are read the way a user or a script would: `--json`
output, `catalog.json` through plain `tinydb.TinyDB`, and the Optuna storage
through `optuna.load_study`.

The scenarios are the tuning issue's acceptance: the article's TPE study with
its conditional space (seed/tpe-mnist on digits), the article's grid (seed/
grid-search, exactly its 12 points), a kill -9 of the engine mid-study and the
resume, median pruning with its reason and numbers (and early stopping that
stays early stopping), and two `trialdeck worker`s sharing a PostgreSQL study.
Expensive studies run once per module (module-scoped fixtures) and several
tests look at them.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.deck import REPO, TERMINAL, Deck
from tests.deck import gone as _gone
from tests.deck import journal_trials as _journal_trials
from trialdeck.engine.workspace import Workspace

pytestmark = pytest.mark.slow

FINAL_TRIAL = {"complete", "pruned", "fail"}
TRIAL_KEYS = {"number", "state", "value", "params", "run_id", "intermediate"}
STUDY_TIMEOUT = 420.0
"""Seconds a whole `tune --wait` may take: the box is shared, so far above the few seconds these need alone."""


# ------------------------------------------------------------------ helpers


def _write_preset(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _read_catalog(ws: Workspace) -> dict[str, list[dict[str, Any]]]:
    """catalog.json through plain TinyDB, as a user's script would read it."""
    from tinydb import TinyDB

    with TinyDB(ws.catalog_path) as db:
        return {name: [dict(d) for d in db.table(name).all()] for name in ("runs", "studies", "trials", "events")}


def _tune(deck: Deck, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    """`trialdeck tune ARGS --wait --json`: the process and its one JSON document."""
    proc = deck.cli("tune", *args, "--wait", "--json", timeout=STUDY_TIMEOUT)
    assert proc.returncode == 0, f"`trialdeck tune {' '.join(args)} --wait --json` exited {proc.returncode}:\n" \
                                 f"{proc.stderr}\n{deck.log_tail()}"
    return proc, json.loads(proc.stdout)


def _events(run: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in run.get("events") or [] if e["kind"] == kind]


def _assert_trial_doc(t: dict[str, Any], epochs: int) -> None:
    assert TRIAL_KEYS <= set(t), f"trial {t.get('number')} lacks {sorted(TRIAL_KEYS - set(t))}: {t}"
    assert isinstance(t["number"], int)
    assert t["state"] in FINAL_TRIAL, t
    assert isinstance(t["params"], dict) and t["params"], t
    assert isinstance(t["run_id"], str) and t["run_id"], t
    assert isinstance(t["intermediate"], dict), t
    steps = sorted(int(k) for k in t["intermediate"])
    assert steps and steps == list(range(1, steps[-1] + 1)) and steps[-1] <= epochs, (
        f"trial {t['number']}: intermediate values are not for epochs 1..n (n <= {epochs}): {t['intermediate']}")
    assert all(isinstance(v, float) for v in t["intermediate"].values()), t
    if t["state"] == "complete":
        assert isinstance(t["value"], float), t
    else:
        assert t["value"] is None, t


# ------------------------------------------------------------------ 1-2. the article's TPE study on digits

TPE_STUDY = "seed-tpe-mnist"
TPE_ARGS = ("seed/tpe-mnist", "--set", "data.dataset=digits", "--trials", "12", "--set", "train.epochs=4",
            # Fixed so both depths are always sampled (the conditional check below needs both).
            "--set", "tune.seed=1")


@pytest.fixture(scope="module")
def tpe(tmp_path_factory):
    deck = Deck(tmp_path_factory.mktemp("tpe") / "ws")
    try:
        t0 = time.monotonic()
        proc, out = _tune(deck, *TPE_ARGS)
        yield deck, proc, out, time.monotonic() - t0
    finally:
        deck.stop()


def test_tune_wait_json_runs_the_article_tpe_study_on_digits(tpe) -> None:
    deck, proc, out, _ = tpe
    assert isinstance(out, dict), "stdout is one JSON document"
    assert out["name"] == TPE_STUDY
    assert out["state"] == "completed", f"study ended {out['state']}: {out.get('error')}"
    assert (out["preset"], out["metric"], out["direction"], out["sampler"], out["pruner"]) == \
        ("seed/tpe-mnist", "val_loss", "minimize", "tpe", "median")
    assert out["n_trials"] == 12
    assert sorted(t["number"] for t in out["trials"]) == list(range(12))
    assert "storage_url" not in out, "--json shows the redacted `storage`, never the raw URL"


def test_studies_show_lists_every_trial_and_best_matches_studies_best(tpe) -> None:
    deck, _, _, _ = tpe
    shown = deck.json("studies", "show", TPE_STUDY)
    for key in ("name", "preset", "metric", "direction", "sampler", "pruner", "best", "trials"):
        assert key in shown, f"studies show --json lacks {key!r}"
    trials = shown["trials"]
    assert len(trials) == 12
    assert sorted(t["number"] for t in trials) == list(range(12)), "trial numbers are 0..11, each once"
    for t in trials:
        _assert_trial_doc(t, epochs=4)
    assert len({t["run_id"] for t in trials}) == 12, "each trial has its own run"
    for t in trials:  # its run's time in its epochs, not since it was asked (when its run was queued)
        history = deck.store.get_run(t["run_id"])["history"]
        assert t["duration"] == pytest.approx(sum(h["seconds"] for h in history), abs=1e-3), t
    for t in trials:
        if t["state"] == "complete":  # reduce = "best": the article's np.amin(val_loss)
            assert t["value"] == pytest.approx(min(t["intermediate"].values())), t

    complete = [t for t in trials if t["state"] == "complete"]
    assert complete, "no trial completed"
    best = shown["best"]
    assert {"number", "value", "params"} <= set(best)
    expected = min(complete, key=lambda t: t["value"])
    assert (best["number"], best["value"], best["params"]) == (expected["number"], expected["value"], expected["params"])
    assert deck.json("studies", "best", TPE_STUDY)["number"] == best["number"]
    assert deck.json("studies", "best", TPE_STUDY)["params"] == best["params"]


def test_catalog_json_holds_the_study_and_the_same_trials_for_a_plain_tinydb_script(tpe) -> None:
    deck, _, _, _ = tpe
    shown = deck.json("studies", "show", TPE_STUDY)
    catalog = _read_catalog(deck.ws)
    studies = [d for d in catalog["studies"] if d.get("name") == TPE_STUDY]
    assert len(studies) == 1, f"studies table: {[d.get('name') for d in catalog['studies']]}"
    assert studies[0]["state"] == "completed"
    assert studies[0]["best"]["number"] == shown["best"]["number"]
    rows = sorted((d for d in catalog["trials"] if d.get("study") == TPE_STUDY), key=lambda d: d["number"])
    assert len(rows) == 12, f"trials table has {len(rows)} rows for {TPE_STUDY}"

    def fields(t: dict[str, Any]) -> tuple:
        return t["number"], t["state"], t["value"], t["params"], t["run_id"], t["intermediate"]

    assert [fields(r) for r in rows] == [fields(t) for t in sorted(shown["trials"], key=lambda t: t["number"])]
    runs = {r["id"]: r for r in catalog["runs"]}
    for r in rows:
        run = runs.get(r["run_id"])
        assert run is not None, f"trial {r['number']}'s run {r['run_id']} is not in the runs table"
        assert (run["study"], run["trial"]) == (TPE_STUDY, r["number"])


def test_conditional_space_samples_the_third_layer_only_with_depth_three(tpe) -> None:
    deck, _, out, _ = tpe
    depths = set()
    for t in out["trials"]:
        p = t["params"]
        depth = p["model.depth"]
        depths.add(depth)
        for key in ("model.hidden.2", "model.dropout.2"):
            why = "missing" if depth == 3 else "sampled"
            assert (key in p) == (depth == 3), f"trial {t['number']}: {key} {why} with depth {depth}: {p}"
        for key in ("model.hidden.0", "model.hidden.1", "model.dropout.0", "model.dropout.1", "data.batch_size",
                    "optimizer.name"):
            assert key in p, f"trial {t['number']} lacks {key}: {p}"

        run = deck.json("runs", "show", t["run_id"])
        assert (run["study"], run["trial"]) == (TPE_STUDY, t["number"])
        assert run["state"] in TERMINAL
        model = run["config"]["model"]
        assert model["depth"] == depth
        assert model["hidden"][:depth] == [p[f"model.hidden.{i}"] for i in range(depth)], (model, p)
        assert model["dropout"][:depth] == pytest.approx([p[f"model.dropout.{i}"] for i in range(depth)]), (model, p)
        assert run["config"]["data"]["batch_size"] == p["data.batch_size"]
        assert run["config"]["optimizer"]["name"] == p["optimizer.name"]
        assert run["config"]["data"]["dataset"] == "digits" and run["config"]["train"]["epochs"] == 4
        assert [h["val_loss"] for h in run["history"]] == pytest.approx(
            [t["intermediate"][str(h["epoch"])] for h in run["history"]]), "reported values are the run's val_loss"
    assert depths == {2, 3}, f"only depth(s) {depths} were sampled; the check above needs both"


def test_a_trial_run_record_keeps_its_sampled_params(tpe) -> None:
    deck, _, out, _ = tpe
    t = out["trials"][0]
    run = deck.json("runs", "show", t["run_id"])
    assert run.get("params") == t["params"], f"run {t['run_id']} params: {run.get('params')!r}"


def test_a_failed_trial_keeps_why_in_the_study_and_a_finished_one_its_value() -> None:
    import optuna

    from trialdeck.engine.presets.schema import TuneConfig
    from trialdeck.engine.tuning import study as studies

    tune = TuneConfig.model_validate({"space": {"optimizer.lr": {"float": [1e-4, 1e-1], "log": True}}})
    study = optuna.create_study(direction="minimize")
    endings = [
        {"state": "completed", "history": [{"val_loss": 0.5, "seconds": 1.5}, {"val_loss": 0.3, "seconds": 2.0},
                                           {"val_loss": 0.4, "seconds": 2.5}]},
        {"state": "early_stopped", "history": [{"val_loss": None}]},
        {"state": "failed", "error": "CUDA out of memory"},
        {"state": "cancelled"},
        {"state": "pruned", "history": [{"val_loss": 0.9}]},
    ]
    told = []
    for record in endings:
        trial = study.ask()
        told.append(studies.tell_run(study, tune, trial._trial_id, trial.number, record))
    docs = [studies.trial_doc(t, tune) for t in study.get_trials()]
    assert told == [d["state"] for d in docs] == ["complete", "fail", "fail", "fail", "pruned"]
    assert docs[0]["value"] == 0.3 and docs[0]["fail_reason"] is None
    assert [d["fail_reason"] for d in docs[1:4]] == [
        "the run recorded no val_loss", "failed: CUDA out of memory", "cancelled"]
    assert docs[4]["fail_reason"] is None


# ------------------------------------------------------------------ 3. the article's grid


def test_grid_search_runs_exactly_its_twelve_points(tmp_path: Path) -> None:
    # The article's grid has train.epochs in [10, 20]; a preset extending it swaps in [1, 2] to keep
    # the test short. (`--set 'tune.space."train.epochs"=...'` is not possible: --set keys split on
    # every dot, quoted or not; and `--set tune.space={...}` replaces the whole space.)
    preset = _write_preset(tmp_path / "presets" / "grid-short.toml", """
        description = "seed/grid-search with 1 or 2 epochs"
        extends = ["seed/grid-search"]

        [tune.space]
        "train.epochs" = { choices = [1, 2] }
    """)
    deck = Deck(tmp_path / "ws")
    try:
        proc = deck.cli("tune", str(preset), "--study", "grid", "--wait", "--json", timeout=STUDY_TIMEOUT)
        assert proc.returncode == 0, proc.stderr + deck.log_tail()
        out = json.loads(proc.stdout)
        trials = out["trials"]
        combos = [(t["params"]["data.batch_size"], t["params"]["train.epochs"], t["params"]["optimizer.name"])
                  for t in trials]
        assert len(trials) == 12, f"{len(trials)} trials: {combos}"
        assert sorted(combos) == sorted(itertools.product([10, 20, 40], [1, 2], ["adam", "rmsprop"])), combos
        assert sorted(t["number"] for t in trials) == list(range(12))
        for t in trials:
            run = deck.json("runs", "show", t["run_id"])
            assert run["config"]["train"]["epochs"] == t["params"]["train.epochs"]
            assert run["config"]["data"]["batch_size"] == t["params"]["data.batch_size"]
            assert run["config"]["optimizer"]["name"] == t["params"]["optimizer.name"]
        # No 13th trial: not in Optuna, not in the queue, not asked later by the idle engine. A plain
        # run queued now ends only after the engine's loop went round (feeding studies, then
        # dispatching) at least once more with the study complete: a handshake, not a sleep.
        later = deck.json("run", "seed/step-decay", "--set", "train.epochs=1", "--wait", timeout=STUDY_TIMEOUT)
        assert later["state"] == "completed", later
        journal = _journal_trials(deck.ws, "grid")
        assert len(journal) == 12, [(t.number, t.state.name) for t in journal]
        assert len([r for r in deck.store.list_runs() if r.get("study") == "grid"]) == 12
        # Every grid point ran to the end, and the study says so.
        assert all(t.state.name == "COMPLETE" for t in journal), [t.state.name for t in journal]
        assert out["state"] == "completed", f"the grid study ended {out['state']!r}: {out.get('error')}\n{deck.log_tail()}"
        assert [t["state"] for t in trials] == ["complete"] * 12, [(t["number"], t["state"]) for t in trials]
        assert all(0.0 <= t["value"] <= 1.0 for t in trials)  # val_acc, reduce = "last"
        assert out["best"]["value"] == max(t["value"] for t in trials)
    finally:
        deck.stop()


# ------------------------------------------------------------------ 4. kill -9 mid-study, then resume

RESUME_PRESET = """
    description = "TPE, 10 trials x 15 epochs on digits, a checkpoint every epoch"
    extends = ["base/digits-mlp"]

    [model]
    hidden = [64]

    [train]
    epochs = 15
    checkpoint_seconds = 0

    [tune]
    sampler = "tpe"
    pruner = "none"
    metric = "val_loss"
    direction = "minimize"
    trials = 10
    seed = 5

    [tune.space]
    "optimizer.lr" = { float = [1e-4, 1e-2], log = true }
    "model.hidden.0" = { int = [32, 128] }
"""


def _epochs_streamed(ws: Workspace, run_id: str) -> int:
    """Epoch lines in the run's append-only metrics stream (TinyDB only gets them at flush time)."""
    try:
        data = (ws.runs_dir / run_id / "metrics.jsonl").read_bytes()
    except FileNotFoundError:
        return 0
    return data.count(b'"kind": "epoch"') + data.count(b'"kind":"epoch"')


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A study killed (-9) mid-trial after >= 3 trials, then resumed by the same `tune` command with --wait."""
    root = tmp_path_factory.mktemp("resume")
    preset = _write_preset(root / "presets" / "resume.toml", RESUME_PRESET)
    deck = Deck(root / "ws")
    name = "resume"
    args = ("tune", str(preset), "--study", name, "--trials", "10")
    try:
        started = deck.json(*args)  # no --wait: the engine works on it in the background
        assert started["name"] == name and started["state"] == "running"
        store = deck.store

        def study_runs() -> list[dict[str, Any]]:
            return [r for r in store.list_runs() if r.get("study") == name]

        def mid_trial() -> bool:
            """>= 3 trials done and the next one part-way: >= 2 epochs streamed (each one checkpointed)
            and none yet in the catalogue (its recorder flushes there once a second)."""
            runs = study_runs()
            if len(runs) >= 10 and all(r["state"] in TERMINAL for r in runs):
                raise AssertionError(f"the study finished before the kill; trials are too short\n{deck.log_tail()}")
            done = [r for r in runs if r["state"] in TERMINAL]
            return len(done) >= 3 and any(
                r["state"] == "running" and not r.get("history") and 2 <= _epochs_streamed(deck.ws, r["id"]) <= 11
                for r in runs)

        deck.wait(mid_trial, 240, lambda: f">= 3 trials done and one part-way: "
                                          f"{[(r['id'], r['state'], _epochs_streamed(deck.ws, r['id'])) for r in study_runs()]}",
                  interval=0.01)
        engine = deck.engine_pid()
        os.kill(engine, signal.SIGKILL)  # as a crash or the OOM killer would
        deck.wait(lambda: _gone(engine), 15, f"engine {engine} to die after SIGKILL")
        victims = [r for r in study_runs() if r["state"] == "running"]
        assert len(victims) == 1, f"one trial run was running at the kill: {[(r['id'], r['state']) for r in study_runs()]}"
        victim = victims[0]
        if isinstance(victim.get("worker"), int):  # PR_SET_PDEATHSIG takes the worker down with its engine
            deck.wait(lambda: _gone(victim["worker"]), 15, f"worker {victim['worker']} to die with its engine")
        # Read again once the worker is gone too: its `history` is what the catalogue kept of the trial.
        victim = store.get_run(victim["id"])
        assert victim["state"] == "running"

        _, out = _tune(deck, *args[1:])
        yield deck, name, victim, out
    finally:
        deck.stop()


def test_kill_9_of_the_engine_mid_study_then_tune_again_resumes_to_exactly_the_target(resumed) -> None:
    deck, name, victim, out = resumed
    assert out["state"] == "completed", f"study ended {out['state']}: {out.get('error')}"
    trials = out["trials"]
    numbers = [t["number"] for t in trials]
    assert sorted(numbers) == list(range(10)), f"trial numbers {numbers}: exactly 10, no duplicates"
    run_ids = [t["run_id"] for t in trials]
    assert None not in run_ids and len(set(run_ids)) == 10, f"run ids {run_ids}"
    for t in trials:
        _assert_trial_doc(t, epochs=15)

    journal = _journal_trials(deck.ws, name)
    assert len(journal) == 10, f"Optuna has {len(journal)} trials: {[(t.number, t.state.name) for t in journal]}"
    states = {t.number: t.state.name for t in journal}
    assert set(states.values()) <= {"COMPLETE", "PRUNED", "FAIL"}, f"left unfinished in Optuna: {states}"

    runs = [r for r in deck.store.list_runs() if r.get("study") == name]
    assert len(runs) == 10, f"{len(runs)} runs for 10 trials: {[(r['id'], r['trial']) for r in runs]}"
    by_id = {r["id"]: r for r in runs}
    for t in trials:
        run = by_id[t["run_id"]]
        assert run["trial"] == t["number"]
        assert run["state"] in TERMINAL, f"{run['id']} is {run['state']}"
        assert (run["state"] in ("completed", "early_stopped")) == (states[t["number"]] == "COMPLETE"), \
            (run["id"], run["state"], states[t["number"]])

    # The trial that was running at the kill continued as the same trial, from its checkpoint.
    resumed_run = by_id[victim["id"]]
    assert resumed_run["trial"] == victim["trial"]
    assert resumed_run["state"] == "completed", f"{victim['id']}: {resumed_run['state']} {resumed_run.get('error')}"
    assert states[victim["trial"]] == "COMPLETE"
    kinds = [e["kind"] for e in resumed_run["events"]]
    assert {"interrupted", "requeued", "resumed"} <= set(kinds), kinds
    assert resumed_run["history"] and resumed_run["history"][-1]["epoch"] == 15


def test_the_resumed_trial_keeps_a_gapless_history(resumed) -> None:
    # The catalogue (flushed once a second) and the checkpoint (every epoch here) may disagree at the kill;
    # the resumed run's history must still be epochs 1..15, each once.
    deck, name, victim, _ = resumed
    run = deck.store.get_run(victim["id"])
    history = run["history"]
    checkpointed = _events(run, "resumed")[0]["epoch"]  # "resumed from the checkpoint after epoch N"
    assert 1 <= checkpointed < 15
    assert [h["epoch"] for h in history] == list(range(1, 16)), [h["epoch"] for h in history]


# ------------------------------------------------------------------ 5. pruning, and early stopping that is not pruning

def _prune_preset(*, epochs: int, seed: int, early_stopping: bool) -> str:
    """Random search over a mix of good and hopeless SGD learning rates, median pruner."""
    text = f"""
        description = "Random search over good and hopeless learning rates, median pruner"
        extends = ["base/digits-mlp"]

        [model]
        hidden = [64]

        [optimizer]
        name = "sgd"

        [train]
        epochs = {epochs}

        [tune]
        sampler = "random"
        pruner = "median"
        metric = "val_loss"
        direction = "minimize"
        seed = {seed}

        [tune.space]
        "optimizer.lr" = {{ choices = [0.2, 0.1, 0.05, 0.00001] }}
    """
    if early_stopping:
        text += """
        [early_stopping]
        enabled = true
        monitor = "val_loss"
        patience = 1
        min_delta = 0.05
    """
    return text


PRUNED_MESSAGE = re.compile(r"median pruner at epoch \d+: val_loss [\d.]+ > median [\d.]+")


@pytest.fixture(scope="module")
def pruning(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    # Seed 4 samples lr = 1e-5 at trials 4, 7, 8 and 9; the median pruner's 5 startup trials come first.
    median = _write_preset(root / "presets" / "prune.toml", _prune_preset(epochs=8, seed=4, early_stopping=False))
    # Seed 0 samples lr = 0.1, 1e-5, 0.2, 0.1, 1e-5, 0.2, 1e-5, 1e-5, 1e-5: the good ones early-stop (trial 5
    # after the startup trials, with the pruner active), trials 6-8 are pruned at epoch 1.
    early = _write_preset(root / "presets" / "prune-es.toml", _prune_preset(epochs=20, seed=0, early_stopping=True))
    deck = Deck(root / "ws")
    try:
        _, plain = _tune(deck, str(median), "--study", "median", "--trials", "12")
        _, es = _tune(deck, str(early), "--study", "median-es", "--trials", "9")
        yield deck, plain, es
    finally:
        deck.stop()


def test_median_pruner_prunes_a_hopeless_trial_and_says_why_with_numbers(pruning) -> None:
    deck, out, _ = pruning
    assert out["state"] == "completed"
    assert len(out["trials"]) == 12
    pruned = [t for t in out["trials"] if t["state"] == "pruned"]
    assert pruned, f"no trial was pruned: {[(t['number'], t['state'], t['params']) for t in out['trials']]}"
    assert any(t["params"]["optimizer.lr"] == 0.00001 for t in pruned), pruned
    for t in pruned:
        run = deck.json("runs", "show", t["run_id"])
        assert run["state"] == "pruned"
        events = _events(run, "pruned")
        assert len(events) == 1, run["events"]
        event = events[0]
        assert PRUNED_MESSAGE.search(event["message"]), event["message"]
        data = event["data"]
        assert {"rule", "step", "value", "median"} <= set(data), data
        assert data["rule"] == "median"
        assert data["step"] == event["epoch"] == len(run["history"]) < 8, (data, len(run["history"]))
        assert data["value"] == pytest.approx(run["history"][-1]["val_loss"])
        assert data["value"] == pytest.approx(t["intermediate"][str(data["step"])])
        assert data["value"] > data["median"]
        shown = re.search(r"val_loss ([\d.]+) > median ([\d.]+)", event["message"])
        assert float(shown[1]) == pytest.approx(data["value"], rel=1e-3)
        assert float(shown[2]) == pytest.approx(data["median"], rel=1e-3)
        assert t["prune_reason"] == event["message"]
        assert not _events(run, "early_stopped")
    for t in out["trials"]:
        if t["state"] != "pruned":
            run = deck.json("runs", "show", t["run_id"])
            assert run["state"] == "completed" and not _events(run, "pruned"), (t["run_id"], run["state"])


def test_an_early_stopped_trial_is_early_stopped_not_pruned(pruning) -> None:
    deck, _, out = pruning
    assert out["state"] == "completed"
    early = []
    for t in out["trials"]:
        run = deck.json("runs", "show", t["run_id"])
        if run["state"] == "early_stopped":
            early.append(t["number"])
            assert t["state"] == "complete", f"trial {t['number']} early-stopped but is {t['state']} in the study"
            assert t["value"] == pytest.approx(min(h["val_loss"] for h in run["history"]))
            assert _events(run, "early_stopped") and not _events(run, "pruned"), run["events"]
            assert t["prune_reason"] is None
            assert len(run["history"]) < 20
    # Trial 5 (lr 0.2) early-stops while the pruner is active (5 complete trials before it).
    assert [n for n in early if n >= 5], f"early-stopped trials: {early}"
    assert any(t["state"] == "pruned" for t in out["trials"]), "the pruner was active in this study too"


def test_the_median_in_a_prune_reason_is_the_median_the_pruner_compared_with(pruning) -> None:
    # The early-stopping study: its trial 8 is pruned after trials 6 and 7 were, at the same step.
    deck, _, out = pruning
    by_number = {t["number"]: t for t in out["trials"]}
    checked = 0
    for t in out["trials"]:
        if t["state"] != "pruned":
            continue
        run = deck.json("runs", "show", t["run_id"])
        data = _events(run, "pruned")[0]["data"]
        step = str(data["step"])
        # One slot: every lower-numbered trial had finished when this one was pruned.
        earlier = [by_number[n]["intermediate"][step] for n in range(t["number"])
                   if by_number[n]["state"] == "complete" and step in by_number[n]["intermediate"]]
        assert data["median"] == pytest.approx(statistics.median(earlier)), (t["number"], data, earlier)
        checked += 1
    assert checked


# ------------------------------------------------------------------ 6. two workers on a shared PostgreSQL study

PG_PRESET = """
    description = "Random search on digits for the multi-box test: trials of about a second"
    extends = ["base/digits-mlp"]

    [train]
    epochs = 50

    [tune]
    sampler = "random"
    pruner = "none"
    metric = "val_loss"
    direction = "minimize"
    trials = 8
    seed = 0              # fixed: see test_workers_sharing_a_seeded_study_do_not_repeat_each_others_params

    [tune.space]
    "optimizer.lr" = { float = [1e-4, 1e-2], log = true }
    "model.hidden.0" = { int = [64, 256] }
"""

# Creating the study exactly as `trialdeck tune --storage URL --trials 8` does (trialdeck.engine.tuning.study.create_or_load,
# then n_trials in the study's "trialdeck" user attr), minus starting an engine: `tune` always hands the
# study to the local engine, which would ask and run trials itself (and `engine stop` right after would leave
# an interrupted trial RUNNING in the shared storage). Here only the two workers may run trials.
CREATE_STUDY = """
import sys
from trialdeck.engine.presets import resolve
from trialdeck.engine.tuning import study as studies
url, name, preset, n = sys.argv[1:5]
spec = resolve(preset, [])
study = studies.create_or_load(name, url, preset=spec.preset, config=spec.config(), tune=spec.tune)
meta = dict(study.user_attrs["trialdeck"])
meta["n_trials"] = studies.target_trials(spec.tune, int(n))
study.set_user_attr("trialdeck", meta)
"""


@pytest.fixture(scope="module")
def shared_study(tmp_path_factory, pg_url):
    root = tmp_path_factory.mktemp("pg")
    preset = _write_preset(root / "presets" / "shared.toml", PG_PRESET)
    name = f"shared-{uuid.uuid4().hex[:10]}"
    plain_url = pg_url
    b, c, d = Deck(root / "b"), Deck(root / "c"), Deck(root / "d")
    created = subprocess.run([sys.executable, "-c", CREATE_STUDY, pg_url, name, str(preset), "8"], cwd=REPO,
                             env=b.env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    # Two boxes simulated on one: each worker gets one core (its torch threads), as it would have a box.
    workers = {deck: subprocess.Popen(deck.argv("worker", "--storage", pg_url, "--study", name, "--json"), cwd=REPO,
                                      env={**deck.env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
               for deck in (b, c)}
    try:
        outputs = {}
        for deck, proc in workers.items():
            stdout, stderr = proc.communicate(timeout=STUDY_TIMEOUT)
            assert proc.returncode == 0, f"worker --home {deck.home} exited {proc.returncode}:\n{stderr}"
            outputs[deck] = json.loads(stdout)
        shown = d.json("studies", "show", name, "--storage", pg_url, timeout=120)
        yield {"url": pg_url, "plain_url": plain_url, "name": name, "b": b, "c": c, "d": d, "out_b": outputs[b],
               "out_c": outputs[c], "shown": shown}
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_two_workers_share_a_postgresql_study_and_studies_show_merges_it(shared_study) -> None:
    s = shared_study
    name, b, c, d = s["name"], s["b"], s["c"], s["d"]
    done_b = sum(s["out_b"][k] for k in ("complete", "pruned", "fail"))
    done_c = sum(s["out_c"][k] for k in ("complete", "pruned", "fail"))
    assert s["out_b"]["study"] == s["out_c"]["study"] == name
    assert done_b >= 1 and done_c >= 1, f"both workers run trials: b ran {done_b}, c ran {done_c}"
    assert done_b + done_c == 8, f"b ran {done_b} and c ran {done_c}: the study wants 8"

    shown = s["shown"]
    assert shown["name"] == name and shown["preset"].endswith("shared")
    assert "storage_url" not in shown
    trials = shown["trials"]
    assert sorted(t["number"] for t in trials) == list(range(8)), [t["number"] for t in trials]
    host = socket.gethostname()
    for t in trials:
        _assert_trial_doc(t, epochs=50)
        assert t["host"] == host
        assert re.fullmatch(re.escape(host) + r":/.+:r\d+", t["run_id"]), t["run_id"]  # host:workspace:run
    assert shown["best"]["number"] in {t["number"] for t in trials if t["state"] == "complete"}

    # Each trial is one run, in B's or C's workspace, final, with the trial's params in its config.
    local: dict[int, tuple[str, dict[str, Any]]] = {}
    for deck in (b, c):
        for run in deck.store.list_runs():
            assert run["study"] == name
            assert run["trial"] not in local, f"trial {run['trial']} ran twice"
            local[run["trial"]] = (str(deck.home), run)
    assert sorted(local) == list(range(8))
    homes = {home for home, _ in local.values()}
    assert homes == {str(b.home), str(c.home)}
    for t in trials:
        home, run = local[t["number"]]
        assert t["run_id"] == f"{host}:{home}:{run['id']}"
        assert run["state"] in TERMINAL and run["state"] != "cancelled"
        assert run["config"]["optimizer"]["lr"] == pytest.approx(t["params"]["optimizer.lr"])
        assert run["config"]["model"]["hidden"][0] == t["params"]["model.hidden.0"]

    # The Optuna storage itself: 8 finished trials, nothing left RUNNING.
    import optuna

    # Straight through Optuna, as a user's own script would (naming the psycopg2 driver we ship).
    study = optuna.load_study(study_name=name, storage=s["url"].replace("postgresql://", "postgresql+psycopg2://", 1))
    assert len(study.trials) == 8
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED", "FAIL"}

    # D had never seen the study: `studies show` merged it into D's catalogue.
    catalog = _read_catalog(d.ws)
    docs = [x for x in catalog["studies"] if x.get("name") == name]
    assert len(docs) == 1 and docs[0]["n_done"] == 8
    rows = sorted((x for x in catalog["trials"] if x.get("study") == name), key=lambda x: x["number"])
    assert [(r["number"], r["state"], r["run_id"], r["host"]) for r in rows] == \
        [(t["number"], t["state"], t["run_id"], t["host"]) for t in sorted(trials, key=lambda t: t["number"])]
    assert not catalog["runs"], "studies show copies trials, it does not invent local runs"


def test_merged_trials_from_two_workspaces_on_one_host_have_distinct_run_ids(shared_study) -> None:
    trials = shared_study["shown"]["trials"]
    run_ids = [t["run_id"] for t in trials]
    assert len(set(run_ids)) == len(run_ids), run_ids


def test_a_plain_postgresql_url_opens(shared_study, tmp_path: Path) -> None:
    # DESIGN: `--storage postgresql://...` as people write it (SQLAlchemy 2.1 would pick psycopg 3 for a
    # bare postgresql://; trialdeck names its psycopg2 driver itself).
    deck = Deck(tmp_path / "e")
    proc = deck.cli("studies", "show", shared_study["name"], "--storage", shared_study["plain_url"], "--json")
    assert proc.returncode == 0, f"`studies show --storage {shared_study['plain_url']}` exited {proc.returncode}: {proc.stderr}"
    assert len(json.loads(proc.stdout)["trials"]) == 8


def test_workers_sharing_a_seeded_study_do_not_repeat_each_others_params(shared_study) -> None:
    trials = shared_study["shown"]["trials"]
    params = [json.dumps(t["params"], sort_keys=True) for t in trials]
    assert len(set(params)) == len(params), "\n".join(sorted(params))
