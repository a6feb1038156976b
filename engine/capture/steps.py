"""Captured values grouped into step records: what every capture source hands on.

A source (the output scanner, a CSV or TensorBoard follower, the W&B
stand-in's log) turns what a program wrote into `Observation`s: some named
numbers, and where the program was (its `step` and/or `epoch`). A `StepTable`
per source groups consecutive observations at the same place into one record,
the later value of a name winning, and hands a record on ("emits" it) when:

- the source moves to another place (the program went on, or went back);
- `settle` seconds passed without a new value for it (file sources: a
  TensorBoard writer flushes a batch of steps at once, and its last step must
  not wait for the next flush). A record emitted this way stays open: a later
  value for the same place emits it again, whole (an amendment);
- the source ends (`flush`).

The place's key, which becomes the run's history `epoch`, is the epoch when
the program gives one (a fractional epoch, the Hugging Face Trainer's 0.33,
counts toward the epoch it is in: 1), else the step. A record also keeps the
last step seen in it (`step`), so a history entry keyed by epoch still says
how far the program had got. Pure: no files, no clock of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

Number = int | float

EPOCH_NAMES = frozenset({"epoch"})
STEP_NAMES = frozenset({"step", "iter", "iteration", "global_step"})
"""Names that give the place, never a metric: `epoch`, and a step's usual names."""

THIN_AFTER = 1000
"""Step records a source emits at full density; after each THIN_AFTER more, only every other key
of the ones before is kept (the stride doubles). Epochs are never thinned, nor a record holding a
name the previous one lacked (an evaluation's). The history is a summary: nanoGPT logging every
step of 600,000 keeps a few thousand, evenly, whatever the rate."""


@dataclass(frozen=True)
class Observation:
    """Numbers a program wrote at one place; `step`/`epoch` None when it did not say."""

    values: dict[str, Number]
    step: Number | None = None
    epoch: Number | None = None

    @property
    def key(self) -> int | None:
        """The history key: the epoch (a fraction counts toward the epoch it is in), else the step."""
        if self.epoch is not None:
            return math.ceil(self.epoch) if self.epoch >= 0 else None
        if self.step is not None:
            return math.floor(self.step) if self.step >= 0 else None
        return None


@dataclass
class StepRecord:
    """One place's values, merged; `to_line` is the report()-style line the run's history takes."""

    key: int
    values: dict[str, Number] = field(default_factory=dict)
    step: Number | None = None
    epoch: Number | None = None
    updated: float = 0.0
    emitted: bool = False
    dirty: bool = True
    """Changed since it was last emitted."""

    def to_line(self) -> dict[str, Any]:
        line: dict[str, Any] = {"epoch": self.key, **self.values}
        if self.step is not None:
            line["step"] = self.step
        return line

    def to_row(self) -> dict[str, Any]:
        """`presets capture --json`'s row: the step (the last one seen, else the key), the epoch
        when the program gave one, then the values."""
        return {"step": self.step if self.step is not None else self.key,
                "epoch": self.key if self.epoch is not None else None, **self.values}


class StepTable:
    """Groups one source's observations into step records (see the module docstring)."""

    def __init__(self, settle: float | None = None, thin_after: int | None = THIN_AFTER) -> None:
        self.settle = settle
        self.thin_after = thin_after
        self.open: StepRecord | None = None
        self._out: list[StepRecord] = []
        self._last_key: int | None = None
        self._last_names: frozenset[str] = frozenset()
        self._stride = 1
        self._at_stride = 0
        self.thinned = 0
        """Step records left out (see THIN_AFTER)."""

    def add(self, obs: Observation, now: float = 0.0) -> None:
        key = obs.key
        if key is None or not obs.values and self.open is not None and self.open.key == key:
            return
        rec = self.open
        if rec is None or rec.key != key:
            if rec is not None:
                self._close(rec, now, moving_on=True)
            rec = self.open = StepRecord(key)
        rec.values.update(obs.values)
        if obs.step is not None:
            rec.step = obs.step
        if obs.epoch is not None:
            rec.epoch = obs.epoch
        rec.updated = now
        rec.dirty = True

    def take(self, now: float) -> list[StepRecord]:
        """Records to hand on now: closed ones, and the open one once it has settled."""
        rec = self.open
        if rec is not None and rec.dirty and rec.values and self.settle is not None and now - rec.updated >= self.settle:
            self._emit(rec, now)
        out, self._out = self._out, []
        return out

    def flush(self) -> list[StepRecord]:
        """The source ended: everything, the open record included."""
        rec, self.open = self.open, None
        if rec is not None and rec.dirty and rec.values:
            self._emit(rec, math.inf)
        out, self._out = self._out, []
        return out

    def _close(self, rec: StepRecord, now: float, moving_on: bool) -> None:
        if not rec.dirty or not rec.values:
            return
        if (moving_on and rec.epoch is None and not rec.emitted and self._last_key is not None
                and 0 <= rec.key - self._last_key < self._stride and frozenset(rec.values) <= self._last_names):
            self.thinned += 1  # a step between two kept ones: the history is a summary
            return
        self._emit(rec, now)

    def _emit(self, rec: StepRecord, now: float) -> None:
        rec.emitted, rec.dirty = True, False
        self._last_names = frozenset(rec.values)
        if rec.epoch is None and (self._last_key is None or rec.key != self._last_key):
            self._at_stride += 1
            if self.thin_after and self._at_stride >= self.thin_after:
                self._stride, self._at_stride = self._stride * 2, 0
        self._last_key = rec.key
        self._out.append(StepRecord(rec.key, dict(rec.values), rec.step, rec.epoch, rec.updated, True, False))
