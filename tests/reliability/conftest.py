"""Shared helpers for the reliability suite: a private workspace and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path: Path):
    home = tmp_path / "ws"
    yield home
    stop_engine(home)


def stop_engine(home: Path) -> None:
    """Never leave an engine behind a test: stop it, and kill it if it does not stop."""
    import json
    import signal

    pid_file = home / "engine.pid"
    if not pid_file.exists():
        return
    cli(home, "engine", "stop", timeout=90)
    try:
        pid = json.loads(pid_file.read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ValueError, KeyError, ProcessLookupError):
        pass


def cli(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`trialdeck ARGS --home HOME` in a real subprocess (list argv, no shell)."""
    full_env = {**os.environ, "TRIALDECK_HOME": str(home), **(env or {})}
    full_env.pop("TRIALDECK_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "trialdeck.tui.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert "Traceback" not in stderr
    return lines[0]
