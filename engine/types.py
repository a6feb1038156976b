"""Data types shared by the engine, the CLI and the TUI.

Plain dataclasses and enums only (no torch, no pydantic models beyond RunSpec
which lives in trialdeck.engine.presets.schema), so every process can import them cheaply.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Required, TypedDict, TypeGuard


class RunState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    PRUNED = "pruned"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def ok(self) -> bool:
        """Ended with a usable result: exit code 0 for `train`, `run --wait` and `runs follow`
        (a pruned trial ended as its study asked, with its epochs so far)."""
        return self in OK_STATES

    @property
    def unfinished(self) -> bool:
        """Not ended yet: queued, running, or interrupted (an engine resumes or requeues it)."""
        return self in UNFINISHED_STATES


TERMINAL_STATES = frozenset(
    {RunState.COMPLETED, RunState.EARLY_STOPPED, RunState.PRUNED, RunState.FAILED, RunState.CANCELLED}
)
OK_STATES = frozenset({RunState.COMPLETED, RunState.EARLY_STOPPED, RunState.PRUNED})
UNFINISHED_STATES = frozenset({RunState.QUEUED, RunState.RUNNING, RunState.INTERRUPTED})
"""The one definition of work still to do, for the engine, the driver, the client, the CLI and the TUI."""


class StudyState(str, enum.Enum):
    """A study's `state` in the catalogue."""

    RUNNING = "running"
    """The engine feeds it trials."""
    STOPPING = "stopping"
    """Asked to stop (Ctrl-C on `tune --wait`, `studies stop`): its trials are being cancelled."""
    COMPLETED = "completed"
    """Has its trials, or ran out of time."""
    STOPPED = "stopped"
    FAILED = "failed"
    """The engine could not drive it (its `error` says why)."""
    REMOTE = "remote"
    """Known from a shared storage only (`studies show --storage`): other boxes drive it."""


ACTIVE_STUDY_STATES = frozenset({StudyState.RUNNING, StudyState.STOPPING})

class Cause(str, enum.Enum):
    """Why a run changes state: each edge of LIFECYCLE names one (trialdeck.engine.runs.lifecycle
    makes every change, from the facts in trialdeck.engine.runs.facts)."""

    STARTED = "started"
    """A place took it (a slot, a Dask worker, `trialdeck train` in a terminal)."""
    ENDED = "ended"
    """Its runner's own word: completed, early stopped, pruned, failed, cancelled or interrupted."""
    CRASHED = "crashed"
    """The process training it died under it (killed, out of memory, a bug), or ended without its result."""
    LOST = "lost"
    """Its place went away (a Dask worker or scheduler, a dead engine): interrupted, checkpoint kept."""
    CANCEL_OVERDUE = "cancel_overdue"
    """A cancel it did not obey within the grace: cancelled, then stopped by force."""
    REFUSED = "refused"
    """No place can ever take it (pinned to a device the engine does not have)."""
    CANCELLED = "cancelled"
    """A person cancelled it, or the study it is a trial of was stopped."""
    DEPENDENCY = "dependency"
    """A run it waits for ended without the result it needs (the queue's --after)."""
    REQUEUED = "requeued"
    """The engine queues an interrupted run again (its `recovery` policy)."""
    RESUMED = "resumed"
    """A person queues an unfinished run again under its own id (`runs resume`)."""


@dataclass(frozen=True)
class Transition:
    """One allowed state change and what causes it."""

    source: RunState
    target: RunState
    cause: Cause


LIFECYCLE: tuple[Transition, ...] = (
    Transition(RunState.QUEUED, RunState.RUNNING, Cause.STARTED),
    *(Transition(RunState.RUNNING, end, Cause.ENDED) for end in (
        RunState.COMPLETED, RunState.EARLY_STOPPED, RunState.PRUNED, RunState.FAILED, RunState.CANCELLED,
        RunState.INTERRUPTED)),
    Transition(RunState.RUNNING, RunState.FAILED, Cause.CRASHED),
    Transition(RunState.RUNNING, RunState.CANCELLED, Cause.CRASHED),
    Transition(RunState.RUNNING, RunState.INTERRUPTED, Cause.LOST),
    Transition(RunState.RUNNING, RunState.CANCELLED, Cause.CANCEL_OVERDUE),
    Transition(RunState.QUEUED, RunState.FAILED, Cause.REFUSED),
    Transition(RunState.INTERRUPTED, RunState.FAILED, Cause.REFUSED),
    Transition(RunState.QUEUED, RunState.CANCELLED, Cause.CANCELLED),
    Transition(RunState.RUNNING, RunState.CANCELLED, Cause.CANCELLED),
    Transition(RunState.INTERRUPTED, RunState.CANCELLED, Cause.CANCELLED),
    Transition(RunState.QUEUED, RunState.CANCELLED, Cause.DEPENDENCY),
    Transition(RunState.INTERRUPTED, RunState.QUEUED, Cause.REQUEUED),
    *(Transition(source, RunState.QUEUED, Cause.RESUMED) for source in (
        RunState.FAILED, RunState.CANCELLED, RunState.INTERRUPTED)),
)
"""Every state change a run can make, and why: the one table (tests/test_lifecycle.py walks it)."""

TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    state: frozenset(t.target for t in LIFECYCLE if t.source is state) for state in RunState
}
"""Which transitions the store accepts (LIFECYCLE without the causes); anything else is a bug and is refused."""


def allowed(source: RunState, target: RunState, cause: Cause) -> bool:
    """Whether LIFECYCLE has this edge for this cause."""
    return Transition(source, target, cause) in LIFECYCLE


class EventKind(str, enum.Enum):
    QUEUED = "queued"
    STARTED = "started"
    LR_CHANGED = "lr_changed"
    CHECKPOINT = "checkpoint"
    EARLY_STOPPED = "early_stopped"
    PRUNED = "pruned"
    NAN_LOSS = "nan_loss"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    REQUEUED = "requeued"
    RESUMED = "resumed"
    COMPLETED = "completed"
    METRIC_MISSING = "metric_missing"
    """Early stopping, a pruner or a study watches a metric the program has not reported."""


@dataclass(frozen=True)
class RunEvent:
    """Something that happened to a run, in words a person can act on."""

    kind: str
    epoch: int | None
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's summary: the `history` entries of a run record. A classifier has val_acc; a
    regression has val_mae instead (and its entries carry no val_acc)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float | None
    lr: float
    seconds: float
    val_mae: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("val_acc", "val_mae"):  # a classifier's entries read as they always have
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> EpochRecord:
        return cls(**{"val_acc": None, **entry})


def finite(value: Any) -> TypeGuard[int | float]:
    """A number a metric can be (not a bool, not NaN or infinite; a NaN loss is stored as null)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def kept_epoch(run: Mapping[str, Any]) -> int | None:
    """The epoch whose weights a finished run kept (its record's `kept_epoch`; an older record's
    summary may hold it), or None: not finished, failed, or stopped inside an epoch."""
    value = run.get("kept_epoch", (run.get("summary") or {}).get("kept_epoch"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def run_summary(history: Sequence[Mapping[str, Any]], *, monitor: str, best_epoch: int | None,
                best_value: float | None, kept_epoch: int | None, seconds: float) -> dict[str, Any]:
    """A run record's `summary`, the one way it is computed for the built-in trainer and a script
    alike: the last epoch's metrics, the best of each, the monitor's best epoch and value, and
    the epoch whose weights the run kept with that epoch's metrics (None: no weights kept)."""
    last = history[-1] if history else {}

    def values(key: str) -> list[float]:
        return [float(h[key]) for h in history if finite(h.get(key))]

    def number(value: Any) -> float | None:
        return float(value) if finite(value) else None

    mae = values("val_mae")
    kept = next((h for h in history if kept_epoch is not None and h.get("epoch") == kept_epoch), None)
    return {
        "epochs": len(history),
        "last_epoch": last.get("epoch"),
        "val_loss": number(last.get("val_loss")),
        "val_acc": number(last.get("val_acc")),
        "best_val_loss": min(values("val_loss"), default=None),
        "best_val_acc": max(values("val_acc"), default=None),
        **({"val_mae": number(last.get("val_mae")), "best_val_mae": min(mae)} if mae else {}),
        "monitor": monitor,
        "best_epoch": best_epoch,
        "best_value": best_value,
        "kept_epoch": kept_epoch,
        "kept": dict(kept) if kept is not None else None,
        "seconds": round(seconds, 3),
    }


def planned_epochs(config: Any) -> int | None:
    """How many epochs a run's configuration trains: `train.epochs`, or a script's
    `params.epochs` (None: a script that does not say, or no configuration)."""
    if not isinstance(config, Mapping):
        return None
    section = config.get("params") if config.get("script") else config.get("train")
    epochs = section.get("epochs") if isinstance(section, Mapping) else None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


class RunRecord(TypedDict, total=False):
    """A `runs` document of the catalogue (catalog.json's working set, or a segment of sealed
    runs), as `Store` hands it out.

    `config`, `history` and `events` are left out where a caller asks
    (`Store.list_runs(omit=...)`, `Store.queued()`); fields after `seq` are set
    when they apply. Each state also stamps `<state>_at` (e.g. `completed_at`).
    """

    id: Required[str]
    """"r<N>"."""
    preset: Required[str]
    state: Required[str]
    """A RunState value."""
    priority: int
    device: str | None
    """Where it runs (asked for, until it starts)."""
    pinned: str | None
    """The device asked for at enqueue."""
    config: dict[str, Any]
    """The fully resolved preset (`RunSpec.config()`)."""
    config_hash: str
    created_at: float
    queued_at: float
    started_at: float | None
    finished_at: float | None
    history: list[dict[str, Any]]
    """One EpochRecord.to_json() per epoch."""
    events: list[dict[str, Any]]
    """RunEvent.to_json() each."""
    error: str | None
    study: str | None
    trial: int | None
    attempts: int
    worker: int | None
    """The pid training it."""
    seq: int
    """Enqueue order (dispatch: priority, then seq)."""
    slot: str
    cancel_requested: bool
    foreground: bool
    """Trained by `trialdeck train` or `trialdeck worker` in that process, not by the engine."""
    n_params: int
    peak_memory: int
    summary: dict[str, Any]
    """TrainResult.summary(): last epoch, the monitor's best, the kept epoch and its metrics."""
    kept_epoch: int | None
    """The epoch whose weights the run ended with (the best one when early stopping restored them)."""
    trial_id: int
    params: dict[str, Any]
    ensemble: str | None
    """Trials with equal values may train as one ensemble (training.membership.group_id)."""
    members: int
    """Set on the engine's copy of a queued run at dispatch: how many runs train with it."""
    remote: str
    """The redacted storage URL of a study this run is a remote trial of."""
    workdir: str
    code_hash: str
    host: str
    tags: list[str]
    note: str
    data_path: str
    """"device" or "stream"."""
    archived: bool
    """Set by `runs archive`: out of default lists (`runs list --archived` shows it), kept whole."""
    imported_from: str
    """The id the run had where it was exported (`runs import`), through every move."""
    imported_study: str
    """The study (and `imported_trial` the trial number) it was a trial of there."""
    imported_trial: int
    completed_at: float
    early_stopped_at: float
    pruned_at: float
    failed_at: float
    cancelled_at: float
    interrupted_at: float


class StudyRecord(TypedDict, total=False):
    """A `studies` document of the catalogue: the Optuna study's summary, mirrored by `tuning.study.sync`."""

    name: Required[str]
    state: str
    """A StudyState value."""
    preset: str
    config: dict[str, Any]
    metric: str
    direction: str
    reduce: str
    sampler: str
    pruner: str
    storage: str
    """The storage URL with its password redacted."""
    storage_url: str
    counts: dict[str, int]
    """Trials by Optuna state (complete, pruned, fail, running, ...)."""
    n_done: int
    n_trials: int
    best: dict[str, Any] | None
    """number, value, params, run_id of the best complete trial."""
    importances: dict[str, float] | None
    started_at: float
    finished_at: float | None
    synced_at: float
    deadline: float | None
    stopped_by: str
    """"trials" or "timeout"."""
    error: str | None
    create: dict[str, Any] | None
    """Set by a client (`tune`): the engine creates the Optuna study from it, then clears it."""
    directions: list[str]
    """One per objective, in order ("minimize" / "maximize")."""
    objectives: list[dict[str, str]]
    """[{metric, direction}] in order; one objective: the study's metric and direction."""
    pareto: list[int]
    """Several objectives: the numbers of the complete trials on the front (Optuna's best_trials)."""
    importances_by_objective: dict[str, dict[str, float]] | None
    """Several objectives: PED-ANOVA importances per objective's metric, and "pareto" for the front."""
    tags: list[str]
    """`tune --tag`: carried by every trial's run."""
