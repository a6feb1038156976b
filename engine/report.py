"""Report a training script's epochs to trialdeck: the Python standard library only.

A script the engine runs (`[script]` presets, `trialdeck run --script`) finds
its run's files in the environment: `TRIALDECK_METRICS` is a file to append
one JSON object per epoch to, `TRIALDECK_RUN_DIR` a folder for its own
checkpoints, `TRIALDECK_RESUME=1` says it is resuming an interrupted run, and
`TRIALDECK_PARAMS` holds its params as a JSON object. This module wraps those
for Python scripts; a script in any other language or environment writes the
same lines itself and needs nothing installed.

Invariants:
- It imports nothing from trialdeck (nor torch), so `from trialdeck.engine.report
  import report` costs a few milliseconds in any process.
- Each `report` is one `write` of one whole line on an O_APPEND file: the
  engine reads complete lines only and waits for a torn last line's newline.
- Outside trialdeck (no TRIALDECK_METRICS) `report` does nothing, so the same
  script still runs by hand.
- The module is callable: `from trialdeck.engine import report; report(epoch=1)`
  (the public surface) and `from trialdeck.engine.report import report` (the
  older deep path) call the same function.
"""

from __future__ import annotations

import json
import math
import os
import sys
import types
from pathlib import Path
from typing import Any

__all__ = ["params", "report", "resuming", "run_dir"]


def _plain(value: Any) -> Any:
    """A JSON-safe value: numpy/torch scalars through `.item()`, NaN and infinities as null."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report(**metrics: Any) -> None:
    """Append one epoch's metrics, e.g. `report(epoch=3, train_loss=0.52, val_loss=0.41)`.

    `epoch` counts from 1; without it the engine numbers epochs in order. Any
    other names are kept in the run's history; numeric ones can be a monitor
    for early stopping or a study's metric. Report an epoch before you save the
    checkpoint that includes it: a resumed run that reports an epoch again
    replaces it, so history then has no gap and no duplicate."""
    path = os.environ.get("TRIALDECK_METRICS")
    if not path:
        return
    line = json.dumps({k: _plain(v) for k, v in metrics.items()}, default=str, allow_nan=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        data = line.encode()
        written = os.write(fd, data)
        while written < len(data):  # only on a full disk or a signal mid-write
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)


def run_dir(default: str | os.PathLike[str] = ".") -> Path:
    """The run's own folder for checkpoints and files (`default` outside trialdeck)."""
    return Path(os.environ.get("TRIALDECK_RUN_DIR") or default)


def resuming() -> bool:
    """True when the engine restarts an interrupted run: load your checkpoint from `run_dir()`."""
    return os.environ.get("TRIALDECK_RESUME") == "1"


def params() -> dict[str, Any]:
    """The run's `[params]` (with `--set` and a study's samples applied); {} outside trialdeck."""
    text = os.environ.get("TRIALDECK_PARAMS")
    return json.loads(text) if text else {}


class _CallableModule(types.ModuleType):
    """This module, callable as `report(...)`: Python binds a package's attribute to its submodule
    once the submodule is imported, so `trialdeck.engine.report` can only ever be this module;
    calling it is what a user of `from trialdeck.engine import report` means."""

    def __call__(self, **metrics: Any) -> None:
        report(**metrics)


sys.modules[__name__].__class__ = _CallableModule
