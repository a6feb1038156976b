"""Runs side by side: each run's summary, the config keys that differ, and per-epoch rows for export.

One job: turn full run records (with `config` and `history`) into what `runs
compare`, `runs export` and the TUI's compare view show. Pure data in, plain
values out: no store, no files, no torch, so the CLI and the TUI agree on
every number and it is tested as logic.

Invariants:
- Values per run are always in the order the runs were given.
- A metric's "best" is its minimum, except accuracies (`*acc*`), which are
  maximised; missing and non-finite values (a NaN loss is stored as null)
  are skipped, never compared.
- Export rows have the fixed columns first (run, preset, epoch, train_loss,
  val_loss, val_acc, lr, seconds) and then every other metric any of the runs
  recorded, sorted, so the header is the same whichever run comes first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from trialdeck.engine.presets.authoring import flatten
from trialdeck.engine.types import finite, kept_epoch

Record = Mapping[str, Any]

EXPORT_COLUMNS = ("run", "preset", "epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds")
PLOT_METRICS = ("val_loss", "train_loss", "val_acc", "val_mae", "lr")
"""The metrics the compare view offers, in the order `m` cycles through them (those present)."""
_NOT_METRICS = frozenset({"epoch", "seconds", "run", "preset"})


def maximised(metric: str) -> bool:
    """Whether a higher value of `metric` is better (accuracies)."""
    return "acc" in metric


def metric_names(records: Iterable[Record]) -> list[str]:
    """Numeric per-epoch metrics found in the runs' histories: PLOT_METRICS first (those present), then the rest sorted."""
    histories = [r.get("history") or () for r in records]
    keys: set[str] = set()
    for hist in histories:
        for h in hist:
            keys.update(h)  # keys first, values only until one is a number: 50 runs x 200 epochs stay cheap
    found = {k for k in keys - _NOT_METRICS if any(finite(h.get(k)) for hist in histories for h in hist)}
    return [m for m in PLOT_METRICS if m in found] + sorted(found - set(PLOT_METRICS))


def series(record: Record, metric: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one metric over a run's history, finite values only."""
    xs: list[float] = []
    ys: list[float] = []
    isfinite = math.isfinite
    for i, h in enumerate(record.get("history") or ()):
        value = h.get(metric)
        if type(value) in (float, int) and isfinite(value):  # (bool is not a metric; type(), not isinstance)
            xs.append(float(h.get("epoch", i + 1)))
            ys.append(float(value))
    return xs, ys


def ema(values: Sequence[float], weight: float = 0.6) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average with `weight` on the past,
    debiased so the first points are not pulled towards zero."""
    out: list[float] = []
    last, norm = 0.0, 0.0
    for v in values:
        last = last * weight + (1 - weight) * v
        norm = norm * weight + (1 - weight)
        out.append(last / norm)
    return out


def best(record: Record, metric: str, points: tuple[Sequence[float], Sequence[float]] | None = None
         ) -> tuple[float | None, int | None]:
    """The run's best value of `metric` and the epoch it came at (the first such epoch);
    `points`: its `series` when the caller has it already."""
    xs, ys = points if points is not None else series(record, metric)
    if not ys:
        return None, None
    pick = max if maximised(metric) else min
    i = ys.index(pick(ys))
    return ys[i], int(xs[i])


def monitor_of(record: Record) -> str:
    """The metric a run is judged by: its summary's monitor, else early stopping's, else val_loss."""
    summary = record.get("summary") or {}
    config = record.get("config") or {}
    found = summary.get("monitor") or (config.get("early_stopping") or {}).get("monitor")
    return str(found) if found else "val_loss"


def duration(record: Record) -> float | None:
    """Seconds from start to end (to now's last epoch for a running run: the sum of its epochs)."""
    started, ended = record.get("started_at"), record.get("finished_at")
    if isinstance(started, (int, float)) and isinstance(ended, (int, float)) and finite(started) and ended >= started:
        return float(ended - started)
    seconds = [h.get("seconds") for h in record.get("history") or () if finite(h.get("seconds"))]
    return float(sum(seconds)) if seconds else None


def summary(record: Record, metric: str | None = None,
            points: tuple[Sequence[float], Sequence[float]] | None = None) -> dict[str, Any]:
    """What compare shows for one run: the chosen metric's best value and epoch (the run's
    monitor by default), the kept epoch, the last epoch's metrics, state and time."""
    metric = metric or monitor_of(record)
    value, epoch = best(record, metric, points)
    hist = record.get("history") or []
    last = hist[-1] if hist else {}
    return {
        "metric": metric,
        "best": value,
        "best_epoch": epoch,
        "epochs": len(hist),
        "kept_epoch": kept_epoch(record),
        "last": {k: v for k, v in last.items() if k != "epoch"},
        "state": record.get("state"),
        "seconds": duration(record),
    }


def differs(records: Sequence[Record]) -> dict[str, list[Any]]:
    """Every dotted config key whose value is not the same in all runs (a key a run lacks
    counts as None), sorted by key, with one value per run in the order given."""
    flat = [flatten(r.get("config") or {}) for r in records]
    keys = sorted(set().union(*flat)) if flat else []
    out: dict[str, list[Any]] = {}
    for key in keys:
        values = [f.get(key) for f in flat]
        if any(v != values[0] for v in values[1:]):
            out[key] = values
    return out


def comparison(records: Sequence[Record], metric: str | None = None) -> dict[str, Any]:
    """`runs compare --json`: each run (id, preset, state, tags, note, summary) and the differing keys."""
    runs = [{"id": r["id"], "preset": r.get("preset"), "state": r.get("state"), "study": r.get("study"),
             "trial": r.get("trial"), "tags": list(r.get("tags") or []), "note": r.get("note"),
             "summary": summary(r, metric)} for r in records]
    return {"runs": runs, "differs": differs(records)}


def history_rows(records: Sequence[Record]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of the runs' per-epoch histories: one row per run and epoch, None where
    a run did not record a column (see the module docstring for the column order)."""
    extra: set[str] = set()
    for r in records:
        for h in r.get("history") or ():
            extra.update(k for k in h if k not in EXPORT_COLUMNS)
    columns = [*EXPORT_COLUMNS, *sorted(extra)]
    rows = []
    for r in records:
        for h in r.get("history") or ():
            row = {"run": r["id"], "preset": r.get("preset"), **h}
            rows.append({c: row.get(c) for c in columns})
    return columns, rows
