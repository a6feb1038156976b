"""The trainer's reporting interface, which the engine, the CLI and tuning implement.

The trainer calls these from its own loop; implementations must be cheap (the
per-step hook runs at most a few times a second, and only when `wants_steps`).
A callback stops a run by returning a `Stop` from `on_epoch` or `poll`.
"""

from __future__ import annotations

from dataclasses import dataclass

from trialdeck.engine.types import EpochRecord, RunEvent, RunState


@dataclass(frozen=True)
class Stop:
    """Ask the trainer to end the run in `state` (pruned, cancelled, interrupted)."""

    state: RunState
    event: RunEvent | None = None


class TrainerCallback:
    wants_steps: bool = False
    """Set True to receive throttled per-step losses (each costs one device sync)."""
    step_interval: float = 0.5
    """Seconds between per-step reports and between `poll` calls."""

    def on_start(self, info: dict) -> None:
        """Device, parameter count, dataset sizes, resumed epoch."""

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        """A throttled training loss (only when wants_steps)."""

    def on_epoch(self, record: EpochRecord, events: list[RunEvent]) -> Stop | None:
        """One epoch's summary and the events it produced; may stop the run (pruning)."""
        return None

    def on_event(self, event: RunEvent) -> None:
        """An event outside an epoch summary (final early stop, checkpoint, failure)."""

    def poll(self) -> Stop | None:
        """Checked about every `step_interval` seconds inside an epoch (cancellation)."""
        return None

    def log(self, line: str) -> None:
        """A human-readable line for the run's log."""
