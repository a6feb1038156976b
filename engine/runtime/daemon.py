"""The engine: the one long-lived process per workspace that runs the queue.

It holds the workspace lock (one engine per workspace), owns the queue, the
catalogue and the studies, and dispatches queued runs through its placement
backend (runtime.placement) the moment a place frees or a client signals a
change (SIGUSR1): no polling sleep between runs. The backend is this box's warm
worker processes, one per device slot, or, with `cluster` in engine.toml, a
Dask distributed cluster (runtime.dask_backend; `distributed` is imported only
then). It never listens on a network port. Started detached (`trialdeck engine
start`) it has its own session and no controlling terminal, so it survives SSH
dropping.

Recovery at start (policy `recovery`): runs found `running` with no live
worker become `interrupted`; with "resume" (default) they are queued again and
the trainer continues from their last checkpoint; with "requeue" they start
over (the checkpoint is removed); with "leave" they stay interrupted.
SIGTERM (`engine stop`) is graceful: running runs checkpoint and become
interrupted, to be resumed by the next engine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import EngineUnavailable, TrialdeckError
from trialdeck.engine.runtime.notify import Notifier, NotifyConfig, parse_config
from trialdeck.engine.runtime.pidfile import alive, describe_pid
from trialdeck.engine.runtime.placement import BasePlacement, LocalPlacement
from trialdeck.engine.runtime.script import forget_attempts, kill_leftovers
from trialdeck.engine.runtime.script import resumes as script_resumes
from trialdeck.engine.types import EventKind, RunEvent, RunState
from trialdeck.engine.workspace import Workspace, atomic_write

if TYPE_CHECKING:  # optuna, which the driver imports, loads only once a study exists
    from trialdeck.engine.tuning.driver import StudyDriver

RECOVERY_POLICIES = ("resume", "requeue", "leave")


class Engine:
    def __init__(self, ws: Workspace, *, slots_per_gpu: int | None = None, cpu_slots: int | None = None,
                 recovery: str = "resume", notify: NotifyConfig | None = None, cluster: str | None = None) -> None:
        self.ws = ws
        self.store = Store(ws)
        self.recovery = recovery
        self.notify_config = notify
        self.notifier: Notifier | None = None
        """Sends [notify] from its own thread; None when engine.toml has no [notify]."""
        self.cluster = cluster
        self.placement: BasePlacement
        if cluster:
            # Deferred: `distributed` is imported only by an engine that places runs on a cluster.
            from trialdeck.engine.runtime.dask_backend import DaskPlacement

            self.placement = DaskPlacement(ws, self.store, self._log, self._ended, url=cluster,
                                           requeue=self._requeue)
        else:
            self.placement = LocalPlacement(ws, self.store, self._log, self._ended,
                                            slots_per_gpu=slots_per_gpu, cpu_slots=cpu_slots)
        self.started_at = time.time()
        self.stopping = False
        self.lock = FileLock(str(ws.lock_path), timeout=0, mode=0o600)
        self._driver: StudyDriver | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # ----------------------------------------------------------------- lifecycle

    def run(self) -> None:
        try:
            self.lock.acquire()
        except Timeout:
            raise EngineUnavailable(f"another engine already runs on {self.ws.root} ({describe_pid(self.ws)})") from None
        try:
            self._install_signals()
            self._write_pid()
            if self.notify_config is not None:
                self.notifier = Notifier(self.notify_config, Store(self.ws), self._log).start()
            self.reconcile()
            if self.store.list_studies():
                self.driver.reconcile()
            self.placement.start()
            threading.Thread(target=_warm_tuning_imports, name="warm-optuna", daemon=True).start()
            if self.cluster:
                self._log(f"engine {os.getpid()} up: placing runs on the Dask cluster at {self.cluster}")
            else:
                slots = self.placement.slot_names()
                self._log(f"engine {os.getpid()} up: {len(slots)} slot(s): " + ", ".join(slots))
            self._loop()
        finally:
            self._shutdown()
            try:
                self.ws.pid_path.unlink()
            except FileNotFoundError:
                pass
            self.lock.release()

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGUSR1, lambda *_: None)  # wakes the loop through the wakeup fd
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)

    def _request_stop(self, *_: Any) -> None:
        self.stopping = True

    def _write_pid(self) -> None:
        info = {"pid": os.getpid(), "started_at": self.started_at, "home": str(self.ws.root),
                "slots": self.placement.slot_names(), "recovery": self.recovery,
                "placement": self.placement.kind, "cluster": self.cluster}
        atomic_write(self.ws.pid_path, json.dumps(info).encode())

    def _log(self, line: str) -> None:
        print(time.strftime("%Y-%m-%d %H:%M:%S"), line, flush=True)

    # ----------------------------------------------------------------- recovery

    def reconcile(self) -> None:
        """Runs left `running` by a dead engine or worker become interrupted, then follow the policy."""
        for run in self.store.list_runs(RunState.RUNNING):
            if run.get("foreground") and alive(run.get("worker")):
                continue  # a `trialdeck train` in another terminal, still going
            event = RunEvent(EventKind.INTERRUPTED.value, None, "interrupted: its engine or worker stopped unexpectedly")
            if (run.get("config") or {}).get("script"):
                kill_leftovers(self.ws, run["id"])  # the script died with its worker; its children may not have
            self.store.transition(run["id"], RunState.INTERRUPTED, add_events=[event])
            self._log(f"{run['id']} was running with no live worker: interrupted")
        for run in self.store.list_runs(RunState.INTERRUPTED):
            self._requeue(run)

    def _requeue(self, run: Mapping[str, Any]) -> None:
        """An interrupted run goes back in the queue as `recovery` says: resumed from its checkpoint,
        started over, or left interrupted (also for a run whose Dask worker or scheduler went away)."""
        if run.get("foreground") or self.recovery == "leave":
            return
        checkpoint = self.ws.checkpoint_path(run["id"])
        if self.recovery == "requeue" and checkpoint.exists():
            checkpoint.unlink()
        if self.recovery == "requeue":
            forget_attempts(self.ws, run["id"])
        how = "resumes from its checkpoint" if checkpoint.exists() else "starts over"
        if script_resumes(self.ws, run["id"]):
            how = "resumes its script with TRIALDECK_RESUME=1"
        event = RunEvent(EventKind.REQUEUED.value, None, f"requeued after an interruption; {how}")
        self.store.transition(run["id"], RunState.QUEUED, add_events=[event])
        self._log(f"{run['id']} requeued ({how})")

    @property
    def driver(self) -> StudyDriver:
        """The tuning driver, created on first use: optuna is imported only when studies exist."""
        if self._driver is None:
            from trialdeck.engine.tuning.driver import StudyDriver

            self._driver = StudyDriver(self.store, self._log, on_end=self._study_ended)
        return self._driver

    def _feed_studies(self) -> bool:
        """Ask and tell for running studies; True when any study was looked at."""
        if not self.store.active_studies():
            return False
        self.driver.tick(capacity=self.placement.capacity(), ensemble_width=self.placement.ensemble_width)
        return True

    # ----------------------------------------------------------------- loop

    def _loop(self) -> None:
        placement = self.placement
        self._feed_studies()
        placement.dispatch()
        while not self.stopping:
            ready = wait([self._wake_r, *placement.waitables()], timeout=1.0)
            if self._wake_r in ready:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
            placement.handle(ready)
            if self.stopping:
                break
            if not self.ws.catalog_path.parent.is_dir():
                self._log(f"workspace {self.ws.root} is gone; stopping")
                break
            placement.check_cancellations()
            if self._feed_studies():
                placement.check_cancellations()  # a stopping study may have asked to cancel its trials
            placement.dispatch()

    def _ended(self, run_id: str, state: str) -> None:
        """A run ended under this engine: tell the notifier (it only queues; the sending is its thread's)."""
        if self.notifier is not None:
            self.notifier.run_ended(run_id, state)

    def _study_ended(self, name: str, state: str) -> None:
        if self.notifier is not None:
            self.notifier.study_ended(name, state)

    def _shutdown(self) -> None:
        self.placement.shutdown()
        if self.notifier is not None:
            self.notifier.close()
        self._log("engine stopped")


def _warm_tuning_imports() -> None:
    """Import optuna (and its importance module, ~1 s) while the engine is idle at start, so
    the first study does not wait for it. Failing here only means paying it later."""
    try:
        import optuna.importance  # noqa: F401
    except Exception:  # noqa: BLE001 - the driver imports it again and reports a real problem
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trialdeck.engine.runtime.daemon",
                                     description="Run the trialdeck engine in the foreground.")
    parser.add_argument("--home", default=None)
    parser.add_argument("--slots-per-gpu", type=int, default=None)
    parser.add_argument("--cpu-slots", type=int, default=None)
    parser.add_argument("--recovery", choices=RECOVERY_POLICIES, default=None)
    parser.add_argument("--cluster", default=None, help="a Dask scheduler's address (tcp://HOST:8786)")
    args = parser.parse_args(argv)
    os.umask(0o077)  # everything the engine and its workers create is private to the user
    ws = Workspace.resolve(args.home).ensure()
    try:
        config = load_engine_config(ws)
    except TrialdeckError as exc:
        print(f"trialdeck engine: {exc}", file=sys.stderr)
        return int(exc.code)
    try:
        engine = Engine(
            ws,
            slots_per_gpu=args.slots_per_gpu or _per_gpu(config.get("slots_per_gpu", "auto")),
            cpu_slots=args.cpu_slots or config.get("cpu_slots"),
            recovery=args.recovery or config.get("recovery", "resume"),
            notify=parse_config(config.get("notify"), ws.root / "engine.toml"),
            cluster=check_cluster_url(args.cluster, "--cluster") if args.cluster else config.get("cluster"),
        )
        engine.run()
    except TrialdeckError as exc:
        print(f"trialdeck engine: {exc}", file=sys.stderr)
        return int(exc.code)
    return 0


def _per_gpu(value: int | str) -> int | None:
    return None if value == "auto" else int(value)


def load_engine_config(ws: Workspace) -> dict[str, Any]:
    """Optional `engine.toml` in the workspace: slots_per_gpu (a number or "auto"), cpu_slots, recovery,
    a [notify] table (trialdeck.engine.runtime.notify), and `cluster`, a Dask scheduler's address."""
    import tomllib

    path = Path(ws.root) / "engine.toml"
    if not path.exists():
        return {}
    from trialdeck.engine.errors import BadInput

    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: TOML syntax error: {exc}") from None
    allowed = {"slots_per_gpu", "cpu_slots", "recovery", "notify", "cluster"}
    for key in data:
        if key not in allowed:
            raise BadInput(f"{path}: unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")
    parse_config(data.get("notify"), path)
    if "cluster" in data:
        check_cluster_url(data["cluster"], f"{path}: cluster")
    if "recovery" in data and data["recovery"] not in RECOVERY_POLICIES:
        raise BadInput(f"{path}: recovery = {data['recovery']!r} is not allowed; allowed: {', '.join(RECOVERY_POLICIES)}")
    for key in ("slots_per_gpu", "cpu_slots"):
        if key == "slots_per_gpu" and data.get(key) == "auto":
            continue
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int) or not 1 <= data[key] <= 64):
            also = ' or "auto"' if key == "slots_per_gpu" else ""
            raise BadInput(f"{path}: {key} = {data[key]!r} must be a whole number from 1 to 64{also}")
    return data


def check_cluster_url(value: Any, where: str) -> str:
    """A Dask scheduler address as `cluster` takes it (tcp://HOST:PORT, or tls://, ws://, wss://,
    inproc://); raises BadInput naming `where` and what is allowed."""
    from trialdeck.engine.errors import BadInput

    schemes = ("tcp://", "tls://", "ws://", "wss://", "inproc://")
    if not isinstance(value, str) or not value.startswith(schemes) or len(value) <= len(value.split("://")[0]) + 3:
        raise BadInput(f"{where}: {value!r} is not a Dask scheduler address; allowed: tcp://HOST:PORT "
                       "(as `dask scheduler` prints it; also tls://, ws://, wss://)")
    return value


if __name__ == "__main__":
    sys.exit(main())
