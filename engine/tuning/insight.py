"""Parameter importances of any Optuna study: per objective, or for reaching the Pareto front.

PED-ANOVA (Optuna's `PedAnovaImportanceEvaluator`) by default: it reads the
complete trials' params against a top quantile of one target, so it stays
well under a second at 10,000 trials, where fANOVA (a random forest) takes
minutes; fANOVA stays selectable. For one objective of several, the target is
that objective (negated when it is maximised: PED-ANOVA ranks lower as
better); with no objective named, PED-ANOVA ranks trials by non-dominated
sorting, so the importances say what it takes to reach the front.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

EVALUATORS = ("ped_anova", "fanova")
"""Importance evaluators a person can pick (the views, `studies show`)."""


@dataclass(frozen=True)
class Importances:
    values: dict[str, float]
    """Parameter -> importance (normalised to sum 1), largest first; empty when none."""
    evaluator: str
    objective: int | None
    """The objective's index; None: reaching the Pareto front."""
    note: str = ""
    """Why `values` is empty (too few trials, every parameter constant, ...)."""


def importances(study, *, objective: int | None = 0, evaluator: str = "ped_anova") -> Importances:
    """Importances of `study`'s params for `objective` (see the module's docstring)."""
    import optuna  # deferred: callers without a study never load it

    if evaluator not in EVALUATORS:
        raise ValueError(f"importance evaluator {evaluator!r}: allowed: {', '.join(EVALUATORS)}")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return Importances({}, evaluator, objective, "importances need two or more complete trials")
    directions = study.directions
    multi = len(directions) > 1
    target = None
    if objective is not None and multi:
        sign = -1.0 if directions[objective] == optuna.study.StudyDirection.MAXIMIZE and evaluator == "ped_anova" \
            else 1.0
        target = lambda t, i=objective, s=sign: s * t.values[i]  # noqa: E731 - one expression, bound now
    elif objective is None and multi and evaluator == "fanova":
        return Importances({}, evaluator, objective, "fANOVA weighs one objective: pick one")
    chosen = (optuna.importance.PedAnovaImportanceEvaluator() if evaluator == "ped_anova"
              else optuna.importance.FanovaImportanceEvaluator(seed=0))
    try:
        with warnings.catch_warnings():  # "Some regimes ... have less than 2 trials": a few trials are normal
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, evaluator=chosen, target=target)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. every param constant
        return Importances({}, evaluator, objective, f"no importances: {exc}")
    values = {k: round(float(v), 6) for k, v in found.items()}
    if not any(values.values()):
        return Importances({}, evaluator, objective, "no parameter changes the result yet")
    return Importances(values, evaluator, objective)
