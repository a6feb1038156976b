"""A run's brief: the short row that lists, filters and sorts it without its config or history.

One job: turn a run document into the few hundred bytes a table of runs needs. Each segment
of sealed runs has an index file of these (`trialdeck.engine.catalogue.segments`), so a list,
a filter or the TUI's runs table reads briefs and never a history; the store makes the same
brief of a run still in the working set, so every row comes from one shape.

Fields (absent when the run has no such value): `id`, `preset`, `state`, `study`, `trial`,
`tags`, `note`, `created_at`, `started_at`, `finished_at`, `interrupted_at`, `slot`, `device`,
`host`, `seq`, `remote`, `epochs` (entries in the history), `epoch` (the last one's number), `planned`
(the epochs its config trains), `val_loss`/`val_acc`/`val_mae` (the last epoch's),
`best_val_acc`, `kept_epoch`, `curve` (the loss over the run at most `CURVE_POINTS` points,
what a sparkline draws), `archived`, `imported_from`, `imported_study`. Pure data: no files, no TinyDB.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from trialdeck.engine.types import finite, kept_epoch, planned_epochs

__all__ = ["CURVE_POINTS", "brief", "curve_of", "loss_of", "resample"]

CURVE_POINTS = 16
"""Points in a brief's loss curve: the width of the runs table's sparkline column."""
_COPIED = ("id", "preset", "state", "study", "trial", "tags", "note", "created_at", "started_at", "finished_at",
           "interrupted_at", "slot", "device", "host", "seq", "remote", "archived", "imported_from", "imported_study")


def loss_of(epoch: Mapping[str, Any]) -> Any:
    """The loss a curve draws for an epoch: train_loss, or for a script run (its history holds
    what it reported or printed) val_loss, loss, or the first name with "loss" in it."""
    for key in ("train_loss", "val_loss", "loss"):
        if epoch.get(key) is not None:
            return epoch[key]
    return next((v for k, v in epoch.items() if "loss" in k and finite(v)), None)


def resample(values: Sequence[float], width: int) -> list[float]:
    """At most `width` points: bucket means over equal spans of `values`."""
    n = len(values)
    if n <= width:
        return list(values)
    spans = [(i * n // width, max((i + 1) * n // width, i * n // width + 1)) for i in range(width)]
    return [sum(values[lo:hi]) / (hi - lo) for lo, hi in spans]


def _number(value: Any) -> TypeGuard[float | int]:
    # finite(), inlined for speed: an import makes briefs of 100,000 runs of many epochs.
    return (type(value) is float or type(value) is int) and -_INF < value < _INF


_INF = float("inf")


def curve_of(history: Sequence[Mapping[str, Any]], width: int = CURVE_POINTS) -> list[float]:
    """The finite losses of a history, resampled to at most `width` points (to 6 decimals: a
    sparkline has 8 heights)."""
    losses = [float(v) for v in map(loss_of, history) if _number(v)]
    return [round(v, 6) for v in resample(losses, width)]


def brief(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The brief of a run document (one with its history; `config` only for `planned`)."""
    out = {key: doc[key] for key in _COPIED if doc.get(key) is not None}
    if not out.get("archived", True):
        del out["archived"]
    hist = [h for h in doc.get("history") or () if isinstance(h, Mapping)]
    if hist:
        last = hist[-1]
        out["epochs"] = len(hist)
        for key in ("epoch", "val_loss", "val_acc", "val_mae"):
            if last.get(key) is not None:
                out[key] = last[key]
        accs = [float(acc) for acc in (h.get("val_acc") for h in hist) if _number(acc)]
        if accs:
            out["best_val_acc"] = max(accs)
        curve = curve_of(hist)
        if curve:
            out["curve"] = curve
    planned = planned_epochs(doc.get("config"))
    if planned is not None:
        out["planned"] = planned
    kept = kept_epoch(doc)
    if kept is not None:
        out["kept_epoch"] = kept
    return out
