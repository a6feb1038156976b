"""Ensemble trials through the engine: a random study whose trials share one architecture
trains them as one ensemble per worker, and each trial is still its own run and trial."""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.slow

PRESET = """
    description = "test: random search over optimiser settings only, so trials can ensemble"
    extends = ["base/digits-mlp"]

    [train]
    epochs = {epochs}

    # SGD: Adam turns float rounding in near-zero gradients into whole steps, so Adam trials
    # match a lone run only to ~1e-3 after an epoch (a thread count alone does as much).
    [optimizer]
    name = "sgd"
    momentum = 0.9

    [tune]
    sampler = "random"
    pruner = "none"
    seed = 3
    trials = {trials}

    [tune.space]
    "optimizer.lr" = {{ float = [1e-3, 5e-2], log = true }}
    "regularization.l2" = {{ float = [0.0, 1e-3] }}
    "train.seed" = {{ int = [0, 1000] }}
"""


def preset(tmp_path, epochs: int, trials: int, *, ensemble: bool = True) -> str:
    path = tmp_path / f"ens-{epochs}-{trials}-{ensemble}.toml"
    text = textwrap.dedent(PRESET.format(epochs=epochs, trials=trials))
    if not ensemble:
        text = text.replace('trials = ', 'ensemble = false\ntrials = ')
    path.write_text(text)
    return str(path)


def test_a_random_study_trains_its_trials_as_ensembles_with_each_trial_recorded(deck, tmp_path):
    from trialdeck.engine.presets import RunSpec
    from trialdeck.engine.training.trainer import train

    out = deck.json("tune", preset(tmp_path, 3, 6), "--study", "ens", "--wait", timeout=300)
    assert out["state"] == "completed", out.get("error")
    assert out["counts"] == {"complete": 6}
    runs = sorted(deck.store.list_runs(), key=lambda r: r["trial"])
    assert len(runs) == 6 and all(r["state"] == "completed" and len(r["history"]) == 3 for r in runs)
    started = [next(e["message"] for e in r["events"] if e["kind"] == "started") for r in runs]
    assert all("of an ensemble of 6" in m for m in started), started
    # Each member ends where the same configuration trained alone ends (batched matmuls round
    # differently; nothing else differs).
    for run, trial in zip(runs, sorted(out["trials"], key=lambda t: t["number"]), strict=True):
        alone = train(RunSpec.model_validate(run["config"]))
        assert [h["val_loss"] for h in run["history"]] == pytest.approx(
            [h.val_loss for h in alone.history], rel=1e-4)
        assert trial["value"] == pytest.approx(min(h.val_loss for h in alone.history), rel=1e-4)
        assert trial["run_id"] == run["id"] and trial["state"] == "complete"
        assert (deck.ws.runs_dir / run["id"] / "checkpoint.pt").exists()


def test_cancelling_one_member_leaves_the_rest_of_its_ensemble_running(deck, tmp_path):
    deck.json("tune", preset(tmp_path, 400, 4), "--study", "long")
    runs = deck.wait(lambda: [r for r in deck.store.list_runs("running") if r.get("study") == "long"] or None
                     if len(deck.store.list_runs("running")) == 4 else None, 120, "four running members")
    victim = sorted(r["id"] for r in runs)[1]
    deck.ok("queue", "cancel", victim)
    deck.wait(lambda: deck.store.get_run(victim)["state"] == "cancelled", 30, f"{victim} cancelled")
    assert len(deck.store.get_run(victim)["history"]) < 400, "the member was cancelled, not left to finish"
    others = [r["id"] for r in runs if r["id"] != victim]
    assert all(deck.store.get_run(i)["state"] == "running" for i in others)
    deck.ok("studies", "stop", "long")
    deck.wait(lambda: all(deck.store.get_run(i)["state"] == "cancelled" for i in others), 30, "the others cancelled")
    # Optuna has no cancelled state: the study says FAIL, and why.
    deck.wait(lambda: deck.json("studies", "show", "long")["state"] == "stopped", 30, "the study stopped")
    trials = deck.json("studies", "show", "long")["trials"]
    assert [t["state"] for t in trials] == ["fail"] * 4
    assert all(t["fail_reason"].startswith("cancelled") for t in trials), trials
    assert "(cancelled" in deck.ok("studies", "show", "long").stdout


def test_ensemble_false_trains_one_run_per_trial(deck, tmp_path):
    out = deck.json("tune", preset(tmp_path, 2, 3, ensemble=False), "--study", "solo", "--wait", timeout=300)
    assert out["counts"] == {"complete": 3}
    for r in deck.store.list_runs():
        assert [e["message"] for e in r["events"] if e["kind"] == "started"] == ["started on cpu.0"]


def test_engine_stop_interrupts_every_member_and_the_next_engine_resumes_each_alone(deck, tmp_path):
    deck.json("tune", preset(tmp_path, 400, 3), "--study", "stopme")

    def running() -> list[str]:
        ids = [r["id"] for r in deck.store.list_runs("running")]
        return ids if len(ids) == 3 and all(deck.store.get_run(i)["history"] for i in ids) else []

    members = deck.wait(running, 120, "three members past their first epoch")
    deck.ok("engine", "stop", timeout=90)
    for run_id in members:
        record = deck.store.get_run(run_id)
        assert record["state"] == "interrupted", record["state"]
        assert (deck.ws.runs_dir / run_id / "checkpoint.pt").exists()
    deck.ok("engine", "start")
    # One slot: a member with a checkpoint resumes with train(), alone, one after another.
    first = deck.wait(lambda: next((i for i in members if any(e["kind"] == "resumed" for e in
                                                               deck.store.get_run(i)["events"])), None),
                      120, "a member resumed from its checkpoint")
    started = [e["message"] for e in deck.store.get_run(first)["events"] if e["kind"] == "started"]
    assert "ensemble of 3" in started[0] and started[-1] == "started on cpu.0", started
    others = [i for i in members if i != first]
    assert all(deck.store.get_run(i)["state"] == "queued" for i in others)
    assert all(any(e["kind"] == "requeued" for e in deck.store.get_run(i)["events"]) for i in others)
    deck.ok("studies", "stop", "stopme")
    deck.wait(lambda: all(deck.store.get_run(i)["state"] == "cancelled" for i in members), 60, "members cancelled")
