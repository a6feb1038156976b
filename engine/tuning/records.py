"""Optuna trials and studies as the documents trialdeck shows and stores (catalogue, `--json`).

The same shape for a study trialdeck runs and for any study in any storage: a
trial's `number`, `state`, `value` (one objective) or `values` (each
objective, in order), `params`, `intermediate` and timestamps; a study's
`directions`, `counts`, `best` (one objective) or `pareto` (the numbers of
the trials on its front, several). What only trialdeck knows (a trial's run,
a study's preset) is simply absent from a study it did not make. Numbers are
Optuna's own: values, states, params and the front are what `optuna` gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from trialdeck.engine.tuning import pareto
from trialdeck.engine.tuning.halving import VALUES_ATTR

FINISHED = ("complete", "pruned", "fail")


def _number(v: Any) -> float | None:
    """A value as JSON can hold it: inf and NaN (Optuna stores them) become None."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def trial_doc(t, multi: bool, decode=None) -> dict[str, Any]:
    """One FrozenTrial as a document. `decode(params)` turns stored params back into preset values
    (a trialdeck study's JSON-encoded choices); `multi`: the study has several objectives."""
    start = t.datetime_start.timestamp() if t.datetime_start else None
    end = t.datetime_complete.timestamp() if t.datetime_complete else None
    values = [_number(v) for v in t.values] if t.values is not None else None
    if multi:
        raw = t.user_attrs.get(VALUES_ATTR)
        steps = raw if isinstance(raw, dict) else {}
        intermediate: dict[str, Any] = {str(k): steps[k] for k in sorted(steps, key=lambda s: float(s))}
    else:
        intermediate = {str(k): _number(v) for k, v in sorted(t.intermediate_values.items())}
    params = dict(t.params)
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "value": values[0] if values is not None and not multi else None,
        "values": values,
        "params": decode(params) if decode is not None else params,
        "run_id": t.user_attrs.get("run_id"),
        "host": t.user_attrs.get("host") or (t.user_attrs.get("workspace") or "").split(":", 1)[0] or None,
        "intermediate": intermediate,
        "started_at": start,
        "finished_at": end,
        "duration": (end - start) if start and end else None,  # `study.sync` puts its run's own time here
        "prune_reason": t.user_attrs.get("prune_reason"),
        "fail_reason": t.user_attrs.get("fail_reason"),
    }


def complete_values(docs: Sequence[dict[str, Any]]) -> list[tuple[int, list[float]]]:
    """(number, values) of every complete trial whose values are all finite numbers."""
    return [(d["number"], d["values"]) for d in docs
            if d["state"] == "complete" and d.get("values") and all(v is not None for v in d["values"])]


def front_numbers(docs: Sequence[dict[str, Any]], directions: Sequence[str]) -> list[int]:
    """Numbers of the complete trials no other complete trial dominates (Optuna's best_trials)."""
    done = complete_values(docs)
    if not done:
        return []
    mask = pareto.front_mask(pareto.losses([v for _, v in done], directions))
    return sorted(n for (n, _), on in zip(done, mask, strict=True) if on)


def summary(docs: Sequence[dict[str, Any]], directions: Sequence[str], study=None) -> dict[str, Any]:
    """The study fields that follow from its trials: counts, done, best (one objective) or the
    Pareto front (several). With `study` (an optuna.Study), the best trial is Optuna's own
    (`best_trial`); without, computed here the same way. The front is computed here: it is
    what `best_trials` gives (tests/test_multi_objective.py holds it to that)."""
    counts: dict[str, int] = {}
    for d in docs:
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    out: dict[str, Any] = {
        "directions": list(directions),
        "counts": counts,
        "n_done": sum(v for k, v in counts.items() if k in FINISHED),
        "best": None,
    }
    if len(directions) > 1:
        out["pareto"] = front_numbers(docs, directions)  # = study.best_trials, without its deep copy of every trial
        return out
    done = [d for d in docs if d["state"] == "complete" and d.get("value") is not None]
    if not done:
        return out
    if study is not None:
        number = study.best_trial.number
        b = next(d for d in docs if d["number"] == number)
    else:  # the first trial (by number) with the best value, as Optuna's base storage picks it
        pick = min if directions[0] == "minimize" else max
        best_value = pick(d["value"] for d in done)
        b = min((d for d in done if d["value"] == best_value), key=lambda d: d["number"])
    out["best"] = {"number": b["number"], "value": b["value"], "params": b["params"], "run_id": b["run_id"]}
    return out


def metric_names(names: Sequence[str] | None, n: int) -> list[str]:
    """The objectives' names: those set with `study.set_metric_names`, else `value` (one) or
    `values_0`, `values_1`, ... as Optuna's trials_dataframe names them."""
    if names is not None and len(names) == n:
        return [str(x) for x in names]
    return ["value"] if n == 1 else [f"values_{i}" for i in range(n)]
