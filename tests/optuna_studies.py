"""Optuna studies made with plain Optuna (nothing from trialdeck is imported here), the way a
researcher's own script leaves them in an SQLite file, a journal file or PostgreSQL.

- "single": one objective (minimise), intermediate values at every step, a pruned
  trial and a failed one, a categorical and a log-scale parameter.
- "two": maximise accuracy, minimise size; `set_metric_names` names them.
- "three": three objectives, not named (Optuna calls them values_0..2).

`python tests/optuna_studies.py STORAGE NAME N` appends N trials to a two-objective study
NAME, one every 0.2 s: another process writing a study while trialdeck shows it.
"""

from __future__ import annotations

import math
import sys
import time
import warnings

import optuna

optuna.logging.set_verbosity(optuna.logging.ERROR)


def storage_of(where: str):
    """An SQLAlchemy URL as it is; anything else is a journal file's path."""
    if "://" in where:
        return where
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(where))


def single(storage) -> optuna.Study:
    study = optuna.create_study(study_name="single", storage=storage, sampler=optuna.samplers.TPESampler(seed=1))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        act = trial.suggest_categorical("act", ["relu", "tanh", "gelu"])
        units = trial.suggest_int("units", 16, 256)
        loss = (math.log10(x) + 2.5) ** 2 + (0.3 if act == "tanh" else 0.0) + 8.0 / units
        for step in range(5):
            trial.report(loss + 1.0 / (step + 1), step)
        if trial.number == 3:
            raise optuna.TrialPruned()
        if trial.number == 5:
            raise ValueError("diverged")
        return loss

    study.optimize(objective, n_trials=16, catch=(ValueError,))
    return study


def two(storage, name: str = "two", n: int = 24, seed: int = 2) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"],
                                sampler=optuna.samplers.NSGAIISampler(seed=seed, population_size=8),
                                load_if_exists=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names(["accuracy", "size"])
    study.optimize(lambda t: _two(t), n_trials=n)
    return study


def _two(trial: optuna.Trial) -> tuple[float, float]:
    width = trial.suggest_int("width", 8, 512, log=True)
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    return round(0.99 - 4.0 / width - 0.05 * abs(math.log10(lr) + 2.5), 6), float(width * 10)


def three(storage) -> optuna.Study:
    study = optuna.create_study(study_name="three", storage=storage,
                                directions=["minimize", "minimize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=3))

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        a, b = trial.suggest_float("a", 0, 1), trial.suggest_float("b", 0, 1)
        return round(a, 3), round(1 - a * b, 3), round(b, 3)

    study.optimize(objective, n_trials=30)
    return study


def fixed(storage, name: str = "size-vs-accuracy", n: int = 60) -> optuna.Study:
    """Two objectives (accuracy up, size down), three parameters, and fixed timestamps (so a
    screenshot of it is the same every time): trials added with `study.add_trial`."""
    import datetime
    import random

    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names(["accuracy", "size_k"])
    dists = {"width": optuna.distributions.IntDistribution(16, 512, log=True),
             "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "act": optuna.distributions.CategoricalDistribution(["relu", "gelu", "tanh"])}
    rng = random.Random(3)
    t0 = datetime.datetime(2026, 5, 1, 12, 0, 0)
    for number in range(n):
        width, lr, act = int(16 * 2 ** (rng.random() * 5)), 10 ** (-4 + 3 * rng.random()), rng.choice(dists["act"].choices)
        accuracy = 0.97 - 8 / width - abs(math.log10(lr) + 2.5) * 0.04 - (0.02 if act == "tanh" else 0) + rng.random() / 100
        start = t0 + datetime.timedelta(minutes=number)
        study.add_trial(optuna.trial.FrozenTrial(
            number=number, trial_id=number, state=optuna.trial.TrialState.COMPLETE, value=None,
            values=[round(accuracy, 4), round(width * 0.8 + 10, 1)], datetime_start=start,
            datetime_complete=start + datetime.timedelta(seconds=30 + number), params={"width": width, "lr": lr, "act": act},
            distributions=dists, user_attrs={}, system_attrs={}, intermediate_values={}))
    return study


def build(where: str) -> None:
    storage = storage_of(where)
    single(storage)
    two(storage)
    three(storage)


if __name__ == "__main__":
    where, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    storage = storage_of(where)
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=5), load_if_exists=True)
    for _ in range(n):
        study.optimize(_two, n_trials=1)
        time.sleep(0.2)
