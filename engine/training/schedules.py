"""Learning-rate schedules, one class per preset `schedule.kind`, behind a registry.

A schedule gives the learning rate for an epoch before that epoch starts (Keras'
LearningRateScheduler convention, epochs counted from 0). Plateau also watches
the last epoch's metrics. `state_dict` / `load_state_dict` make runs resumable.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from trialdeck.engine.presets.schema import ScheduleConfig


class BaseSchedule:
    kind: ClassVar[str]
    steps: ClassVar[bool] = False
    """True when the rate moves in discrete steps (each change is an lr_changed event)."""

    def __init__(self, cfg: ScheduleConfig, lr0: float, epochs: int) -> None:
        self.cfg = cfg
        self.lr0 = lr0
        self.epochs = epochs

    def lr_at(self, epoch: int, last_metrics: dict[str, float] | None = None) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ConstantSchedule(BaseSchedule):
    kind = "constant"

    def lr_at(self, epoch: int, last_metrics: dict[str, float] | None = None) -> float:
        return self.lr0


class StepDecaySchedule(BaseSchedule):
    """The article's step_decay: lr0 * drop ** floor((1 + epoch) / epochs_drop)."""

    kind = "step"
    steps = True

    def lr_at(self, epoch: int, last_metrics: dict[str, float] | None = None) -> float:
        return self.lr0 * self.cfg.drop ** math.floor((1 + epoch) / self.cfg.epochs_drop)


class ExponentialSchedule(BaseSchedule):
    kind = "exponential"

    def lr_at(self, epoch: int, last_metrics: dict[str, float] | None = None) -> float:
        return self.lr0 * self.cfg.gamma**epoch


class CosineSchedule(BaseSchedule):
    """Cosine annealing from lr0 to min_lr over t_max epochs (default: the whole run)."""

    kind = "cosine"

    def lr_at(self, epoch: int, last_metrics: dict[str, float] | None = None) -> float:
        period = self.cfg.t_max or max(1, self.epochs - 1)  # the last epoch reaches min_lr
        t = min(epoch, period) / period
        return self.cfg.min_lr + (self.lr0 - self.cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


class PlateauSchedule(BaseSchedule):
    """Multiply the rate by `factor` once `monitor` has not improved for `patience` epochs."""

    kind = "plateau"
    steps = True

    def __init__(self, cfg: ScheduleConfig, lr0: float, epochs: int) -> None:
        super().__init__(cfg, lr0, epochs)
        self.lr = lr0
        self.best: float | None = None
        self.wait = 0
        self.seen = -1

    def lr_at(self, epoch: int, last_metrics: dict[str, float] | None = None) -> float:
        if last_metrics is None or epoch - 1 <= self.seen or self.cfg.monitor not in last_metrics:
            return self.lr
        self.seen = epoch - 1
        value = last_metrics[self.cfg.monitor]
        maximize = "acc" in self.cfg.monitor
        better = (
            self.best is None
            or (maximize and value > self.best + self.cfg.threshold)
            or (not maximize and value < self.best - self.cfg.threshold)
        )
        if better:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait > self.cfg.patience:
                self.lr = max(self.cfg.min_lr, self.lr * self.cfg.factor)
                self.wait = 0
        return self.lr

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "best": self.best, "wait": self.wait, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.best, self.wait, self.seen = state["lr"], state["best"], state["wait"], state["seen"]


SCHEDULES: dict[str, type[BaseSchedule]] = {
    cls.kind: cls for cls in (ConstantSchedule, StepDecaySchedule, ExponentialSchedule, CosineSchedule, PlateauSchedule)
}


def make_schedule(cfg: ScheduleConfig, lr0: float, epochs: int) -> BaseSchedule:
    return SCHEDULES[cfg.kind](cfg, lr0, epochs)


def preview(cfg: ScheduleConfig, lr0: float, epochs: int) -> list[float]:
    """The rate for each epoch, assuming no plateau (for the composer's curve)."""
    schedule = make_schedule(cfg, lr0, epochs)
    return [schedule.lr_at(e) for e in range(epochs)]
