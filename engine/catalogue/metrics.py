"""Per-run metric streams: append-only JSON-lines files, never TinyDB.

One job: write per-step records cheaply and let followers read them
incrementally.

Invariants:
- The writer appends whole lines with a single `write` on an O_APPEND file
  (0600), so a reader sees complete lines plus at most one torn last line.
- A reader never consumes a line that has no newline yet: the returned offset
  stops before it, so the next read picks it up once it is complete.
- A writer killed mid-line leaves a fragment; the next writer starts on a
  fresh line, so the fragment becomes one complete, unparseable line that
  readers skip instead of stalling on it forever.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from trialdeck.engine.workspace import private_open

__all__ = ["JsonlMetricsWriter", "read_jsonl"]


def _default(obj: Any) -> Any:
    # Metrics often arrive as numpy or torch values; `.item()` gives a float.
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


class JsonlMetricsWriter:
    """Appends one JSON object per line to `path` (NaN and inf are written as null)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = private_open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        if self._ends_mid_line():
            os.write(self._fd, b"\n")

    def _ends_mid_line(self) -> bool:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        return size > 0 and os.pread(self._fd, 1, size - 1) != b"\n"

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` as one line; it is in the file when this returns."""
        if self._fd is None:
            raise ValueError(f"{self.path}: write to a closed metrics writer")
        line = orjson.dumps(record, default=_default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)
        # One unbuffered write: nothing sits in a Python buffer if we die.
        written = os.write(self._fd, line)
        while written < len(line):  # only on a full disk or a signal mid-write
            written += os.write(self._fd, line[written:])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JsonlMetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.close()


def read_jsonl(path: str | os.PathLike[str], offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Records in complete lines after byte `offset`, and the offset to resume from.

    A missing file reads as empty. A last line without its newline (a write in
    progress) is left for the next call; a complete line that does not parse
    as a JSON object (a fragment from a killed writer) is skipped.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # 0 when there is no complete line yet
    records: list[dict[str, Any]] = []
    for line in data[:end].split(b"\n"):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records, offset + end
