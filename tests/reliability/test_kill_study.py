"""kill -9 of the engine at many seeded random moments during a study: after each kill the catalogue,
the metric streams and the Optuna journal parse; in the end every trial is final, none lost or
duplicated, and nothing is left RUNNING."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest

from tests.deck import journal_trials
from tests.reliability.conftest import cli
from trialdeck.engine.catalogue.metrics import read_jsonl
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.workspace import Workspace

pytestmark = pytest.mark.slow

PRESET = """\
extends = ["base/digits-mlp"]
[model]
hidden = [64]
[train]
epochs = 25
checkpoint_seconds = 0.2
[tune]
sampler = "random"
pruner = "none"
metric = "val_loss"
trials = 8
seed = 3
[tune.space]
"optimizer.lr" = { float = [1e-3, 1e-2], log = true }
"""
TERMINAL = {"completed", "early_stopped", "pruned", "failed", "cancelled"}


def test_kill_9_at_random_moments_during_a_study(home, tmp_path):
    preset = tmp_path / "killed.toml"
    preset.write_text(PRESET)
    started = cli(home, "tune", str(preset), "--study", "killed", "--json")
    assert started.returncode == 0, started.stderr
    ws = Workspace(home)
    rng = random.Random(20261124)
    kills = 0
    deadline = time.monotonic() + 240
    while kills < 5 and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.4, 1.5))
        try:
            pid = json.loads(ws.pid_path.read_text())["pid"]
        except (FileNotFoundError, ValueError):
            cli(home, "studies", "list")  # revives the engine when runs are pending
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        kills += 1
        time.sleep(0.2)
        json.loads(ws.catalog_path.read_bytes())  # the catalogue parses after every kill
        for run_dir in ws.runs_dir.iterdir():
            read_jsonl(run_dir / "metrics.jsonl")  # so do the metric streams (a torn last line is skipped)
        journal_trials(ws, "killed")  # and the Optuna journal
        revived = cli(home, "studies", "list")  # any command brings the engine back
        assert revived.returncode == 0, revived.stderr
    assert kills >= 3, "the study ended before enough kills; make the trials longer"

    final = cli(home, "tune", str(preset), "--study", "killed", "--wait", "--json", timeout=400)
    assert final.returncode == 0, final.stderr
    study = json.loads(final.stdout)
    assert study["state"] == "completed"
    numbers = [t["number"] for t in study["trials"]]
    assert sorted(numbers) == list(range(8)), numbers
    run_ids = [t["run_id"] for t in study["trials"]]
    assert len(set(run_ids)) == 8, run_ids
    runs = [r for r in Store(ws).list_runs() if r.get("study") == "killed"]
    assert len(runs) == 8 and all(r["state"] in TERMINAL for r in runs), [(r["id"], r["state"]) for r in runs]
    for r in runs:
        if r["state"] == "completed":
            assert [h["epoch"] for h in r["history"]] == list(range(1, 26)), (r["id"], [h["epoch"] for h in r["history"]])
    states = {t.state.name for t in journal_trials(ws, "killed")}
    assert states <= {"COMPLETE", "PRUNED", "FAIL"}, states
