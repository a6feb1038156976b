"""Client side of the engine: find it, start it detached, signal it, stop it, wait on runs.

The engine is found through its lock (held while it lives) and pid file. A
client that changed the queue sends SIGUSR1 so the engine dispatches at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from filelock import FileLock, Timeout

from trialdeck.engine.catalogue.metrics import read_jsonl
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import BadInput, EngineUnavailable, ExitCode
from trialdeck.engine.runtime.control import versions
from trialdeck.engine.runtime.control.pidfile import alive, read_pid_info
from trialdeck.engine.runtime.placement.base import CLUSTER_STATUS_NAME
from trialdeck.engine.runtime.runners.recorder import METRICS_NAME
from trialdeck.engine.types import UNFINISHED_STATES, RunRecord, RunState
from trialdeck.engine.workspace import Workspace, atomic_write

START_TIMEOUT = 30.0
ENGINE_SAYS = "trialdeck engine: "
"""How the daemon's main() starts the line it writes before exiting with an error."""


def lock_held(ws: Workspace) -> bool:
    lock = FileLock(str(ws.lock_path), timeout=0, is_singleton=False, mode=0o600)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def engine_info(ws: Workspace) -> dict[str, Any] | None:
    """The live engine's pid file contents, or None when no engine runs here."""
    info = read_pid_info(ws)
    if info and alive(info.get("pid")) and lock_held(ws):
        return info
    return None


def start_engine(ws: Workspace, *, say: Callable[[str], None] | None = None, args: list[str] | None = None) -> dict[str, Any]:
    """Start a detached engine (own session, no terminal, output to engine.log) unless one runs."""
    info = engine_info(ws)
    if info:
        return info
    Store(ws).list_studies()  # a corrupt catalogue: say so here, in one line, rather than in the engine's log
    ws.held_path.unlink(missing_ok=True)  # started on purpose: no longer held stopped
    log = open(ws.engine_log, "ab")
    os.chmod(ws.engine_log, 0o600)
    # A list argv and no shell: nothing the user typed is interpreted by a shell.
    process = subprocess.Popen(
        [sys.executable, "-m", "trialdeck.engine.runtime.daemon", "--home", str(ws.root), *(args or [])],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, close_fds=True, cwd=str(ws.root),
    )
    log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        info = read_pid_info(ws)
        if info and info.get("pid") == process.pid and lock_held(ws):
            if say:
                say(f"trialdeck: started the engine (pid {process.pid}; log: {ws.engine_log})")
            return info
        if process.poll() is not None:
            other = engine_info(ws)
            if other:  # lost a start race to another client: that engine serves us
                return other
            said = _last_line(ws.engine_log)
            if process.returncode == ExitCode.BAD_INPUT and said.startswith(ENGINE_SAYS):
                raise BadInput(said.removeprefix(ENGINE_SAYS))  # e.g. a bad engine.toml: its one line, here
            raise EngineUnavailable(f"the engine exited at start (code {process.returncode}); see {ws.engine_log}")
        time.sleep(0.05)
    raise EngineUnavailable(f"the engine did not come up within {START_TIMEOUT:.0f} s; see {ws.engine_log}")


def _last_line(path: str | os.PathLike[str]) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def wants_engine(store: Store) -> bool:
    """Whether the catalogue holds work only an engine can do: runs queued, running (a dead
    engine's) or interrupted, or a study that still wants trials (running, or stopping), also
    one the engine has not created yet (killed before its first tick)."""
    if store.active_studies():
        return True
    return any(not r.get("foreground") for r in store.unfinished(omit=("config", "history", "events")))


def ensure_engine(ws: Workspace, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    return engine_info(ws) or start_engine(ws, say=say)


def notify(ws: Workspace) -> bool:
    """Wake the engine so it looks at the queue now. False when none runs."""
    info = engine_info(ws)
    if not info:
        return False
    try:
        os.kill(info["pid"], signal.SIGUSR1)
    except ProcessLookupError:
        return False
    return True


def stop_engine(ws: Workspace, timeout: float = 60.0, *, hold: bool = False) -> dict[str, Any] | None:
    """Graceful stop: running runs checkpoint and become interrupted. Returns the old info.
    `hold`: the user's stop, kept until an explicit start (see `Workspace.held_path`)."""
    if hold:
        atomic_write(ws.held_path, f"{time.time():.0f}\n".encode())
    info = engine_info(ws)
    if not info:
        return None
    os.kill(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(info["pid"]) or not lock_held(ws):
            return info
        time.sleep(0.1)
    raise EngineUnavailable(f"the engine (pid {info['pid']}) did not stop within {timeout:.0f} s")


def status(ws: Workspace) -> dict[str, Any]:
    info = engine_info(ws)
    # The working set and the registry of sealed runs: no segment is read.
    working = Store(ws).working(omit=("config", "history", "events"))
    runs = working.runs
    counts = working.counts()
    out: dict[str, Any] = {
        "running": bool(info),
        "pid": info["pid"] if info else None,
        "uptime": round(time.time() - info["started_at"], 1) if info else None,
        "home": str(ws.root),
        "slots": info.get("slots", []) if info else [],
        "recovery": info.get("recovery") if info else None,
        "runs_running": counts.get("running", 0),
        "runs_queued": counts.get("queued", 0),
        "held": ws.held_path.exists(),
        "runs": counts,
        "active": [{"id": r["id"], "preset": r["preset"], "slot": r.get("slot"), "device": r.get("device"),
                    "host": r.get("host")} for r in runs if r["state"] == RunState.RUNNING],
        # Where runs train: this box's slots, or a Dask cluster (its workers, what runs where, or why it is away).
        "placement": (info.get("placement") or "local") if info else None,
        "cluster": read_cluster_status(ws) if info and info.get("cluster") else None,
        # What its backend offers (placement.capabilities): the devices a run may be pinned to.
        "devices": sorted((info.get("capabilities") or {}).get("devices") or []) if info else [],
        "growing": bool((info.get("capabilities") or {}).get("growing")) if info else False,
    }
    # torch's build and the driver's CUDA, and a warning when they do not fit (no torch import).
    out.update(versions.probe())
    return out


def wait_for_run(ws: Workspace, run_id: str, *, timeout: float | None = None,
                 say: Callable[[str], None] | None = None) -> RunRecord:
    """Block until the run reaches a final state; restarts the engine if it died meanwhile."""
    store = Store(ws)
    version = None
    last_check = time.monotonic()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = store.version()
        if current != version:
            version = current
            record = store.get_run(run_id)
            if record is None:
                raise EngineUnavailable(f"run {run_id} vanished from {store.path}")
            if RunState(record["state"]).terminal or (
                record["state"] == RunState.INTERRUPTED.value and (record.get("foreground") or ws.held_path.exists())
            ):
                return record
        now = time.monotonic()
        if now - last_check > 2.0:
            last_check = now
            if not engine_info(ws) and not ws.held_path.exists():  # died, not stopped by the user
                ensure_engine(ws, say=say)
        if deadline is not None and now > deadline:
            raise TimeoutError(run_id)
        time.sleep(0.05)


def follow(ws: Workspace, run_id: str, *, poll: float = 0.2) -> Iterator[dict[str, Any]]:
    """Yield the run's metric-stream records as they are written, then a final
    {"kind": "final", "record": ...} when the run ends."""
    store = Store(ws)
    path = ws.run_dir(run_id) / METRICS_NAME
    offset = 0
    last_check = time.monotonic()
    while True:
        records, offset = read_jsonl(path, offset) if path.exists() else ([], offset)
        yield from records
        record = store.get_run(run_id)
        if record is None:
            raise EngineUnavailable(f"no run {run_id}")
        if follow_ended(ws, record):
            records, offset = read_jsonl(path, offset) if path.exists() else ([], offset)
            yield from records
            yield {"kind": "final", "record": record}
            return
        if time.monotonic() - last_check > 2.0:
            last_check = time.monotonic()
            revive_for(ws, record)
        time.sleep(poll)


def follow_ended(ws: Workspace, record: Mapping[str, Any]) -> bool:
    """Whether following this run is over: it ended, or it was interrupted while the engine is
    held (`engine stop`); an interrupted run otherwise goes on when the engine comes back."""
    state = record["state"]
    return RunState(state).terminal or (ws.held_path.exists() and state == RunState.INTERRUPTED.value)


def revive_for(ws: Workspace, record: Mapping[str, Any]) -> None:
    """Start the engine again if it died under this unfinished run (not when it is held)."""
    if record["state"] in UNFINISHED_STATES and not ws.held_path.exists() and not engine_info(ws):
        ensure_engine(ws)


def read_cluster_status(ws: Workspace) -> dict[str, Any] | None:
    """What a Dask-placing engine last wrote about its cluster (url, state, workers and their
    runs), or None when the engine places runs locally. Light: no `distributed` import."""
    try:
        data = json.loads((ws.root / CLUSTER_STATUS_NAME).read_text())
    except (FileNotFoundError, ValueError, OSError):
        return None
    return data if isinstance(data, dict) else None
