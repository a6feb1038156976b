"""What every trialdeck screen shares: the app's context and the data the app pushes down.

The app owns every read of the workspace and sets these reactives on the
screens in the current stack; a screen only redraws from them. Screens ask
the app to act by posting the requests in tui/messages.py.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Input

from trialdeck.tui.context import Context
from trialdeck.tui.keymap import ACTIONS
from trialdeck.tui.live import Catalog, LiveRun, LogEntry
from trialdeck.tui.probes import EngineSample, HardwareSample


class LiveScreen(Screen):
    """A screen fed by the app: catalogue reads, followed metrics, status samples."""

    catalog: reactive[Catalog | None] = reactive(None, init=False)
    """The latest catalogue read (runs without configs, studies)."""
    live: reactive[Mapping[str, LiveRun]] = reactive(dict, init=False)
    """Latest state of each followed run's metrics stream."""
    status: reactive[tuple[EngineSample, HardwareSample] | None] = reactive(None, init=False)
    """The latest engine and hardware sample."""
    entries: reactive[tuple[tuple[int, LogEntry], ...]] = reactive((), init=False)
    """Recent log entries with their sequence numbers."""

    _ready = False
    """Set at the start of a subclass's on_mount: watchers may fire before (pushed data)."""

    @property
    def ctx(self) -> Context:
        return self.app.ctx  # type: ignore[attr-defined]

    def now(self) -> float:
        return self.ctx.clock()

    def key_for(self, binding_id: str) -> str:
        """How the footer shows a binding's first key, after keys.toml (the app's); its default
        key in an app that has no keymap."""
        app_key_for = getattr(self.app, "key_for", None)
        if app_key_for is not None:
            return str(app_key_for(binding_id))
        key = ACTIONS[binding_id][0].split(",")[0]
        return "␣" if key == "space" else key

    @property
    def typing(self) -> bool:
        """An input has the focus: printable keys (`/` included) type into it, so their bindings do nothing."""
        return isinstance(self.focused, Input)

    _availability: tuple | None = None

    def sync_bindings(self) -> None:
        """`refresh_bindings()` only when some action's availability changed.

        Refreshing redraws the footer (it recomposes its keys: ~10 ms); a
        cursor move or a live update usually changes nothing it shows.
        """
        state = tuple(self.check_action(*_parse(b.action)) for b in self.BINDINGS if isinstance(b, Binding))
        if state != self._availability:
            self._availability = state
            self.refresh_bindings()

    def spawn(self, fn: Any, done: Any = None, *, name: str, exclusive: bool = True) -> None:
        """Run blocking `fn` in a thread; `done(result)` runs on the UI thread if this screen is still up."""
        self.app.spawn(fn, done, owner=self, name=name, exclusive=exclusive)  # type: ignore[attr-defined]


def _parse(action: str) -> tuple[str, tuple[object, ...]]:
    """"move('top')" -> ("move", ("top",)), as check_action receives it."""
    name, paren, rest = action.partition("(")
    if not paren:
        return name, ()
    params = ast.literal_eval(f"({rest[:-1]},)") if rest[:-1].strip() else ()
    return name, tuple(params)
