"""kill -9 of the engine during a study, at moments chosen from the engine's own progress: before it
created the study or asked its first trial, while a trial trains, after a trial wrote a checkpoint,
after a trial ended, and right after a trial was queued. After each kill the catalogue, the metric
streams and the Optuna journal parse, and `trialdeck studies list` brings the engine back (the README's
promise). In the end every trial is final, none lost or duplicated, completed trials have gapless
histories, and nothing is left RUNNING in Optuna.

The moments are events of the study itself (trial k reached a state), each reached because the engine
was revived after the previous kill, so neither a slow nor a fast box can run out of study."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.deck import cli, gone, journal_trials, until
from trialdeck.engine.catalogue.metrics import read_jsonl
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.workspace import Workspace

pytestmark = pytest.mark.slow

TRIALS = 6
EPOCHS = 12
PRESET = f"""\
extends = ["base/digits-mlp"]
[model]
hidden = [64]
[train]
epochs = {EPOCHS}
checkpoint_seconds = 0.2
[tune]
sampler = "random"
pruner = "none"
metric = "val_loss"
trials = {TRIALS}
seed = 3
[tune.space]
"optimizer.lr" = {{ float = [1e-3, 1e-2], log = true }}
"""
TERMINAL = {"completed", "early_stopped", "pruned", "failed", "cancelled"}


def engine_pid(ws: Workspace) -> int | None:
    try:
        return json.loads(ws.pid_path.read_text())["pid"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, ws: Workspace) -> Any:
    def tail() -> str:
        log = ws.engine_log.read_text(errors="replace")[-3000:] if ws.engine_log.exists() else "(no engine.log)"
        return f"engine.log tail:\n{log}"

    return until(predicate, timeout, what, context=tail)


def kill_engine(ws: Workspace, study: str) -> None:
    """SIGKILL the engine, wait until it is gone, and check that every file it writes still parses."""
    pid = engine_pid(ws)
    assert pid is not None, "no engine to kill"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), 30, f"engine {pid} to die", ws)
    json.loads(ws.catalog_path.read_bytes())  # the catalogue parses after every kill
    for run_dir in ws.runs_dir.iterdir():
        if (run_dir / "metrics.jsonl").exists():
            read_jsonl(run_dir / "metrics.jsonl")  # so do the metric streams (a torn last line is skipped)
    if (ws.studies_dir / f"{study}.journal").exists():
        journal_trials(ws, study)  # and the Optuna journal


def revive(home: Path, ws: Workspace) -> None:
    """Any `studies` command brings a dead engine back while a study wants trials."""
    listed = cli(home, "studies", "list")
    assert listed.returncode == 0, listed.stderr
    assert "started the engine" in listed.stderr, f"`studies list` did not revive the engine:\n{listed.stderr}"
    wait_for(lambda: engine_pid(ws), 30, "the revived engine's pid file", ws)


def start_study_on_a_frozen_engine(home: Path, ws: Workspace, *tune_args: str) -> None:
    """`trialdeck tune` while the engine is frozen (SIGSTOP), then kill -9: the study is recorded as
    wanted, but the engine never created its Optuna study nor asked a trial."""
    started = cli(home, "engine", "start")
    assert started.returncode == 0, started.stderr
    pid = engine_pid(ws)
    os.kill(pid, signal.SIGSTOP)
    try:
        tuned = cli(home, "tune", *tune_args, "--json")
        assert tuned.returncode == 0, tuned.stderr
    finally:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: gone(pid), 30, f"engine {pid} to die", ws)


def study_runs(ws: Workspace, study: str) -> dict[int, dict[str, Any]]:
    runs = Store(ws).list_runs(omit=("config", "history", "events"))
    return {r["trial"]: r for r in runs if r.get("study") == study}


def epochs_streamed(ws: Workspace, run_id: str) -> int:
    path = ws.runs_dir / run_id / "metrics.jsonl"
    return sum(1 for rec in read_jsonl(path)[0] if rec.get("kind") == "epoch") if path.exists() else 0


def test_a_study_killed_before_its_first_trial_comes_back_on_studies_list(home):
    """The newcomer's report: `tune seed/random-search --trials 4 --study kk`, kill -9 of the engine
    before it queued a trial; `studies list` said "kk running 0/4" for ever and `studies show kk` said
    "no study 'kk' in journal"."""
    ws = Workspace(home)
    start_study_on_a_frozen_engine(home, ws, "seed/random-search", "--trials", "4", "--study", "kk",
                                   "--set", "train.epochs=2")
    store = Store(ws)
    assert store.get_study("kk")["state"] == "running"
    assert not study_runs(ws, "kk"), "the frozen engine queued a trial"
    assert not (ws.studies_dir / "kk.journal").exists(), "the frozen engine created the study"

    # A study the engine has not created yet is shown, not refused (without reviving, to see it so).
    shown = cli(home, "studies", "show", "kk", env={"TRIALDECK_NO_AUTOSTART": "1"})
    assert shown.returncode == 0, shown.stderr
    assert "0/4" in shown.stdout and "waiting for the engine" in shown.stdout, shown.stdout

    revive(home, ws)
    wait_for(lambda: (store.get_study("kk") or {}).get("state") == "completed", 300, "study kk to complete", ws)
    final = cli(home, "studies", "show", "kk", "--json")
    assert final.returncode == 0, final.stderr
    study = json.loads(final.stdout)
    assert sorted(t["number"] for t in study["trials"]) == [0, 1, 2, 3]
    assert all(t["state"] in ("complete", "pruned") for t in study["trials"]), study["trials"]


def test_kill_9_at_moments_chosen_from_the_studys_progress(home, tmp_path):
    preset = tmp_path / "killed.toml"
    preset.write_text(PRESET)
    ws = Workspace(home)
    name = "killed"

    def run_of(k: int) -> dict[str, Any] | None:
        return study_runs(ws, name).get(k)

    # Moment 0: before the engine created the study or asked its first trial.
    start_study_on_a_frozen_engine(home, ws, str(preset), "--study", name)
    moments: list[tuple[str, Callable[[], Any]]] = [
        ("trial 0 is training (an epoch streamed)",
         lambda: (r := run_of(0)) and epochs_streamed(ws, r["id"]) >= 1),
        ("trial 1 wrote a checkpoint",
         lambda: (r := run_of(1)) and (ws.runs_dir / r["id"] / "checkpoint.pt").exists()),
        ("trial 2 ended", lambda: (r := run_of(2)) and r["state"] in TERMINAL),
        ("trial 4 was queued", lambda: run_of(4)),
    ]
    kills = ["before the first trial"]
    revive(home, ws)
    for what, reached in moments:
        wait_for(reached, 300, what, ws)
        kill_engine(ws, name)
        kills.append(what)
        revive(home, ws)
    assert len(kills) == 5, kills

    final = cli(home, "tune", str(preset), "--study", name, "--wait", "--json", timeout=600)
    assert final.returncode == 0, final.stderr
    study = json.loads(final.stdout)
    assert study["state"] == "completed"
    assert sorted(t["number"] for t in study["trials"]) == list(range(TRIALS)), study["trials"]
    run_ids = [t["run_id"] for t in study["trials"]]
    assert len(set(run_ids)) == TRIALS, run_ids
    runs = [r for r in Store(ws).list_runs() if r.get("study") == name]
    assert len(runs) == TRIALS and all(r["state"] in TERMINAL for r in runs), [(r["id"], r["state"]) for r in runs]
    for r in runs:
        if r["state"] == "completed":
            assert [h["epoch"] for h in r["history"]] == list(range(1, EPOCHS + 1)), (r["id"], r["history"])
    states = {t.state.name for t in journal_trials(ws, name)}
    assert states <= {"COMPLETE", "PRUNED", "FAIL"}, states
