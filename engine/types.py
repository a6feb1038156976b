"""Data types shared by the engine, the CLI and the TUI.

Plain dataclasses and enums only (no torch, no pydantic models beyond RunSpec
which lives in trialdeck.engine.presets.schema), so every process can import them cheaply.
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field
from typing import Any


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
        """Ended with a usable result (exit code 0 for `run --wait`)."""
        return self in (RunState.COMPLETED, RunState.EARLY_STOPPED, RunState.PRUNED)


TERMINAL_STATES = frozenset(
    {RunState.COMPLETED, RunState.EARLY_STOPPED, RunState.PRUNED, RunState.FAILED, RunState.CANCELLED}
)

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
    """One epoch's summary: the `history` entries of a run record."""

    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
