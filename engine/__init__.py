"""trialdeck's headless core: presets, datasets, trainer, store, queue, engine.

Importing this package must stay cheap and must never load textual or rich
(tests/test_import_hygiene.py checks it). Heavy modules (torch, optuna) are
imported by the submodules that need them, never from here.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
