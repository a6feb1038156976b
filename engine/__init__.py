"""trialdeck's headless core: presets, datasets, trainer, store, queue, engine.

The public Python surface is this package's three names; every deeper module
is internal (the paths below keep working for code written against them):

- `report(epoch=3, val_loss=0.41)`: a training script's epochs to its run
  (`trialdeck.engine.report`, the standard library only; `report.run_dir()`,
  `report.resuming()` and `report.params()` are there too).
- `load_model("r3")`: the network a run trained, with the weights it kept
  (`trialdeck.engine.training.export.load_model`; imports torch).
- `__version__`: the one version string (pyproject.toml reads it from here).

Importing this package must stay cheap and must never load textual or rich
(tests/test_import_hygiene.py checks it): `report` and `load_model` are
imported on first use (PEP 562), so `import trialdeck.engine` loads neither
torch nor optuna.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["__version__", "load_model", "report"]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from trialdeck.engine import report as report
    from trialdeck.engine.training.export import load_model as load_model


def __getattr__(name: str) -> Any:
    if name == "report":
        # The module itself, which is callable (engine/report.py): `report(...)` and
        # `report.run_dir()` both work, and `import trialdeck.engine.report` gives the same object.
        return importlib.import_module("trialdeck.engine.report")
    if name == "load_model":
        # Deferred: loading a model needs torch, which `import trialdeck.engine` must not pay for.
        return importlib.import_module("trialdeck.engine.training.export").load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
