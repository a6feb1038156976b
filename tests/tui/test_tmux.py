"""End to end in a real terminal: tmux runs `trialdeck --home WS` at 120x40.

The keys a person would press queue `seed/step-decay` with `train.epochs=400`
from the preset browser; the dashboard's sparkline for the run grows while it
trains; killing the tmux session (the terminal going away) leaves the engine
and the run going; a new session shows the finished run. The engine this test
starts is stopped at the end. Slow (a real engine, a real worker, torch).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.deck import cli, stop_engine, until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]

COMMAND = os.environ.get("TRIALDECK_TUI_COMMAND", "trialdeck")
"""What opens the TUI (the CLI entry point by default)."""
BLOCKS = "▁▂▃▄▅▆▇█"


class Tmux:
    """A private tmux server (its own socket), so no one else's sessions are touched."""

    def __init__(self) -> None:
        self.socket = f"trialdeck-test-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

    def start(self, name: str, command: str, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        # If the TUI exits, the pane stays up showing why (a timeout then prints it).
        shell = f"env {exports} {command}; echo \"[the TUI exited with status $?]\"; sleep 3600"
        self("new-session", "-d", "-s", name, "-x", "120", "-y", "40", shell)

    def has(self, name: str) -> bool:
        return subprocess.run(["tmux", "-L", self.socket, "has-session", "-t", name], capture_output=True,
                              timeout=30).returncode == 0

    def screen(self, name: str) -> str:
        return self("capture-pane", "-p", "-t", name)

    def keys(self, name: str, *keys: str) -> None:
        for key in keys:
            self("send-keys", "-t", name, key)
            time.sleep(0.08)

    def type(self, name: str, text: str) -> None:
        self("send-keys", "-t", name, "-l", text)
        time.sleep(0.2)

    def wait(self, name: str, predicate, timeout: float = 30.0, what: str = "text") -> str:
        shown = [""]

        def look() -> str | None:
            shown[0] = self.screen(name)
            return shown[0] if predicate(shown[0]) else None

        return until(look, timeout, what, interval=0.2, context=lambda: f"the pane shows:\n{shown[0]}")

    def kill_server(self) -> None:
        self("kill-server", check=False)


def cli_json(ws: Path, *args: str) -> dict:
    proc = cli(ws, *args, "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def spark_of(screen: str, run_id: str) -> str:
    for line in screen.splitlines():
        if line.strip().startswith(run_id + " "):
            found = re.findall(f"[{BLOCKS}]+", line)
            return found[0] if found else ""
    return ""


def row_of(screen: str, run_id: str) -> str:
    return next((line for line in screen.splitlines() if line.strip().startswith(run_id + " ")), "")


def test_queue_watch_detach_and_reattach(tmp_path):
    ws = tmp_path / "ws"
    env = {"TERM": "xterm-256color", "TRIALDECK_HOME": str(ws), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    command = f"{COMMAND} --home {ws}"
    tmux = Tmux()
    try:
        tmux.start("one", command, env)
        tmux.wait("one", lambda s: "1 Runs" in s and "engine" in s, what="the dashboard")
        tmux.keys("one", "2")
        tmux.wait("one", lambda s: "Config" in s and "Compose" in s, what="the preset browser")
        for _ in range(9):  # seed/activations is highlighted first; step-decay is nine below
            tmux.keys("one", "Down")
        tmux.wait("one", lambda s: "seed/step-decay  hash" in s, what="seed/step-decay highlighted")
        tmux.keys("one", "r")
        tmux.wait("one", lambda s: "Queue seed/step-decay" in s, what="the queue dialog")
        tmux.keys("one", "Tab", "Tab")
        tmux.type("one", "train.epochs")
        tmux.keys("one", "Tab")
        tmux.type("one", "400")
        tmux.wait("one", lambda s: "400 epochs" in s or "400" in s and "ok:" in s, what="the valid summary")
        tmux.keys("one", "Enter")
        tmux.keys("one", "1")
        screen = tmux.wait("one", lambda s: "running" in row_of(s, "r1") and spark_of(s, "r1"), timeout=90,
                           what="r1 running with a sparkline")
        first = spark_of(screen, "r1")
        screen = tmux.wait("one", lambda s: spark_of(s, "r1") not in ("", first), timeout=30,
                           what="the sparkline to change")
        second = spark_of(screen, "r1")
        assert second != first
        assert len(second) >= len(first)

        tmux("kill-session", "-t", "one")  # the terminal goes away
        until(lambda: not tmux.has("one"), 30, "the tmux session to end after kill-session")
        record = cli_json(ws, "runs", "show", "r1")
        assert record["state"] in ("running", "completed"), record["state"]
        status = cli_json(ws, "engine", "status")
        assert status["running"] is True

        if record["state"] == "running":
            record = until(lambda: (r := cli_json(ws, "runs", "show", "r1"))["state"] != "running" and r, 300,
                           "r1 to finish", interval=1.0)
        assert record["state"] == "completed", record.get("error")
        assert len(record["history"]) == 400

        tmux.start("two", command, env)
        screen = tmux.wait("two", lambda s: "completed" in row_of(s, "r1"), what="the finished run after reattaching")
        row = row_of(screen, "r1")
        assert "400/400" in row and "seed/step-decay" in row
        assert spark_of(screen, "r1")
    finally:
        tmux.kill_server()
        stop_engine(ws)


def test_a_script_runs_sparkline_grows(tmp_path):
    """A user's own training program (tests/scripts/train.py, run by the system's python3) queued
    from the command line: the dashboard shows its reported losses as a growing sparkline."""
    ws = tmp_path / "ws"
    script = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
    preset = tmp_path / "mine.toml"
    preset.write_text(f'[script]\ncommand = ["/usr/bin/python3", "{script}", "--epochs", "400", "--sleep", "0.4"]\n'
                      f'workdir = "{tmp_path}"\n')
    env = {"TERM": "xterm-256color", "TRIALDECK_HOME": str(ws), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    tmux = Tmux()
    try:
        queued = cli_json(ws, "run", str(preset))
        assert queued["id"] == "r1"
        tmux.start("one", f"{COMMAND} --home {ws}", env)
        screen = tmux.wait("one", lambda s: "running" in row_of(s, "r1") and spark_of(s, "r1"), timeout=90,
                           what="the script run running with a sparkline")
        assert "mine" in row_of(screen, "r1")
        first = spark_of(screen, "r1")
        screen = tmux.wait("one", lambda s: len(spark_of(s, "r1")) > len(first), timeout=30,
                           what="the script run's sparkline to grow")
        assert "running" in row_of(screen, "r1")
        assert cli(ws, "queue", "cancel", "r1", timeout=60).returncode == 0
    finally:
        tmux.kill_server()
        stop_engine(ws)


def test_an_empty_workspace_says_how_to_begin(tmp_path):
    ws = tmp_path / "ws"
    env = {"TERM": "xterm-256color", "TRIALDECK_HOME": str(ws), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    tmux = Tmux()
    try:
        tmux.start("first", f"{COMMAND} --home {ws}", env)
        screen = tmux.wait("first", lambda s: "No runs yet" in s, what="the first-screen hint")
        assert "Press 2 for the presets, then r to queue the one highlighted." in screen
        assert "Runs train in a background engine that goes on after this terminal closes." in screen
        tmux.keys("first", "4")
        tmux.wait("first", lambda s: "no studies yet" in s and "starts one" in s, what="how to start a study")
    finally:
        tmux.kill_server()
        stop_engine(ws)
