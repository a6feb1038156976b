"""trialdeck's offline stand-in for `wandb`: a program's W&B calls, recorded in its trialdeck run.

A script preset with `[script.capture] wandb = true` puts the folder holding
this package first on the program's PYTHONPATH, so `import wandb` finds it
instead of the real one. Nothing is sent anywhere and nothing is installed:
this file imports the Python standard library only (never trialdeck, never a
third-party package), like trialdeck.engine.report.

What works: `wandb.init(...)` (its `config`, and as a context manager),
`wandb.log(data, step=None, commit=None)` and `run.log`, `wandb.config`
(attribute and item access, `update`, `setdefaults`), `wandb.summary`,
`wandb.finish()`, `wandb.login()`, `wandb.run`. Logging follows W&B's own
steps: each `log` call is a row at the current step, which then moves on;
`commit=False` adds to the row; `step=N` moves to step N (a step below the
current one is ignored, as W&B does). Each committed row is one JSON line
appended to the file named by TRIALDECK_WANDB, which the engine follows:
numbers (numpy and torch scalars too) are kept, nested dicts become
`a/b` names, anything else (images, tables, histograms) is left out.

Everything else (`wandb.watch`, `wandb.Table`, `wandb.Image`, `define_metric`,
artifacts, ...) is accepted and does nothing, with one warning line on
stderr per name, which the run's log keeps.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
from typing import Any

__version__ = "0.0.0+trialdeck.standin"
_WARNED: set[str] = set()
run: Run | None = None
config: Config
summary: Summary


def _warn(name: str) -> None:
    if name not in _WARNED:
        _WARNED.add(name)
        print(f"wandb (trialdeck stand-in): {name} is not supported offline; ignored", file=sys.stderr, flush=True)


class _Ignored:
    """What an unsupported call returns: callable, indexable and usable as a context manager."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> _Ignored:
        return self

    def __getattr__(self, name: str) -> _Ignored:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Ignored(f"{self._name}.{name}")

    def __getitem__(self, key: Any) -> _Ignored:
        return self

    def __enter__(self) -> _Ignored:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<wandb stand-in: {self._name} (ignored)>"


def __getattr__(name: str) -> Any:  # PEP 562: `wandb.Image`, `wandb.watch`, ...
    if name.startswith("__"):
        raise AttributeError(name)
    _warn(f"wandb.{name}")
    return _Ignored(f"wandb.{name}")


class Config(dict):
    """`wandb.config`: a dict whose keys are attributes too."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def update(self, other: Any = None, allow_val_change: bool = False, **kwargs: Any) -> None:  # type: ignore[override]
        if other is not None:
            super().update(other if isinstance(other, dict) else vars(other))
        super().update(kwargs)

    def setdefaults(self, other: dict[str, Any]) -> None:
        for key, value in other.items():
            self.setdefault(key, value)

    def as_dict(self) -> dict[str, Any]:
        return dict(self)


class Summary(dict):
    """`wandb.summary` / `run.summary`: kept in memory (the run's history has the logged values)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _number(value: Any) -> float | int | None:
    """A loggable number: an int or float, or a numpy/torch scalar (its `.item()`)."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        try:
            value = value.item()
        except (TypeError, ValueError):
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "/"))
        else:
            number = _number(value)
            if number is not None:
                out[name] = number
    return out


class Run:
    """What `wandb.init` returns."""

    def __init__(self, project: str | None, name: str | None, config_: Config) -> None:
        self.project, self.name, self.id = project, name, os.environ.get("TRIALDECK_RUN_ID", "offline")
        self.config = config_
        self.summary = summary
        self.step = 0
        self._row: dict[str, Any] = {}
        self._explicit = False
        self._path = os.environ.get("TRIALDECK_WANDB")

    def log(self, data: dict[str, Any], step: int | None = None, commit: bool | None = None, sync: Any = None) -> None:
        if not isinstance(data, dict):
            _warn("log() of something that is not a dict")
            return
        if step is not None:
            if step < self.step:
                print(f"wandb (trialdeck stand-in): step {step} is below the current step {self.step}; ignored, "
                      "as W&B does", file=sys.stderr, flush=True)
                return
            if step > self.step:
                self._commit()
                self.step = int(step)
            self._explicit = True
        self._row.update(_flat(data))
        if commit or (commit is None and step is None):
            self._commit()

    def _commit(self) -> None:
        if self._row:
            if self._path:
                line = json.dumps({"_step": self.step, "_explicit": self._explicit, **self._row}) + "\n"
                fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    data = line.encode()
                    written = os.write(fd, data)
                    while written < len(data):
                        written += os.write(fd, data[written:])
                finally:
                    os.close(fd)
            summary.update(self._row)
            self._row = {}
            self.step += 1
        self._explicit = False

    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        self._commit()
        global run
        if run is self:
            run = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        _warn(f"run.{name}")
        return _Ignored(f"run.{name}")


config = Config()
summary = Summary()


def init(project: str | None = None, name: str | None = None, config: Any = None, **kwargs: Any) -> Run:
    """Start the run (again: the same one). `config` fills `wandb.config`; other settings are ignored."""
    global run
    if config is not None:
        globals()["config"].update(config if isinstance(config, dict) else vars(config))
    if run is None:
        run = Run(project, name, globals()["config"])
        atexit.register(run._commit)  # a row logged with commit=False or step= is not lost at exit
        if not os.environ.get("TRIALDECK_WANDB"):
            print("wandb (trialdeck stand-in): not in a trialdeck run; log() calls go nowhere", file=sys.stderr,
                  flush=True)
    return run


def log(data: dict[str, Any], step: int | None = None, commit: bool | None = None, sync: Any = None) -> None:
    if run is None:
        init()
    assert run is not None
    run.log(data, step=step, commit=commit)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
    if run is not None:
        run.finish()


def login(*args: Any, **kwargs: Any) -> bool:
    return True


def setup(*args: Any, **kwargs: Any) -> None:
    return None


class Settings(dict):
    """`wandb.Settings(...)`: accepted, and its settings ignored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
