"""A workspace and the `trialdeck` commands a user would type against it, for tests that
start real engines (tests/test_engine.py, tests/test_tuning.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
_EXE = shutil.which("trialdeck")
TRIALDECK = [_EXE] if _EXE else [sys.executable, "-c", "from trialdeck.tui.cli import main; main()"]
TERMINAL = {"completed", "early_stopped", "pruned", "failed", "cancelled"}


def cli(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
        cwd: str | Path | None = None, home_option: bool = True) -> subprocess.CompletedProcess:
    """`trialdeck ARGS --home HOME` as a real process (list argv, no shell), stdout and stderr kept
    apart; the one way tests run the command line as a user would. TRIALDECK_HOME names HOME too
    (`home_option=False` leaves `--home` out, for a command that takes none, such as a group alone),
    and the variables that change behaviour (debug, fault injection) are dropped unless `env` sets them."""
    full = {k: v for k, v in os.environ.items() if k not in ("TRIALDECK_DEBUG", "TRIALDECK_INJECT_FAULT")}
    full.update({"TRIALDECK_HOME": str(home), **(env or {})})
    argv = [*TRIALDECK, *args, *(("--home", str(home)) if home_option else ())]
    return subprocess.run(argv, cwd=cwd or REPO, env=full, capture_output=True, text=True, timeout=timeout)


def stop_engine(home: Path) -> None:
    """Never leave an engine behind a test: stop it, and kill it if it does not stop."""
    pid_file = home / "engine.pid"
    if not pid_file.exists():
        return
    try:
        cli(home, "engine", "stop", timeout=90)
    except subprocess.TimeoutExpired:
        pass
    try:
        pid = json.loads(pid_file.read_text())["pid"]
    except (FileNotFoundError, ValueError, KeyError):
        return
    if not gone(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def until(predicate: Callable[[], Any], timeout: float, what: Callable[[], str] | str, interval: float = 0.05,
          context: Callable[[], str] | None = None) -> Any:
    """The one polling helper: call `predicate` until it returns something truthy (and return that),
    or fail after `timeout` seconds saying what was awaited (`what`, a string or a function for
    the state at the time) and `context` (an engine.log tail, say). Tests wait on the engine's own
    states and events with it, never on a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {described}"
                                 + (f"\n{context()}" if context is not None else ""))
        if interval:
            time.sleep(interval)


def one_line(stderr: str) -> str:
    """The one plain line a user mistake gets on stderr (never a traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert "Traceback" not in stderr
    return lines[0]


def gone(pid: int) -> bool:
    """True when `pid` no longer runs (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


class Deck:
    """One workspace and the `trialdeck` commands a user would type against it."""

    cli_timeout: float = 120

    def __init__(self, home: Path, default_home: Path | None = None) -> None:
        self.home = home
        self.ws = Workspace.resolve(home)
        self.env = {k: v for k, v in os.environ.items() if k not in ("TRIALDECK_DEBUG", "TRIALDECK_INJECT_FAULT")}
        self.env["TRIALDECK_HOME"] = str(home)
        self.default_home = default_home
        self._store: Store | None = None

    @property
    def backend(self) -> str:
        """Where its engine places runs: "dask" when its engine.toml names a cluster, else "local"."""
        toml = self.home / "engine.toml"
        return "dask" if toml.exists() and "cluster" in toml.read_text() else "local"

    def argv(self, *args: str) -> list[str]:
        """The argv of `trialdeck ARGS --home HOME`, for a process the test starts itself."""
        return [*TRIALDECK, *args, "--home", str(self.home)]

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
        """`trialdeck ARGS --home HOME` as a real process (tests.deck.cli)."""
        return cli(self.home, *args, env=env, timeout=timeout or self.cli_timeout)

    def ok(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        proc = self.cli(*args, **kw)
        assert proc.returncode == 0, f"`trialdeck {' '.join(args)}` exited {proc.returncode}:\n{proc.stderr}\n{self.log_tail()}"
        return proc

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.ok(*args, "--json", **kw).stdout)

    @property
    def store(self) -> Store:
        """The catalogue, read the way a script would (the TinyDB file through the store)."""
        if self._store is None:
            self._store = Store(self.ws)
        return self._store

    def engine_pid(self) -> int | None:
        try:
            return json.loads(self.ws.pid_path.read_text())["pid"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.ws.engine_log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no engine.log)"
        return "engine.log tail:\n" + "\n".join(text.splitlines()[-lines:])

    def wait(self, predicate: Callable[[], Any], timeout: float, what: Callable[[], str] | str,
             interval: float = 0.05) -> Any:
        """`until`, with the engine.log tail when it times out."""
        return until(predicate, timeout, what, interval, context=self.log_tail)

    def stop(self) -> None:
        """Teardown: graceful stop, then SIGKILL of whatever engine.pid still names."""
        stop_engine(self.home)


def journal_trials(ws: Workspace, study: str):
    """The study's trials from its Optuna journal file, read with Optuna's own classes."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = ws.studies_dir / f"{study}.journal"
    assert path.exists(), f"no Optuna journal at {path}"
    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
