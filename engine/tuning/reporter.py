"""Worker side of a trial: report each epoch's metric to Optuna and stop a pruned trial at once.

Early stopping inside a trial stays early stopping (the trainer's own event);
only the pruner's decision becomes a `pruned` event, carrying the rule and
the numbers it compared. A script trial (runtime.script) reports whatever its
script reported: an epoch without the study's metric as a number is not
reported, and its last epoch is `params.epochs` when the script has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from trialdeck.engine.training.callbacks import Stop, TrainerCallback
from trialdeck.engine.tuning import study as studies
from trialdeck.engine.tuning.samplers import explain_prune
from trialdeck.engine.types import EventKind, RunEvent, RunState, finite, planned_epochs

_LOADED: dict[tuple[str, str], Any] = {}


class TrialReporter(TrainerCallback):
    def __init__(self, study: optuna.Study, tune, trial_id: int, epochs: int | None) -> None:
        self.study = study
        self.tune = tune
        self.trial = optuna.trial.Trial(study, trial_id)
        self.epochs = epochs

    @classmethod
    def for_record(cls, store, ws, record: Mapping[str, Any]) -> TrialReporter:
        doc = store.get_study(record["study"])
        url = doc["storage_url"]
        key = (url, record["study"])
        if key not in _LOADED:  # a warm worker loads each study once
            _LOADED[key] = studies.load(record["study"], url)
        study, tune, _ = _LOADED[key]
        return cls(study, tune, int(record["trial_id"]), planned_epochs(record["config"]))

    def on_epoch(self, record, events) -> Stop | None:
        value = record.to_json().get(self.tune.metric)
        if not finite(value):
            return None  # a script's epoch without the metric: nothing to report or compare
        self.trial.report(value, step=record.epoch)
        # Pruning after the last epoch saves nothing and would throw the trial's value away.
        if (self.epochs is None or record.epoch < self.epochs) and self.trial.should_prune():
            frozen = self.study._storage.get_trial(self.trial._trial_id)
            message, data = explain_prune(self.tune, self.study, record.epoch, frozen, value)
            self.trial.set_user_attr("prune_reason", message)
            return Stop(RunState.PRUNED, RunEvent(EventKind.PRUNED.value, record.epoch, message, data))
        return None

