"""Registries from a preset's `tune.sampler` / `tune.pruner` strings to Optuna objects,
and the words that explain a pruning decision with its numbers."""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from trialdeck.engine.kinds import Pruner, Sampler
from trialdeck.engine.presets.schema import TuneConfig
from trialdeck.engine.tuning.halving import ParetoHalving
from trialdeck.engine.tuning.space import grid


class ExhaustibleGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its `study.stop()` on the last grid point: that call only works
    inside `study.optimize` and raises in ask-and-tell use. The driver stops a grid study
    itself once it has asked as many trials as the grid has points."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


SAMPLERS: dict[Sampler, Callable[[TuneConfig], optuna.samplers.BaseSampler]] = {
    "grid": lambda t: ExhaustibleGridSampler(grid(t), seed=t.seed),
    "random": lambda t: optuna.samplers.RandomSampler(seed=t.seed),
    "tpe": lambda t: optuna.samplers.TPESampler(seed=t.seed),
    "cmaes": lambda t: optuna.samplers.CmaEsSampler(seed=t.seed, warn_independent_sampling=False),
    "qmc": lambda t: optuna.samplers.QMCSampler(seed=t.seed, warn_independent_sampling=False),
    "nsga2": lambda t: optuna.samplers.NSGAIISampler(seed=t.seed),
    "nsga3": lambda t: optuna.samplers.NSGAIIISampler(seed=t.seed),
}

PRUNERS: dict[Pruner, Callable[[dict[str, int]], optuna.pruners.BasePruner]] = {
    "none": lambda s: optuna.pruners.NopPruner(),
    "median": lambda s: optuna.pruners.MedianPruner(**{"n_startup_trials": 5, "n_warmup_steps": 1, **s}),
    "hyperband": lambda s: optuna.pruners.HyperbandPruner(**{"min_resource": 1, **s}),
    "successive_halving": lambda s: optuna.pruners.SuccessiveHalvingPruner(**{"min_resource": 1, **s}),
    # trialdeck's own (tuning.halving): Optuna cannot prune a multi-objective study, so the trial
    # reporter asks it, and Optuna's own pruner does nothing.
    "pareto_halving": lambda s: optuna.pruners.NopPruner(),
}


def make_sampler(tune: TuneConfig) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():  # QMC and NSGA-III are "experimental" in Optuna: not the user's concern
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[tune.sampler](tune)


def make_pruner(tune: TuneConfig) -> optuna.pruners.BasePruner:
    return PRUNERS[tune.pruner.kind](tune.pruner.settings)


def pareto_halving(tune: TuneConfig) -> ParetoHalving | None:
    """The study's pareto_halving pruner with its settings; None for any other pruner."""
    if tune.pruner.kind != "pareto_halving":
        return None
    return ParetoHalving(tuple(tune.directions), **tune.pruner.settings)


def explain_prune(tune: TuneConfig, study: optuna.Study, step: int, trial: optuna.trial.FrozenTrial | None,
                  value: float) -> tuple[str, dict[str, Any]]:
    """Why the pruner stopped this trial, in words and the numbers it compared.

    The median pruner compares the trial's best value so far with the median, at this step,
    of the completed trials (Optuna's PercentilePruner); the halving pruners rank the trial
    among the trials that reached this rung."""
    maximize = tune.direction == "maximize"
    seen = list(trial.intermediate_values.values()) if trial is not None else [value]
    best_so_far = (max if maximize else min)(seen) if seen else value
    worse = "<" if maximize else ">"
    pruner = tune.pruner.kind
    if pruner == "median":
        finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        completed = [t.intermediate_values[step] for t in finished if step in t.intermediate_values]
        if completed:
            median = statistics.median(completed)
            return (f"median pruner at epoch {step}: {tune.metric} {best_so_far:.4g} {worse} median {median:.4g} "
                    f"of {len(completed)} completed trials",
                    {"rule": "median", "step": step, "value": best_so_far, "median": median, "n_trials": len(completed)})
    others = [t.intermediate_values[step]
              for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
              if step in t.intermediate_values and (trial is None or t.number != trial.number)]
    if others:
        ordered = sorted(others, reverse=maximize)
        rank = sum(1 for o in ordered if (o > value if maximize else o < value)) + 1
        return (f"{pruner.replace('_', ' ')} pruner at epoch {step}: {tune.metric} {value:.4g} ranks "
                f"{rank} of {len(others) + 1} trials at this rung (best {ordered[0]:.4g})",
                {"rule": pruner, "step": step, "value": value, "rank": rank, "n_trials": len(others) + 1,
                 "best": ordered[0]})
    return (f"{pruner} pruner at epoch {step}: {tune.metric} {value:.4g}",
            {"rule": pruner, "step": step, "value": value})
