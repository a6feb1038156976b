"""Worker side of a trial: report each epoch's objective values to Optuna and stop a pruned trial at once.

Early stopping inside a trial stays early stopping (the trainer's own event);
only the pruner's decision becomes a `pruned` event, carrying the rule and
the numbers it compared. A script trial (runtime.runners.script) reports whatever its
script reported: an epoch without every objective as a number is not
reported, and its last epoch is `params.epochs` when the script has one.

One objective goes to Optuna's own intermediate values (`Trial.report`),
which Optuna's pruners read. Optuna refuses `report` for a study of several
objectives, so their per-epoch values go to the trial's `intermediate_values`
user attr ({"epoch": [values]}), which the pareto_halving pruner
(tuning.halving) and the views read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from trialdeck.engine.training.callbacks import Stop, TrainerCallback
from trialdeck.engine.tuning import halving
from trialdeck.engine.tuning import study as studies
from trialdeck.engine.tuning.objectives import EpochValues
from trialdeck.engine.tuning.samplers import explain_prune, pareto_halving
from trialdeck.engine.types import EventKind, RunEvent, RunState, planned_epochs

_LOADED: dict[tuple[str, str], Any] = {}


class TrialReporter(TrainerCallback):
    def __init__(self, study: optuna.Study, tune, trial_id: int, epochs: int | None) -> None:
        self.study = study
        self.tune = tune
        self.trial = optuna.trial.Trial(study, trial_id)
        self.epochs = epochs
        self.values = EpochValues(tune)
        self.halving = pareto_halving(tune)
        self.steps: dict[int, list[float]] = {}
        """This trial's values by epoch (several objectives: what its user attr holds)."""

    @classmethod
    def for_record(cls, store, ws, record: Mapping[str, Any]) -> TrialReporter:
        doc = store.get_study(record["study"])
        url = doc["storage_url"]
        key = (url, record["study"])
        if key not in _LOADED:  # a warm worker loads each study once
            _LOADED[key] = studies.load(record["study"], url)
        study, tune, _ = _LOADED[key]
        reporter = cls(study, tune, int(record["trial_id"]), planned_epochs(record["config"]))
        # A Dask trial's reporter lives in the engine and never sees the run start: its parameter
        # count comes from the record (the worker's start mirrored it), if it has arrived.
        reporter.values.start({"params": record.get("n_params"), "history": record.get("history")})
        return reporter

    def on_start(self, info: dict) -> None:
        self.values.start(info)
        if info.get("history"):  # a resumed trial keeps the values of its earlier epochs
            self.steps = halving_steps(self.study._storage.get_trial(self.trial._trial_id), self.tune.multi)

    def on_epoch(self, record, events) -> Stop | None:
        values = self.values.epoch(record.to_json())
        if values is None:
            return None  # a script's epoch without an objective: nothing to report or compare
        step = record.epoch
        self.steps[step] = values
        if self.tune.multi:
            self.trial.set_user_attr(halving.VALUES_ATTR, {str(k): v for k, v in sorted(self.steps.items())})
        else:
            self.trial.report(values[0], step=step)
        # Pruning after the last epoch saves nothing and would throw the trial's value away.
        if self.epochs is not None and step >= self.epochs:
            return None
        if self.halving is not None:
            return self._halving(step)
        if self.tune.multi or not self.trial.should_prune():
            return None
        frozen = self.study._storage.get_trial(self.trial._trial_id)
        message, data = explain_prune(self.tune, self.study, step, frozen, values[0])
        return self._pruned(step, message, data)

    def _halving(self, step: int) -> Stop | None:
        assert self.halving is not None
        others = {t.number: halving_steps(t, self.tune.multi)
                  for t in self.study.get_trials(deepcopy=False) if t._trial_id != self.trial._trial_id}
        verdict = self.halving.decide(self.trial.number, step, self.steps, others)
        if verdict is None or not verdict.prune:
            return None
        message, data = halving.explain(verdict, self.tune.metrics)
        return self._pruned(step, message, data)

    def _pruned(self, step: int, message: str, data: dict[str, Any]) -> Stop:
        self.trial.set_user_attr("prune_reason", message)
        return Stop(RunState.PRUNED, RunEvent(EventKind.PRUNED.value, step, message, data))


def halving_steps(t: optuna.trial.FrozenTrial, multi: bool) -> dict[int, list[float]]:
    """A trial's recorded values by epoch: its user attr (several objectives) or Optuna's
    intermediate values (one)."""
    if multi:
        return {int(k): list(v) for k, v in (t.user_attrs.get(halving.VALUES_ATTR) or {}).items()}
    return {int(k): [float(v)] for k, v in t.intermediate_values.items()}
