"""The lines a script run reports: read incrementally, and kept as the run's history.

A script (runtime.script) appends one JSON object per epoch to its
TRIALDECK_METRICS file. Invariants:
- `ReportedLines` consumes complete lines only: a last line without its
  newline is a write in progress and waits, except at the end (`final`),
  when the script can no longer finish it. A line that is not a JSON object
  is skipped and kept in `problems` (the runner logs it).
- `ScriptHistory`: an epoch reported again (a resumed script going back to
  its checkpoint) replaces that epoch and every later one, so a history never
  holds a duplicate; an unnumbered line is the next epoch. Values are kept as
  reported (NaN and infinities become null); only numbers can be monitored.
Pure (no torch, no processes), so it is tested as plain logic.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trialdeck.engine.types import finite
from trialdeck.engine.workspace import private_open


class ReportedLines:
    """Reads the lines a script appends to its metrics file, from where the last read stopped.

    A last line without its newline is a write in progress and is left for the next
    read, except at the end (`final`), when the script can no longer finish it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.problems: list[str] = []
        """Complete lines that are not a JSON object (each is skipped, and logged)."""

    def prepare(self) -> list[dict[str, Any]]:
        """Before an attempt starts: cut a torn last line a killed script left (the next
        line would otherwise be glued to it), create the file, and return every line so far."""
        fd = private_open(self.path, os.O_RDWR | os.O_CREAT)
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0) if size else b""
            end = data.rfind(b"\n") + 1
            if end < size:
                os.ftruncate(fd, end)
        finally:
            os.close(fd)
        return self._parse(data[:end], end)

    def read(self, final: bool = False) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = len(data) if final else data.rfind(b"\n") + 1
        return self._parse(data[:end], self.offset + end)

    def _parse(self, data: bytes, offset: int) -> list[dict[str, Any]]:
        self.offset = offset
        out = []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                # The standard library's parser: it also takes NaN and Infinity, which a
                # script's json.dumps writes for a diverged loss.
                value = json.loads(line)
            except ValueError:
                value = None
            if isinstance(value, dict):
                out.append(value)
            else:
                self.problems.append(line[:200].decode("utf-8", "replace"))
        return out


def _clean(value: Any) -> Any:
    """NaN and infinities become null (JSON has neither); everything else is kept as reported."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def numeric(value: Any) -> float | None:
    """`value` as a finite number, or None (a string, a boolean, a null)."""
    return float(value) if finite(value) else None


@dataclass(frozen=True)
class ReportedEpoch:
    """One reported line as a history entry; what the recorder and observers get as an epoch
    record (like EpochRecord: `epoch` and `to_json`), with any metrics the script chose."""

    epoch: int
    values: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, **self.values}

    def metric(self, name: str) -> float | None:
        return numeric(self.values.get(name))


@dataclass
class ScriptHistory:
    """The run's history as the script reported it, across attempts (see the module docstring)."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, lines: Iterable[dict[str, Any]]) -> ScriptHistory:
        history = cls()
        for line in lines:
            history.add(line)
        return history

    @property
    def last_epoch(self) -> int | None:
        return self.entries[-1]["epoch"] if self.entries else None

    def add(self, line: dict[str, Any]) -> tuple[ReportedEpoch, bool]:
        """Take one reported line; returns it as an epoch, and whether it went back (replaced
        this epoch and later ones)."""
        epoch = line.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not math.isfinite(epoch) \
                or epoch != int(epoch) or epoch < 0:
            epoch = (self.last_epoch or 0) + 1  # unnumbered: the next one
        epoch = int(epoch)
        record = ReportedEpoch(epoch, {k: _clean(v) for k, v in line.items() if k != "epoch"})
        rewound = self.last_epoch is not None and epoch <= self.last_epoch
        if rewound:
            self.entries = [e for e in self.entries if e["epoch"] < epoch]
        self.entries.append(record.to_json())
        return record, rewound
