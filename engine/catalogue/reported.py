"""The lines a script run reports: read incrementally, and kept as the run's history.

A script (runtime.runners.script) appends one JSON object per epoch to its
TRIALDECK_METRICS file. Invariants:
- `ReportedLines` consumes complete lines only: a last line without its
  newline is a write in progress and waits, except at the end (`final`),
  when the script can no longer finish it. A line that is not a JSON object
  is skipped and kept in `problems` (the runner logs it).
- `ScriptHistory`: an epoch reported again (a resumed script going back to
  its checkpoint) replaces that epoch and every later one, so a history never
  holds a duplicate; an unnumbered line is the next epoch. Values are kept as
  reported (NaN and infinities become null); only numbers can be monitored.
  Captured epochs (engine.capture: what the program printed or logged) join
  the same history as sources of their own; for the same name at the same
  epoch the reported value wins.
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


REPORTED = "reported"
"""The source name of the lines the script appends itself (`report()`, TRIALDECK_METRICS)."""


def _epoch_of(entry: dict[str, Any]) -> ReportedEpoch:
    return ReportedEpoch(entry["epoch"], {k: v for k, v in entry.items() if k != "epoch"})


@dataclass(frozen=True)
class Change:
    """What one line did to the history: `how` is "new" (a later epoch, appended), "changed"
    (an epoch's values changed, or another source's epoch came in between: entries from `since`
    on are new) or "rewound" (its source went back: its epochs from `since` on were replaced)."""

    record: ReportedEpoch
    how: str
    since: int
    source: str = REPORTED
    replaced: tuple[int, int] | None = None
    """A source that went back: the first and last of its epochs it replaced."""
    restarted: bool = False
    """It went back to (or before) its first epoch: the program started over rather than resumed."""


@dataclass
class ScriptHistory:
    """The run's history as the script reported it and the capture read it, across attempts.

    Each source (the reported lines, and each capture source: "output", "tensorboard", ...)
    owns its values at each epoch; an entry is their merge, the reported values winning for the
    same name. A source that goes back (a reported epoch reported again; a captured step below
    the one before it, or a restarted program's first step at or below its earlier ones)
    replaces its own values from there on: a history never holds a duplicate."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    _parts: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _last: dict[str, int] = field(default_factory=dict)
    """Each source's last epoch in this attempt."""
    _top: dict[str, int] = field(default_factory=dict)
    """Each source's highest epoch over all attempts."""

    @classmethod
    def of(cls, lines: Iterable[dict[str, Any]]) -> ScriptHistory:
        history = cls()
        for line in lines:
            history.add(line)
        return history

    @property
    def last_epoch(self) -> int | None:
        return self.entries[-1]["epoch"] if self.entries else None

    def sources(self) -> set[str]:
        return {src for parts in self._parts.values() for src in parts}

    def new_attempt(self) -> None:
        """The program starts again: each source's first epoch is compared with what it recorded before."""
        self._last.clear()

    def add(self, line: dict[str, Any]) -> tuple[ReportedEpoch, bool]:
        """Take one reported line; returns it as an epoch, and whether it went back (replaced
        this epoch and later ones)."""
        change = self.add_from(REPORTED, line)
        return change.record, change.how == "rewound"

    def add_from(self, source: str, line: dict[str, Any]) -> Change:
        """Take one line of `source` (see the class docstring)."""
        epoch = line.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not math.isfinite(epoch) \
                or epoch != int(epoch) or epoch < 0:
            epoch = (self.last_epoch or 0) + 1  # unnumbered: the next one
        epoch = int(epoch)
        values = {k: _clean(v) for k, v in line.items() if k != "epoch"}
        before = self.last_epoch
        if source == REPORTED:
            went_back = self._top.get(source, -1) >= epoch
        elif source in self._last:
            went_back = epoch < self._last[source]
        else:  # the first of this attempt: a restarted program numbers from where it resumed
            went_back = self._top.get(source, -1) >= epoch
        since, replaced, restarted = epoch, None, False
        if went_back:
            mine = sorted(k for k in self._parts if source in self._parts[k])
            gone = [k for k in mine if k >= epoch]
            replaced, restarted = (gone[0], gone[-1]) if gone else None, bool(mine) and epoch <= mine[0]
            for key in gone:
                del self._parts[key][source]
                if not self._parts[key]:
                    del self._parts[key]
            self._top[source] = epoch
        else:
            self._top[source] = max(self._top.get(source, epoch), epoch)
        self._parts.setdefault(epoch, {})[source] = values
        self._last[source] = epoch
        if not went_back and (before is None or epoch > before):
            self.entries.append(self._entry(epoch))
            return Change(_epoch_of(self.entries[-1]), "new", epoch, source)
        self._rebuild(since)
        record = next(_epoch_of(e) for e in self.entries if e["epoch"] == epoch)
        return Change(record, "rewound" if went_back else "changed", since, source, replaced, restarted)

    def _entry(self, epoch: int) -> dict[str, Any]:
        parts = self._parts[epoch]
        merged: dict[str, Any] = {}
        for src, values in parts.items():
            if src != REPORTED:
                merged.update(values)
        merged.update(parts.get(REPORTED, {}))
        return {"epoch": epoch, **merged}

    def _rebuild(self, since: int) -> None:
        kept = [e for e in self.entries if e["epoch"] < since]
        self.entries = kept + [self._entry(k) for k in sorted(k for k in self._parts if k >= since)]
