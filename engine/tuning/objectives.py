"""A trial's objective values: from its run's record at the end, and from each epoch on the way.

An objective names a recorded metric (`val_acc`, or any name a script reports)
or a run fact: `parameters` (the model's parameter count), `seconds` (the
run's training time, the sum of its epochs' seconds) and `peak_memory_mb`
(the device's peak allocated memory, recorded for CUDA runs). A metric a run
recorded under the fact's name wins over the fact (a script may report its
own `parameters`), except `seconds`, which every epoch records as its own
time. No Optuna import: the driver, the reporter and the results share these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trialdeck.engine.presets.schema import RUN_FACTS, TuneConfig
from trialdeck.engine.types import finite

MB = 2**20


def metric_value(metric: str, direction: str, reduce: str, history: Sequence[dict[str, Any]]) -> float | None:
    """The trial's value of a recorded metric: its best epoch's (`reduce = "best"`) or its last."""
    # A script's history may hold any value under any name: only finite numbers count.
    values = [float(v) for v in (h.get(metric) for h in history) if finite(v)]
    if not values:
        return None
    if reduce == "last":
        return values[-1]
    return min(values) if direction == "minimize" else max(values)


def fact_value(metric: str, record: Mapping[str, Any]) -> float | None:
    """A run fact from the run's record; None where the run did not record it."""
    if metric == "parameters":
        n = record.get("n_params")
        return float(n) if finite(n) else None
    if metric == "seconds":
        seconds = [float(h["seconds"]) for h in record.get("history") or [] if finite(h.get("seconds"))]
        return round(sum(seconds), 6) if seconds else None
    if metric == "peak_memory_mb":
        peak = record.get("peak_memory")
        return round(float(peak) / MB, 3) if finite(peak) else None
    return None


def trial_values(tune: TuneConfig, record: Mapping[str, Any]) -> tuple[list[float] | None, str | None]:
    """(the trial's values in the objectives' order, None) or (None, why one is missing)."""
    history = record.get("history") or []
    out: list[float] = []
    for objective in tune.objective_list:
        # Every epoch records its own `seconds`: the objective is their sum, never one epoch's.
        own = objective.metric != "seconds"
        value = metric_value(objective.metric, objective.direction, tune.reduce, history) if own else None
        if value is None and objective.metric in RUN_FACTS:
            value = fact_value(objective.metric, record)
        if value is None:
            return None, missing_reason(objective.metric)
        out.append(value)
    return out, None


def missing_reason(metric: str) -> str:
    if metric == "peak_memory_mb":
        return "the run recorded no peak_memory_mb (it is measured on CUDA devices only)"
    if metric == "parameters":
        return "the run recorded no parameter count (a script run reports its own `parameters`)"
    return f"the run recorded no {metric}"


class EpochValues:
    """Each epoch's values of every objective, for pruning and the intermediate plots: a
    recorded metric as the epoch reports it, `parameters` from the run's start, `seconds`
    as the training time so far. None for an epoch that lacks one of them."""

    def __init__(self, tune: TuneConfig) -> None:
        self.metrics = tune.metrics
        self.n_params: float | None = None
        self.seconds = 0.0

    def start(self, info: dict[str, Any]) -> None:
        if finite(info.get("params")):
            self.n_params = float(info["params"])
        history = info.get("history") or []  # a resumed run's earlier epochs
        self.seconds = sum(float(h["seconds"]) for h in history if finite(h.get("seconds")))

    def epoch(self, entry: dict[str, Any]) -> list[float] | None:
        if finite(entry.get("seconds")):
            self.seconds += float(entry["seconds"])
        out: list[float] = []
        for metric in self.metrics:
            value = entry.get(metric) if metric != "seconds" else None
            if not finite(value):
                value = self.n_params if metric == "parameters" else round(self.seconds, 6) if metric == "seconds" \
                    else None
            if value is None:
                return None
            out.append(float(value))
        return out
