"""Data types shared by the engine, the CLI and the TUI.

Plain dataclasses and enums only (no torch, no pydantic models beyond RunSpec
which lives in trialdeck.engine.presets.schema), so every process can import them cheaply.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Mapping
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

# Which transitions the store accepts; anything else is a bug and is refused.
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.CANCELLED, RunState.FAILED}),
    RunState.RUNNING: frozenset(
        {
            RunState.COMPLETED,
            RunState.EARLY_STOPPED,
            RunState.PRUNED,
            RunState.FAILED,
            RunState.CANCELLED,
            RunState.INTERRUPTED,
        }
    ),
    RunState.INTERRUPTED: frozenset({RunState.QUEUED, RunState.FAILED, RunState.CANCELLED}),
    RunState.COMPLETED: frozenset(),
    RunState.EARLY_STOPPED: frozenset(),
    RunState.PRUNED: frozenset(),
    RunState.FAILED: frozenset({RunState.QUEUED}),
    RunState.CANCELLED: frozenset({RunState.QUEUED}),
}


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
