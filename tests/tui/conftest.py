"""Pilot helpers for the TUI tests: a seeded workspace in UTC, an app built the way the CLI builds
it (but with a fixed clock, a fixed hardware probe, fast polling and no cursor blink), and waits on
what the screen shows rather than on time.

Every test already has its own TRIALDECK_HOME (tests/conftest.py); `ws` is the workspace the app
opens, created under the test's tmp_path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trialdeck.engine.workspace import Workspace
from trialdeck.tui.app import TrialdeckApp, make_app
from trialdeck.tui.probes import FixedProbe
from trialdeck.tui.testing import fixed_clock, seed_workspace, wait_for

SIZE = (120, 40)
SMALL, LARGE = (80, 24), (120, 40)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Times on screen in UTC, whatever the machine's zone (snapshots and text checks)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """An empty workspace."""
    return Workspace(tmp_path / "home").ensure()


@pytest.fixture
def seeded(ws: Workspace, utc: None) -> tuple[Workspace, dict[str, str]]:
    """A workspace with runs in every state, followed metrics and a study (tui.testing.seed_workspace);
    and the ids it made, by role."""
    return ws, seed_workspace(ws)


def new_app(ws: Workspace) -> TrialdeckApp:
    """The app as `trialdeck` opens it, made deterministic for tests."""
    return make_app(ws, start_engine=False, clock=fixed_clock, probe=FixedProbe(), interval=0.05, cursor_blink=False)


def screen_name(app: TrialdeckApp) -> str:
    return type(app.screen).__name__


def screen_is(app: TrialdeckApp, name: str) -> bool:
    return screen_name(app) == name and app.screen.is_mounted


async def show(pilot, key: str, screen: str) -> None:
    """Press `key` and wait until `screen` is up and mounted."""
    await pilot.press(key)
    await wait_for(pilot, lambda: screen_is(pilot.app, screen), what=screen)


async def loaded(pilot, *, everything: bool = False) -> None:
    """The first catalogue read has reached the screen; with `everything`, also the engine and hardware
    sample and the followed metrics (what a snapshot shows)."""
    app = pilot.app
    if everything:
        await wait_for(pilot, lambda: app.catalog is not None and app.status is not None and app.live, what="data")
    await wait_for(pilot, lambda: app.catalog is not None and getattr(app.screen, "catalog", None) is not None,
                   what="the first catalogue read")
