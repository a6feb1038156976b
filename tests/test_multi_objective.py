"""Several objectives without processes: the preset keys, dominance against Optuna's own front and
hypervolume, a trial's values from its run, and the pareto_halving pruner's decisions."""

from __future__ import annotations

import math
import random

import numpy as np
import optuna
import pytest

from trialdeck.engine.errors import PresetError
from trialdeck.engine.presets.loader import Composed, validate
from trialdeck.engine.tuning import pareto
from trialdeck.engine.tuning.halving import ParetoHalving, explain
from trialdeck.engine.tuning.objectives import EpochValues, trial_values
from trialdeck.engine.tuning.records import front_numbers

SPACE = {"optimizer.lr": {"float": [0.001, 0.1], "log": True}}
TWO = [{"metric": "val_acc", "direction": "maximize"}, {"metric": "parameters", "direction": "minimize"}]


def spec(tune: dict, **sections):
    return validate(Composed(data={"tune": {"space": SPACE, **tune}, **sections}, chain=["p.toml"]))


def problem(tune: dict, **sections) -> str:
    with pytest.raises(PresetError) as info:
        spec(tune, **sections)
    return info.value.message


# ----------------------------------------------------------------------------- preset keys


def test_objectives_mirror_the_first_into_metric_and_default_to_pareto_halving():
    tune = spec({"objectives": TWO}).tune
    assert (tune.metric, tune.direction, tune.directions) == ("val_acc", "maximize", ["maximize", "minimize"])
    assert tune.pruner.kind == "pareto_halving" and tune.multi
    assert spec({"objectives": TWO}).config()["tune"]["objectives"] == TWO


def test_one_objective_dumps_as_before_so_configs_and_hashes_do_not_move():
    tune = spec({}).config()["tune"]
    assert tune["pruner"] == "median" and "objectives" not in tune
    table = spec({"pruner": {"kind": "median", "n_startup_trials": 2}}).config()["tune"]["pruner"]
    assert table == {"kind": "median", "n_startup_trials": 2}
    assert spec({"pruner": "median"}).content_hash == spec({}).content_hash


@pytest.mark.parametrize(("tune", "expected"), [
    ({"objectives": TWO, "sampler": "cmaes"}, ["p.toml: tune.sampler", "cmaes sampler takes one objective",
                                               "nsga2"]),
    ({"objectives": TWO, "pruner": "median"}, ["tune.pruner", "median pruner compares one objective",
                                               "pareto_halving"]),
    ({"objectives": [TWO[0], {"metric": "peak_memory_mb", "direction": "minimize"}], "pruner": "pareto_halving"},
     ["peak_memory_mb is known only when a run ends"]),
    ({"objectives": [TWO[0], {"metric": "val_accc", "direction": "minimize"}]},
     ["tune.objectives.1.metric", "did you mean 'val_acc'"]),
    ({"objectives": [TWO[0], TWO[0]]}, ["'val_acc' is named twice"]),
    ({"pruner": {"kind": "median", "reduction_factor": 3}}, ["reduction_factor does not apply to the median pruner",
                                                              "n_startup_trials, n_warmup_steps"]),
    ({"pruner": {"kind": "pareto_halving", "reduction_factor": 1}}, ["tune.pruner.reduction_factor"]),
    ({"metric": "val_loss", "objectives": TWO}, ["objectives[0].metric"]),
])
def test_a_bad_objective_or_pruner_is_one_line_naming_the_key(tune, expected):
    message = problem(tune)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


def test_several_objectives_without_a_per_epoch_one_default_to_no_pruner():
    tune = spec({"objectives": [TWO[0], {"metric": "peak_memory_mb", "direction": "minimize"}]}).tune
    assert tune.pruner.kind == "none"


# ----------------------------------------------------------------------------- dominance


def _random_study(directions: list[str], n: int, seed: int) -> optuna.Study:
    study = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = random.Random(seed)
    for _ in range(n):
        t = study.ask()
        x = t.suggest_float("x", 0, 1)
        # Rounded so that ties and duplicates happen, as with integer objectives (parameter counts).
        study.tell(t, [round(x * rng.random() * 4) / 4 + i for i in range(len(directions))])
    return study


@pytest.mark.parametrize("directions", [["minimize", "maximize"], ["maximize", "minimize", "minimize"]])
def test_the_front_is_optunas_best_trials_ties_included(directions):
    study = _random_study(directions, 200, seed=len(directions))
    docs = [{"number": t.number, "state": "complete", "values": list(t.values)} for t in study.trials]
    assert front_numbers(docs, directions) == sorted(t.number for t in study.best_trials)


def test_hypervolume_matches_optunas_in_two_and_three_objectives():
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    for m in (2, 3):
        loss = rng.random((300, m))
        ref = np.full(m, 1.1)
        assert math.isclose(pareto.hypervolume(loss, ref), compute_hypervolume(loss, ref), rel_tol=1e-9)
        history = pareto.hypervolume_history(loss, ref)
        assert math.isclose(history[-1], compute_hypervolume(loss, ref), rel_tol=1e-9)
        assert np.all(np.diff(history) >= -1e-12)


def test_ranks_peel_fronts():
    loss = np.array([[1, 1], [2, 2], [0, 3], [3, 3], [2, 2]], float)
    assert pareto.ranks(loss).tolist() == [0, 1, 0, 2, 1]
    assert pareto.dominators(loss, 3).tolist() == [0, 1, 2, 4]


# ----------------------------------------------------------------------------- values of a trial


def test_a_trial_takes_each_objective_from_its_run_record():
    tune = spec({"objectives": [*TWO, {"metric": "seconds", "direction": "minimize"}], "reduce": "best"}).tune
    record = {"n_params": 4810, "history": [{"epoch": 1, "val_acc": 0.8, "seconds": 1.5},
                                            {"epoch": 2, "val_acc": 0.9, "seconds": 1.25}]}
    assert trial_values(tune, record) == ([0.9, 4810.0, 2.75], None)
    values, why = trial_values(tune, {"history": record["history"]})
    assert values is None and "parameter count" in why


def test_epoch_values_know_the_parameter_count_and_the_time_so_far():
    tune = spec({"objectives": [*TWO, {"metric": "seconds", "direction": "minimize"}]}).tune
    values = EpochValues(tune)
    values.start({"params": 610, "history": [{"epoch": 1, "seconds": 2.0}]})
    assert values.epoch({"epoch": 2, "val_acc": 0.5, "seconds": 1.0}) == [0.5, 610.0, 3.0]
    assert values.epoch({"epoch": 3, "seconds": 1.0}) is None  # no val_acc this epoch


# ----------------------------------------------------------------------------- the pruner


def test_pareto_halving_keeps_the_rungs_front_and_names_who_dominates():
    rule = ParetoHalving(("maximize", "minimize"), min_resource=1, reduction_factor=3, n_startup_trials=2)
    others = {0: {1: [0.9, 100.0]}, 1: {1: [0.8, 50.0]}, 2: {1: [0.95, 400.0]}, 3: {1: [0.5, 10.0]},
              4: {1: [0.85, 100.0]}, 5: {1: [0.7, 150.0]}}
    # 0.6 at 200 parameters: trials 0, 1, 4 and 5 are better on both.
    verdict = rule.decide(9, 1, {1: [0.6, 200.0]}, others)
    assert verdict is not None and verdict.prune and verdict.dominated_by == (0, 1, 4, 5)
    message, data = explain(verdict, ["val_acc", "parameters"])
    assert "dominated by trials #0, #1, #4, #5" in message and data["rule"] == "pareto_halving"
    # Outside the top third, but only reduction_factor trials beat it: near the front, it goes on.
    near = rule.decide(9, 1, {1: [0.75, 120.0]}, others)
    assert near.rank > 0 and near.dominated_by == (0, 1, 4) and not near.prune
    # On the front (fewest parameters): never pruned.
    assert not rule.decide(9, 1, {1: [0.2, 5.0]}, others).prune
    # Epoch 2 is no rung; epoch 3 is the next, compared with the trials that reached it.
    assert rule.decide(9, 2, {1: [0.2, 5.0], 2: [0.3, 5.0]}, others) is None
    # Too few others at a rung: no decision.
    assert rule.decide(9, 1, {1: [0.0, 999.0]}, {0: {1: [0.9, 1.0]}}) is None


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "nsga3", "random", "qmc", "grid"])
def test_every_sampler_but_cmaes_asks_and_tells_two_objectives(sampler):
    from trialdeck.engine.tuning.samplers import make_sampler
    from trialdeck.engine.tuning.space import sample

    space = {"model.hidden": {"choices": [[16], [32]]}, "optimizer.lr": {"choices": [0.01, 0.1]}} \
        if sampler == "grid" else SPACE
    tune = validate(Composed(data={"tune": {"space": space, "sampler": sampler, "objectives": TWO, "seed": 0}},
                             chain=["p.toml"])).tune
    study = optuna.create_study(directions=tune.directions, sampler=make_sampler(tune))
    for _ in range(4):
        trial = study.ask()
        params = sample(trial, tune)
        study.tell(trial, [0.5 + len(str(params)) / 1000, 100.0])
    assert len(study.best_trials) >= 1


def test_a_missing_driver_names_the_extra_that_installs_it(monkeypatch):
    import importlib.util

    from trialdeck.engine.errors import BadInput
    from trialdeck.engine.tuning import storages

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("psycopg2", "MySQLdb", "pymysql") else real(name, *a))
    for url, extra in (("postgresql://me@db/optuna", "trialdeck[postgres]"), ("mysql://me@db/optuna", "trialdeck[mysql]")):
        with pytest.raises(BadInput) as info:
            storages.open_readonly(url)
        assert url.split("://")[0] in info.value.message and f"pip install '{extra}'" in info.value.message
