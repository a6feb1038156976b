"""Several objectives end to end: a real engine study of val_acc against the parameter count over
`model.hidden` (both values recorded per trial, `studies best --json` the front Optuna computes,
the pareto_halving pruner stopping a hopeless trial and naming who dominates it), and the pruner
replayed on recorded curves (tests/fixtures/mo_curves.json): it stops trials and keeps every trial
that ends on the front."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import optuna
import pytest

from tests.deck import Deck
from tests.deck import journal_trials as _journal_trials
from trialdeck.engine.tuning import pareto
from trialdeck.engine.tuning.halving import ParetoHalving

FIXTURE = Path(__file__).parent / "fixtures" / "mo_curves.json"


def replay(curves: dict, rule: ParetoHalving) -> dict[int, tuple[str, int]]:
    """Each recorded trial run again in order on one slot, the pruner asked after every epoch
    but the last, as the engine's trial reporter asks it: (its end, epochs it trained)."""
    epochs = curves["epochs"]
    seen: dict[int, dict[int, list[float]]] = {}
    out = {}
    for t in curves["trials"]:
        curve = {int(k): v for k, v in t["steps"].items()}
        steps: dict[int, list[float]] = {}
        out[t["number"]] = ("complete", epochs)
        for epoch in range(1, epochs + 1):
            steps[epoch] = curve[epoch]
            verdict = rule.decide(t["number"], epoch, steps, seen) if epoch < epochs else None
            if verdict is not None and verdict.prune:
                out[t["number"]] = ("pruned", epoch)
                break
        seen[t["number"]] = steps
    return out


def test_replayed_on_recorded_curves_it_prunes_and_keeps_every_trial_of_the_front():
    curves = json.loads(FIXTURE.read_text())
    out = replay(curves, ParetoHalving(tuple(curves["directions"])))  # the defaults a preset gets
    pruned = [n for n, (state, _) in out.items() if state == "pruned"]
    assert len(pruned) >= 5, out
    assert [n for n in curves["pareto"] if out[n][0] != "complete"] == []
    kept = [t["values"] for t in curves["trials"] if out[t["number"]][0] == "complete"]
    loss_all = pareto.losses([t["values"] for t in curves["trials"]], curves["directions"])
    ref = pareto.reference_point(loss_all)
    assert pareto.hypervolume(pareto.losses(kept, curves["directions"]), ref) == \
        pytest.approx(pareto.hypervolume(loss_all, ref))


PRESET = """
    extends = ["base/digits-mlp"]
    [train]
    epochs = 3
    [tune]
    sampler = "grid"
    seed = 11
    ensemble = false
    objectives = [{ metric = "val_acc", direction = "maximize" }, { metric = "parameters", direction = "minimize" }]
    [tune.pruner]
    kind = "pareto_halving"
    reduction_factor = 2
    [tune.space]
    "model.hidden" = { choices = [[16], [32]] }
    # 1e-5 learns nothing in three epochs: asked fifth (seed 11), it trails four trials of its size or smaller.
    "optimizer.lr" = { choices = [0.03, 0.02, 0.01, 0.00001] }
    """


@pytest.mark.slow
def test_a_two_objective_study_through_the_engine(tmp_path):
    deck = Deck(tmp_path / "ws")
    preset = tmp_path / "size-vs-accuracy.toml"
    preset.write_text(textwrap.dedent(PRESET).lstrip())
    try:
        proc = deck.cli("tune", str(preset), "--wait", "--json", timeout=420)
        assert proc.returncode == 0, f"{proc.stderr}\n{deck.log_tail()}"
        study = json.loads(proc.stdout)
        best = deck.json("studies", "best", "size-vs-accuracy")
        pick = best["pareto"][0]
        saved = deck.json("studies", "best", "size-vs-accuracy", "--trial", str(pick["number"]), "--save-preset", "small")
        several = deck.cli("studies", "best", "size-vs-accuracy", "--save-preset", "any")
        preset = deck.json("presets", "show", "small")
    finally:
        deck.stop()
    # One trial of the front, saved as a preset: the study's config with its params.
    assert saved["number"] == pick["number"] and saved["values"] == pick["values"]
    assert preset["config"]["model"]["hidden"] == pick["params"]["model.hidden"]
    assert preset["config"]["optimizer"]["lr"] == pick["params"]["optimizer.lr"] and "tune" not in preset["config"]
    assert several.returncode == 2 and "pick one with --trial N" in several.stderr
    assert study["directions"] == ["maximize", "minimize"] and study["pruner"] == "pareto_halving"
    trials = {t["number"]: t for t in study["trials"]}
    assert len(trials) == 8
    frozen = {t.number: t for t in _journal_trials(deck.ws, "size-vs-accuracy")}
    for n, t in trials.items():
        params = 64 * t["params"]["model.hidden"][0] + t["params"]["model.hidden"][0] + \
            t["params"]["model.hidden"][0] * 10 + 10
        if t["state"] == "complete":  # both values, per trial, as Optuna holds them
            assert t["values"] == list(frozen[n].values) and t["values"][1] == params
        assert all(len(v) == 2 and v[1] == params for v in t["intermediate"].values()), t
    # `studies best --json`: the front Optuna computes.
    on_front = optuna.study._multi_objective._get_pareto_front_trials_by_trials(
        list(frozen.values()), [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE])
    assert [t["number"] for t in best["pareto"]] == sorted(t.number for t in on_front) == study["pareto"]
    assert all(t["values"] == list(frozen[t["number"]].values) for t in best["pareto"])
    # The hopeless trial is pruned, and its reason names the trials that dominate it.
    pruned = [t for t in trials.values() if t["state"] == "pruned"]
    assert pruned, [(t["params"], t["state"]) for t in trials.values()]
    for t in pruned:
        assert t["params"]["optimizer.lr"] == 0.00001
        reason = t["prune_reason"]
        assert reason.startswith("pareto halving at epoch 1: val_acc") and "is dominated by trials #" in reason
        named = [int(x) for x in reason.split("dominated by trials ")[1].split(" (")[0].replace("#", "").split(", ")]
        mine = t["intermediate"]["1"]
        for n in named:
            theirs = trials[n]["intermediate"]["1"]
            assert theirs[0] >= mine[0] and theirs[1] <= mine[1] and theirs != mine
        run = deck.store.get_run(t["run_id"])
        event = next(e for e in run["events"] if e["kind"] == "pruned")
        assert event["data"]["rule"] == "pareto_halving" and sorted(event["data"]["dominated_by"]) == sorted(named)
