"""What the TUI shows about runs, computed without Textual: sparklines, followers, table rows.

One job: turn the catalogue and the per-run metric streams into small, immutable
values the widgets display. Nothing here imports textual, so it is tested as
plain logic and runs inside thread workers.

Invariants:
- Metric files are read incrementally (`read_jsonl` from the last offset); a
  run's stream is read from the start once, then only what was appended.
- Memory per followed run is bounded (`LossTrace` merges neighbours instead of
  growing), and so is the number of runs kept after they stop (`keep`).
- Values handed to the UI are frozen dataclasses or tuples; the UI never sees
  a list a worker thread may still mutate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from trialdeck.engine.catalogue.briefs import brief, loss_of, resample
from trialdeck.engine.catalogue.metrics import read_jsonl
from trialdeck.engine.errors import BadInput
from trialdeck.engine.runs.folder import METRICS_NAME
from trialdeck.engine.runtime.control.actions import check_resumable
from trialdeck.engine.types import UNFINISHED_STATES, RunState, finite, kept_epoch, planned_epochs
from trialdeck.engine.workspace import RUN_ID_RE, Workspace

BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 16
ACTIVE_STATES = frozenset({"running"})
CANCELLABLE = UNFINISHED_STATES
"""What `control.cancel` accepts: a run that has not ended."""


def resumable(run: Mapping[str, Any] | None) -> bool:
    """Whether `trialdeck runs resume` (R) would take this run."""
    if run is None:
        return False
    try:
        check_resumable(run)
    except BadInput:
        return False
    return True
LOGGED_EVENTS = frozenset({"early_stopped", "pruned", "failed", "nan_loss", "cancelled", "interrupted", "finished"})
"""Event kinds the dashboard's log shows; "finished" is derived from a run reaching `completed`."""
TOASTED_EVENTS = frozenset({"early_stopped", "pruned", "failed", "nan_loss", "finished"})


# ----------------------------------------------------------------------------- sparklines


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if finite(v)]


def spark(values: Iterable[Any], width: int = SPARK_WIDTH) -> str:
    """Block-character sparkline of the finite values, at most `width` characters.

    Text in a table cell, not a Sparkline widget: STYLE.md measured 50 widget
    sparklines at 10 Hz at 60% of a core; a string costs next to nothing.
    """
    points = resample(_finite(values), width)
    if not points:
        return ""
    lo, hi = min(points), max(points)
    if hi - lo < 1e-12:
        return BLOCKS[3] * len(points)
    scale = (len(BLOCKS) - 1) / (hi - lo)
    return "".join(BLOCKS[round((v - lo) * scale)] for v in points)


class LossTrace:
    """A bounded series of losses: past `cap` points, neighbours are averaged in pairs.

    The trace always spans the whole run at a resolution that halves as it
    grows, so a 400-epoch run costs the same memory as a 4-epoch one.
    """

    def __init__(self, cap: int = 256) -> None:
        self.cap = cap
        self.points: list[float] = []
        self.stride = 1
        self._acc = 0.0
        self._n = 0

    def add(self, value: Any) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            return
        self._acc += float(value)
        self._n += 1
        if self._n < self.stride:
            return
        self.points.append(self._acc / self._n)
        self._acc, self._n = 0.0, 0
        if len(self.points) >= self.cap:
            pts = self.points
            self.points = [(pts[i] + pts[i + 1]) / 2 for i in range(0, len(pts) - 1, 2)]
            self.stride *= 2

    def values(self) -> list[float]:
        tail = [self._acc / self._n] if self._n else []
        return self.points + tail


# ----------------------------------------------------------------------------- live runs


@dataclass(frozen=True)
class LiveRun:
    """The latest state of one followed run, as read from its metrics stream."""

    run_id: str
    spark: str = ""
    epoch: int | None = None
    """Epoch in progress (from the last step) or last finished."""
    epochs_done: int = 0
    loss: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    best_val_acc: float | None = None
    lr: float | None = None
    updated: float | None = None


def metrics_path(ws: Workspace, run_id: str):
    """runs/<id>/metrics.jsonl, without creating anything (a viewer must not; `Workspace.run_dir` does)."""
    if not RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"{run_id!r} is not a run id")
    return ws.runs_dir / run_id / METRICS_NAME


EPOCHS_KEPT = 4096
"""Epoch losses a follower keeps per run for a script's sparkline (it resamples them to its width)."""


@dataclass
class _Follow:
    path: Any = None
    offset: int = 0
    trace: LossTrace = field(default_factory=LossTrace)
    epochs: list[tuple[int, float]] = field(default_factory=list)
    """(epoch, loss) of the epoch records: a run without step records (a script) draws these, and
    an epoch recorded again replaces itself and the ones after it."""
    steps: bool = False
    """The stream has step records (a built-in run): its sparkline is the step trace."""
    live: LiveRun | None = None
    done: bool = False

    def epoch(self, epoch: Any, loss: Any) -> None:
        if not isinstance(epoch, int):
            return
        while self.epochs and self.epochs[-1][0] >= epoch:
            self.epochs.pop()
        if finite(loss):
            self.epochs.append((epoch, float(loss)))
            if len(self.epochs) > EPOCHS_KEPT:
                del self.epochs[: len(self.epochs) - EPOCHS_KEPT]

    def rewind(self, epoch: Any) -> None:
        if isinstance(epoch, int):
            while self.epochs and self.epochs[-1][0] >= epoch:
                self.epochs.pop()

    def points(self) -> list[float]:
        return self.trace.values() if self.steps else [loss for _, loss in self.epochs]


class MetricsFollower:
    """Follows runs' metrics.jsonl files incrementally; one instance per UI process.

    `poll(active)` reads what was appended to each active run's stream and
    returns every followed run's latest `LiveRun` when anything changed (None
    when nothing did), so a UI message may replace an older one unread.
    """

    def __init__(self, ws: Workspace, width: int = SPARK_WIDTH, keep: int = 200) -> None:
        self.ws = ws
        self.width = width
        self.keep = keep
        self._runs: dict[str, _Follow] = {}
        self._snapshot: dict[str, LiveRun] = {}

    def poll(self, active: Iterable[str]) -> dict[str, LiveRun] | None:
        active = set(active)
        changed = False
        for run_id in active:
            follow = self._runs.get(run_id)
            if follow is None:
                follow = self._runs[run_id] = _Follow(metrics_path(self.ws, run_id))
            follow.done = False
            changed |= self._read(run_id, follow)
        for run_id, follow in list(self._runs.items()):
            if run_id not in active and not follow.done:
                changed |= self._read(run_id, follow)  # the stream's last lines
                follow.done = True
        if len(self._runs) > self.keep:
            for run_id in [r for r, f in self._runs.items() if f.done][: len(self._runs) - self.keep]:
                del self._runs[run_id]
                changed = True
        if not changed:
            return None
        self._snapshot = {r: f.live for r, f in self._runs.items() if f.live is not None}
        return dict(self._snapshot)

    def _read(self, run_id: str, follow: _Follow) -> bool:
        records, follow.offset = read_jsonl(follow.path, follow.offset)
        if not records:
            return False
        live = follow.live or LiveRun(run_id)
        values: dict[str, Any] = {}
        for rec in records:
            kind = rec.get("kind")
            if kind is None and "loss" in rec:
                follow.steps = True
                follow.trace.add(rec.get("loss"))
                values.update(loss=rec.get("loss"), epoch=rec.get("epoch"), updated=rec.get("t"))
            elif kind == "start" and "rewound" in rec:  # a script went back: its later epochs come again
                follow.rewind(rec["rewound"])
            elif kind == "epoch":
                follow.trace.add(loss_of(rec))
                follow.epoch(rec.get("epoch"), loss_of(rec))
                acc = rec.get("val_acc")
                best = values.get("best_val_acc", live.best_val_acc)
                if isinstance(acc, (int, float)) and (best is None or acc > best):
                    values["best_val_acc"] = acc
                values.update(epoch=rec.get("epoch"), epochs_done=rec.get("epoch") or 0, val_loss=rec.get("val_loss"),
                              val_acc=acc, lr=rec.get("lr"), updated=rec.get("t"))
        follow.live = LiveRun(**{**live.__dict__, **values, "spark": spark(follow.points(), self.width)})
        return True


# ----------------------------------------------------------------------------- catalogue


@dataclass(frozen=True, eq=False)
class Catalog:
    """One read of catalog.json: the working set's runs without their configs (unfinished runs and
    the newest finished ones), their briefs, the registry of sealed runs, and the studies. The
    runs table reads older runs a segment at a time (tui/runs_view.py)."""

    version: tuple
    runs: tuple[dict[str, Any], ...] = ()
    studies: tuple[Mapping[str, Any], ...] = ()
    briefs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Run id -> brief (engine/catalogue/briefs.py) of each run of `runs`."""
    segments: tuple[Mapping[str, Any], ...] = ()
    """The registry of segments of sealed runs (their counts by state, their files)."""

    @cached_property
    def by_id(self) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in self.runs}

    @cached_property
    def counts(self) -> dict[str, int]:
        """Runs by state, sealed ones included (not archived ones)."""
        out: dict[str, int] = {}
        for r in self.runs:
            out[r["state"]] = out.get(r["state"], 0) + 1
        for entry in self.segments:
            for state, n in (entry.get("states") or {}).items():
                out[state] = out.get(state, 0) + int(n)
        return out

    @cached_property
    def total(self) -> int:
        """Every run not archived."""
        return sum(self.counts.values())

    @cached_property
    def tagged(self) -> bool:
        """Some run has tags (the runs table then shows a tags column)."""
        return any(r.get("tags") for r in self.runs) or any(e.get("tagged") for e in self.segments)

    @cached_property
    def active_ids(self) -> frozenset[str]:
        return frozenset(r["id"] for r in self.runs if r["state"] in ACTIVE_STATES)

    @cached_property
    def queue(self) -> tuple[dict[str, Any], ...]:
        """Queued runs in dispatch order: priority descending, then enqueue order (as the store)."""
        waiting = [r for r in self.runs if r["state"] == RunState.QUEUED]
        waiting.sort(key=lambda d: (-int(d.get("priority", 0)), int(d.get("seq", 0))))
        return tuple(waiting)


def run_number(run_id: str) -> int:
    return int(run_id[1:]) if run_id[1:].isdigit() else 0


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class LogEntry:
    time: float
    run: str
    kind: str
    epoch: int | None
    message: str

    def line(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time))
        epoch = f" epoch {self.epoch}" if self.epoch is not None else ""
        return f"{stamp} {self.run:<6} {self.kind}{epoch}: {self.message}"


def entry_of(event: Mapping[str, Any]) -> LogEntry:
    epoch = event.get("epoch")
    return LogEntry(float(event.get("time") or 0.0), str(event.get("run", "?")), str(event.get("kind", "?")),
                    epoch if isinstance(epoch, int) else None, str(event.get("message", "")))


def finished_entry(run: Mapping[str, Any]) -> LogEntry:
    """The dashboard's "finished" line for a completed run (the engine records no event for it)."""
    summary = run.get("summary") or {}
    hist = run.get("history") or []
    acc = summary.get("best_val_acc")
    if acc is None:
        acc = max((h.get("val_acc") for h in hist if isinstance(h.get("val_acc"), (int, float))), default=None)
    detail = f"{len(hist)} epochs" + (f", best val_acc {acc:.4f}" if isinstance(acc, (int, float)) else "")
    return LogEntry(float(run.get("finished_at") or run.get("completed_at") or 0.0), run["id"], "finished", None,
                    f"{run.get('preset', '')}: {detail}")


class EventFeed:
    """New catalogue events since the last call, each reported once.

    Events are stamped when they happen but reach the catalogue up to a
    second later (the recorder coalesces writes), so a plain `since=last
    time seen` would skip some; re-read a window and drop what was seen.
    """

    def __init__(self, window: float = 30.0) -> None:
        self.window = window
        self._since: float | None = None
        self._seen: dict[tuple, float] = {}

    def prime(self, events: Iterable[Mapping[str, Any]]) -> list[LogEntry]:
        """Mark `events` as seen (start-up); returns them as log entries."""
        out = [entry_of(e) for e in events]
        for e in out:
            self._seen[(e.run, e.kind, e.time, e.epoch, e.message)] = e.time
            self._since = max(self._since or 0.0, e.time)
        return out

    def since(self) -> float | None:
        return None if self._since is None else self._since - self.window

    def take(self, events: Iterable[Mapping[str, Any]]) -> list[LogEntry]:
        fresh = []
        for e in map(entry_of, events):
            key = (e.run, e.kind, e.time, e.epoch, e.message)
            if key in self._seen:
                continue
            self._seen[key] = e.time
            fresh.append(e)
            self._since = max(self._since or 0.0, e.time)
        if self._since is not None and len(self._seen) > 1000:
            cutoff = self._since - 2 * self.window
            self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}
        return fresh


def finished_since(old: Catalog | None, new: Catalog) -> list[LogEntry]:
    """Runs that reached `completed` between two catalogue reads."""
    if old is None:
        return []
    out = []
    for run in new.runs:
        if run["state"] == RunState.COMPLETED:
            before = old.by_id.get(run["id"])
            if before is None or before["state"] != RunState.COMPLETED:
                out.append(finished_entry(run))
    return out


# ----------------------------------------------------------------------------- table rows


def value_text(value: Any) -> str:
    """A recorded value as `runs show` and `presets capture` print it: integers as integers, small
    values in significant digits (lr 4.76e-05, not 0.0000), others with four decimals."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not finite(value):
            return str(value)
        return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def cell(value: Any, width: int) -> str:
    """A value for a compare table: numbers short, long text (descriptions) cut with "…"."""
    text = "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def tags_text(run: Mapping[str, Any]) -> str:
    """A run's tags as they are shown and filtered: "#best #lr-sweep" ("" when none)."""
    return " ".join(f"#{t}" for t in run.get("tags") or ())


def host_text(run: Mapping[str, Any]) -> str | None:
    """Where a run placed on another box trained: its host (a Dask worker's name) and device,
    "box1-cpu0 (cpu)"; None for a run of this box's own slots."""
    host = run.get("host")
    if not host:
        return None
    return f"{host} ({run['device']})" if run.get("device") else str(host)


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _num(value: Any, fmt: str = ".4f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else ""


def _metrics(entry: Mapping[str, Any]) -> str:
    return "  ".join(f"{k} {entry[k]:.4f}" for k in ("val_loss", "val_acc", "val_mae") if _num(entry.get(k)))


def outcome(run: Mapping[str, Any]) -> list[str]:
    """Which epoch's weights the run kept with that epoch's metrics, the monitor's best, and the
    last epoch, each labelled (the CLI and the TUI's run header join them with " | "); an epoch
    that is two of these is named once, e.g. ["kept (epoch 13, the best val_loss): val_loss
    0.1119  val_acc 0.9610", "last epoch 15: val_loss 0.1139  val_acc 0.9721"]. Empty before
    the first epoch."""
    hist = [h for h in run.get("history") or () if isinstance(h, Mapping)]
    if not hist:
        return []
    last = hist[-1]
    summary = run.get("summary") or {}
    monitor, best_epoch, best_value = summary.get("monitor") or "val_loss", summary.get("best_epoch"), summary.get("best_value")
    if best_epoch is None or not _num(best_value):  # still running, or recorded before summaries said it
        losses = [h for h in hist if _num(h.get("val_loss"))]
        best = min(losses, key=lambda h: h["val_loss"]) if losses else {}
        monitor, best_epoch, best_value = "val_loss", best.get("epoch"), best.get("val_loss")
        delta = 0.0
    else:
        delta = min_delta(run)
    # Keras' rule: with min_delta, an epoch counts as the best only when it beats the best by more
    # than that, so a later, slightly better value is not "the best": say so where the best is named.
    by = f" by more than {delta:g}" if delta else ""
    kept = kept_epoch(run)
    kept_entry = next((h for h in hist if h.get("epoch") == kept), None)
    parts = []
    if kept_entry is not None:
        also = [what for what, epoch in (("the last", last.get("epoch")), (f"the best {monitor}{by}", best_epoch))
                if epoch == kept]
        parts.append(f"kept (epoch {kept}{', ' + ' and '.join(also) if also else ''}): {_metrics(kept_entry)}")
    elif run.get("state") == RunState.FAILED:
        parts.append("kept: no weights (the run failed)")
    elif "kept_epoch" in run and run.get("state") in (RunState.CANCELLED, RunState.INTERRUPTED) and not _is_script(run):
        parts.append(f"kept: the weights from inside epoch {int(last.get('epoch') or 0) + 1}, where it stopped")
    if best_epoch is not None and best_epoch != kept:
        parts.append(f"best {monitor} (improved by > {delta:g}): {best_value:.4f} at epoch {best_epoch}" if delta
                     else f"best {monitor} {best_value:.4f} at epoch {best_epoch}")
    if last.get("epoch") != kept:
        parts.append(f"last epoch {last.get('epoch')}: {_metrics(last)}")
    return parts


def min_delta(run: Mapping[str, Any]) -> float:
    """The early stopper's min_delta of a full run record (0 when it has none or stops early never)."""
    es = (run.get("config") or {}).get("early_stopping") or {}
    value = es.get("min_delta") if es.get("enabled") else None
    return float(value) if finite(value) and value > 0 else 0.0


def _is_script(run: Mapping[str, Any]) -> bool:
    """A script run keeps its own checkpoints: trialdeck keeps no weights of it to speak of."""
    return bool((run.get("config") or {}).get("script")) or "script_pid" in run


def epochs_of(run: Mapping[str, Any]) -> int | None:
    """`train.epochs` of a full run record (one with its config); a script run's `params.epochs`."""
    return planned_epochs(run.get("config"))


def run_row(run: Mapping[str, Any], live: LiveRun | None, now: float, total: int | None = None) -> tuple[str, ...]:
    """The dashboard row of one run, from its brief (or its whole record); `live` (its followed
    stream) wins over the catalogue; `total`: the epochs it trains (default: the brief's `planned`)."""
    if "history" in run:
        run = brief(run)
    best = run.get("best_val_acc")
    epoch = run.get("epoch")
    acc = run.get("val_acc")
    line = spark(run.get("curve") or ())
    if live is not None:
        line = live.spark or line
        if live.epochs_done and (epoch is None or live.epochs_done >= epoch):
            epoch, acc = live.epochs_done, live.val_acc
        if live.best_val_acc is not None and (best is None or live.best_val_acc > best):
            best = live.best_val_acc
    total = run.get("planned") if total is None else total
    epoch_text = "" if epoch is None and not total else f"{epoch or 0}" + (f"/{total}" if total else "")
    started = run.get("started_at")
    ended = run.get("finished_at") if run["state"] != RunState.RUNNING else None
    if started is None:
        elapsed = ""
    elif run["state"] == RunState.RUNNING:
        elapsed = fmt_seconds(now - started)
    elif run["state"] == RunState.INTERRUPTED:
        elapsed = fmt_seconds((run.get("interrupted_at") or started) - started)
    else:
        elapsed = fmt_seconds((ended or started) - started)
    slot = run.get("slot") or run.get("device") or ""
    if run["state"] == RunState.QUEUED:
        slot = run.get("device") or ""
    kept = run.get("kept_epoch")  # whose weights a finished run kept: its best epoch after an early stop
    return (run["id"], run["state"], str(run.get("preset", "")), line, epoch_text, _num(acc), _num(best),
            "" if kept is None else str(kept), str(slot), elapsed)
