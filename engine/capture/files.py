"""Following the logs a program writes while it runs: CSV logs, and the W&B stand-in's lines.

Each follower reads what was appended since its last `poll` (whole lines
only: a line still being written waits for its newline) and returns it as
`Observation`s. Files are found by a path or a glob, relative to the run's
workdir, and only files written since the run started are followed: a
`metrics.csv` or a `lightning_logs/version_3` left by an earlier run is not
this run's.

- CSV (Lightning's CSVLogger, any `metrics.csv`): the header names the
  columns; an `epoch` and a `step` column give the place (neither: each row is
  the next step); empty cells are skipped. Lightning rewrites the whole file
  when a new column appears: a file whose header changed is read again from
  the top, skipping the rows already taken.
- W&B lines (engine/capture/standin/wandb): one JSON object per committed
  row, `{"_step": N, "_explicit": bool, name: value, ...}`. The place is the
  `step=` the program passed, else a `step`/`iter`/`global_step` value in the
  row, else the stand-in's own counter; an `epoch` value is the epoch.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trialdeck.engine.capture.scanner import kind_of, normalize, number
from trialdeck.engine.capture.steps import Number, Observation

__all__ = ["CsvFollower", "WandbFollower", "matching_files"]

SLACK_SECONDS = 2.0
"""A file modified this long before the run started still counts as the run's (clock granularity)."""


def matching_files(pattern: str, since: float) -> list[Path]:
    """Files matching `pattern` (a path or a glob, `**` allowed) modified since `since`, oldest first."""
    out = []
    for name in glob.glob(pattern, recursive=True):
        try:
            stat = os.stat(name)
        except OSError:
            continue
        if os.path.isfile(name) and stat.st_mtime >= since - SLACK_SECONDS:
            out.append((stat.st_mtime, name))
    return [Path(name) for _, name in sorted(out)]


class _Tail:
    """The complete lines appended to one file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.first = b""
        """The file's first line when last read (a CSV's header): a rewritten file starts over."""

    def read(self, final: bool = False) -> tuple[list[bytes], bool]:
        """(new complete lines, whether the file was rewritten and these are all of them)."""
        try:
            with open(self.path, "rb") as f:
                head = f.readline()
                size = os.fstat(f.fileno()).st_size
                restart = size < self.offset or (self.offset and head != self.first and head.endswith(b"\n"))
                if restart:
                    self.offset = 0
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return [], False
        end = len(data) if final else data.rfind(b"\n") + 1
        if self.offset == 0 and head.endswith(b"\n"):
            self.first = head
        self.offset += end
        return data[:end].splitlines(), bool(restart)


class CsvFollower:
    """The rows of the CSV files matching `pattern` (see the module docstring)."""

    def __init__(self, pattern: str, since: float, rename: Mapping[str, str] | None = None) -> None:
        self.pattern = pattern
        self.since = since
        self.rename = dict(rename or {})
        self._files: dict[Path, _Tail] = {}
        self._header: dict[Path, list[str]] = {}
        self._rows: dict[Path, int] = {}
        self.epoch: Number | None = None
        self.ordinal = 0

    def poll(self, final: bool = False) -> list[Observation]:
        out: list[Observation] = []
        for path in matching_files(self.pattern, self.since):
            tail = self._files.setdefault(path, _Tail(path))
            lines, restart = tail.read(final)
            if restart:
                self._header.pop(path, None)
            out += self._rows_of(path, lines, skip=self._rows.get(path, 0) if restart else 0)
        return out

    def _rows_of(self, path: Path, lines: list[bytes], skip: int) -> list[Observation]:
        out: list[Observation] = []
        text = [line.decode("utf-8", "replace") for line in lines if line.strip()]
        if not text:
            return out
        if path not in self._header:
            self._header[path] = [normalize(h) for h in next(csv.reader([text[0]]))]
            text = text[1:]
        header = self._header[path]
        for i, row in enumerate(csv.reader(text)):
            if i < skip:
                continue
            self._rows[path] = self._rows.get(path, 0) + 1
            obs = self._row(header, row)
            if obs is not None:
                out.append(obs)
        return out

    def _row(self, header: list[str], row: list[str]) -> Observation | None:
        values: dict[str, Number] = {}
        step = epoch = None
        for name, cell in zip(header, row):
            if not cell.strip() or not name:
                continue
            value = number(cell)
            if value is None:
                continue
            kind = kind_of(name)
            if kind == "epoch":
                epoch = value
            elif kind == "step":
                step = value
            else:
                values[self.rename.get(name, name)] = value
        if epoch is not None:
            self.epoch = epoch
        self.ordinal += 1
        if not values:
            return None
        if step is None and self.epoch is None:
            step = self.ordinal  # no place column: each row is the next step
        return Observation(values, step, self.epoch)


class WandbFollower:
    """The rows the W&B stand-in writes (see the module docstring)."""

    def __init__(self, path: Path, rename: Mapping[str, str] | None = None) -> None:
        self.tail = _Tail(path)
        self.rename = dict(rename or {})
        self.problems = 0

    def poll(self, final: bool = False) -> list[Observation]:
        lines, _ = self.tail.read(final)
        out = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                self.problems += 1
                continue
            obs = self._row(row)
            if obs is not None:
                out.append(obs)
        return out

    def _row(self, row: dict[str, Any]) -> Observation | None:
        counter, explicit = row.pop("_step", None), bool(row.pop("_explicit", False))
        values: dict[str, Number] = {}
        step = epoch = None
        for raw, value in row.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = normalize(raw)
            kind = kind_of(name)
            if kind == "epoch":
                epoch = value
            elif kind == "step":
                step = value if step is None else step
            else:
                values[self.rename.get(name, name)] = value
        if explicit or step is None:
            step = counter if isinstance(counter, (int, float)) else step
        return Observation(values, step, epoch) if values else None
