"""What a screen needs from the app, without importing the app (which imports the screens).

The app builds one Context at start; screens reach it as `self.ctx` (screens/base.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.workspace import Workspace
from trialdeck.tui.composition import PresetLibrary
from trialdeck.tui.control import Control


@dataclass
class Context:
    """What every screen may use: the workspace, its store, the preset library, the clock."""

    ws: Workspace
    store: Store
    library: PresetLibrary
    control: Control
    clock: Callable[[], float]
    storages: list[str] = field(default_factory=list)
    """Optuna storages whose studies the Studies view shows besides the workspace's (`tui --storage`,
    and those opened there), as storage URLs (a journal file as "journal:<path>")."""
