"""The engine: the one long-lived process per workspace that runs the queue.

It holds the workspace lock (one engine per workspace), owns the queue, the
catalogue and the studies, and dispatches queued runs through its placement
backend (runtime.placement, picked by engine.toml: this box's warm workers, or
with `cluster` a Dask distributed cluster, `distributed` imported only then)
the moment a place frees or a client signals a change (SIGUSR1): no polling
sleep between runs. Every run state change goes through its lifecycle
(runs.lifecycle), which the backend reports facts to. It never listens on a
network port. Started detached (`trialdeck engine start`) it has its own
session and no controlling terminal, so it survives SSH dropping.

Recovery at start (policy `recovery`): runs found `running` with no live
worker are Lost (interrupted); with "resume" (default) they are queued again
and go on from their last checkpoint; with "requeue" they start over (the
checkpoint is removed); with "leave" they stay interrupted. SIGTERM (`engine
stop`) is graceful: running runs checkpoint and become interrupted, to be
resumed by the next engine.

The engine's pid file says who it is and what its backend offers
(`Capabilities`: devices and places), for `engine status` and enqueue checks;
it is rewritten when that changes (a Dask worker joins).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import EngineUnavailable, TrialdeckError
from trialdeck.engine.runs.facts import Lost
from trialdeck.engine.runs.lifecycle import RECOVERY_POLICIES, Lifecycle
from trialdeck.engine.runtime.config import EngineConfig, check_cluster_url
from trialdeck.engine.runtime.control.pidfile import alive, describe_pid
from trialdeck.engine.runtime.notify import Notifier
from trialdeck.engine.runtime.placement import backend_class
from trialdeck.engine.runtime.placement.base import BasePlacement
from trialdeck.engine.runtime.runners.choice import runner_class
from trialdeck.engine.runtime.wake import Waker
from trialdeck.engine.types import RunState
from trialdeck.engine.workspace import Workspace, atomic_write

if TYPE_CHECKING:  # optuna, which the driver imports, loads only once a study exists
    from trialdeck.engine.tuning.driver import StudyDriver

PlacementFactory = Callable[[Workspace, Store, Lifecycle, Callable[[str], None]], BasePlacement]
"""Builds the engine's backend; default: the one engine.toml picks (placement.backend_class)."""


class Engine:
    def __init__(self, ws: Workspace, config: EngineConfig | None = None, *,
                 placement: PlacementFactory | None = None) -> None:
        self.ws = ws
        self.config = config or EngineConfig()
        self.store = Store(ws)
        self.notifier: Notifier | None = None
        """Sends [notify] from its own thread; None when engine.toml has no [notify]."""
        self.lifecycle = Lifecycle(self.store, recovery=self.config.recovery, log=self._log, on_end=self._ended)
        if placement is None:
            backend = backend_class(self.config)
            self.placement = backend(ws, self.store, self.lifecycle, self._log, self.config)
        else:
            self.placement = placement(ws, self.store, self.lifecycle, self._log)
        self.started_at = time.time()
        self.stopping = False
        self.lock = FileLock(str(ws.lock_path), timeout=0, mode=0o600)
        self._driver: StudyDriver | None = None
        self._published: dict[str, Any] | None = None
        self.waker = Waker()

    # ----------------------------------------------------------------- lifecycle

    def run(self) -> None:
        """The engine in this process until SIGTERM or SIGINT (the main thread's signals)."""
        self._install_signals()
        self.open()
        try:
            self.placement.start()
            threading.Thread(target=_warm_tuning_imports, name="warm-optuna", daemon=True).start()
            self._log(f"engine {os.getpid()} up: " + self._describe_places())
            self.step(0)
            while not self.stopping and self.step():
                pass
        finally:
            self.close()

    def open(self) -> None:
        """Take the workspace (lock, pid file), recover what a dead engine left, drive its studies."""
        try:
            self.lock.acquire()
        except Timeout:
            raise EngineUnavailable(f"another engine already runs on {self.ws.root} ({describe_pid(self.ws)})") from None
        try:
            self.publish()
            if self.config.notify is not None:
                self.notifier = Notifier(self.config.notify, Store(self.ws), self._log).start()
            self.reconcile()
            if self.store.list_studies():
                self.driver.reconcile()
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        """Stop the backend (running runs interrupted, checkpoints kept), the notifier, and leave."""
        try:
            self._shutdown()
        finally:
            self.ws.pid_path.unlink(missing_ok=True)
            self.lock.release()

    def _describe_places(self) -> str:
        if self.config.cluster:
            return f"placing runs on the Dask cluster at {self.config.cluster}"
        places = self.placement.capabilities().places
        return f"{len(places)} slot(s): " + ", ".join(places)

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self.waker.fileno_to_write(), warn_on_full_buffer=False)
        signal.signal(signal.SIGUSR1, lambda *_: None)  # wakes the loop through the wakeup fd
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)

    def _request_stop(self, *_: Any) -> None:
        self.stopping = True

    def publish(self) -> None:
        """engine.pid: who the engine is and what its backend offers (rewritten when that changes)."""
        info = {"pid": os.getpid(), "started_at": self.started_at, "home": str(self.ws.root),
                "recovery": self.config.recovery, "cluster": self.config.cluster, **self.placement.status_fields()}
        if info != self._published:
            atomic_write(self.ws.pid_path, json.dumps(info).encode())
            self._published = info

    def _log(self, line: str) -> None:
        print(time.strftime("%Y-%m-%d %H:%M:%S"), line, flush=True)

    # ----------------------------------------------------------------- recovery

    def reconcile(self) -> None:
        """Runs left `running` by a dead engine or worker are Lost; then every interrupted run goes
        back in the queue as `recovery` says (the lifecycle decides)."""
        for run in self.store.list_runs(RunState.RUNNING):
            if run.get("foreground") and alive(run.get("worker")):
                continue  # a `trialdeck train` in another terminal, still going
            runner_class(run.get("config")).clean_up_after(self.ws, run["id"])
            self.lifecycle.apply(Lost(run["id"], "interrupted: its engine or worker stopped unexpectedly",
                                      requeue=False))
        self.lifecycle.recover()

    @property
    def driver(self) -> StudyDriver:
        """The tuning driver, created on first use: optuna is imported only when studies exist."""
        if self._driver is None:
            from trialdeck.engine.tuning.driver import StudyDriver

            self._driver = StudyDriver(self.store, self._log, on_end=self._study_ended, lifecycle=self.lifecycle)
        return self._driver

    def _feed_studies(self) -> bool:
        """Ask and tell for running studies; True when any study was looked at."""
        if not self.store.active_studies():
            return False
        self.driver.tick(capacity=self.placement.capacity(), ensemble_width=self.placement.ensemble_width)
        return True

    # ----------------------------------------------------------------- loop

    def step(self, timeout: float = 1.0) -> bool:
        """One pass of the loop: wait up to `timeout` for news, take it in, pass on cancels, feed
        studies, dispatch. False when the engine should stop (its workspace is gone)."""
        placement = self.placement
        ready = wait([self.waker.fd, *placement.waitables()], timeout=timeout)
        if self.waker.fd in ready:
            self.waker.drain()
        placement.handle(ready)
        if self.stopping:
            return False
        if not self.ws.catalog_path.parent.is_dir():
            self._log(f"workspace {self.ws.root} is gone; stopping")
            return False
        placement.check_cancellations()
        if self._feed_studies():
            placement.check_cancellations()  # a stopping study may have asked to cancel its trials
        placement.dispatch()
        self.publish()
        return True

    def _ended(self, run_id: str, state: RunState) -> None:
        """A run ended under this engine: tell the notifier (it only queues; the sending is its thread's)."""
        if self.notifier is not None:
            self.notifier.run_ended(run_id, state.value)

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
        config = EngineConfig.read(ws)
        config = EngineConfig(
            slots_per_gpu=args.slots_per_gpu or config.slots_per_gpu,
            cpu_slots=args.cpu_slots or config.cpu_slots,
            recovery=args.recovery or config.recovery,
            notify=config.notify,
            cluster=check_cluster_url(args.cluster, "--cluster") if args.cluster else config.cluster,
        )
        Engine(ws, config).run()
    except TrialdeckError as exc:
        print(f"trialdeck engine: {exc}", file=sys.stderr)
        return int(exc.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
