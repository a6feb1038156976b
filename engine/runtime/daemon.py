"""The engine: the one long-lived process per workspace that runs the queue.

It holds the workspace lock (one engine per workspace), keeps one warm worker
process per device slot, and dispatches queued runs the moment a slot frees or
a client signals a change (SIGUSR1): no polling sleep between runs. It never
listens on a network port. Started detached (`trialdeck engine start`) it has
its own session and no controlling terminal, so it survives SSH dropping.

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
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import EngineUnavailable, TrialdeckError
from trialdeck.engine.runtime.gpus import probe_gpus
from trialdeck.engine.runtime.notify import Notifier, NotifyConfig, parse_config
from trialdeck.engine.runtime.pidfile import alive, describe_pid
from trialdeck.engine.runtime.scheduler import Scheduler, Slot, make_slots
from trialdeck.engine.runtime.worker import INTERRUPT, NO_STOP, worker_main
from trialdeck.engine.training.membership import queue_groups
from trialdeck.engine.types import ACTIVE_STUDY_STATES, EventKind, RunEvent, RunState
from trialdeck.engine.workspace import Workspace, atomic_write

if TYPE_CHECKING:  # optuna, which the driver imports, loads only once a study exists
    from trialdeck.engine.tuning.driver import StudyDriver

RECOVERY_POLICIES = ("resume", "requeue", "leave")
ENSEMBLE_WIDTH_GPU, ENSEMBLE_WIDTH_CPU = 32, 16
"""Most trials one worker trains as one ensemble (trialdeck.engine.training.ensemble)."""
CANCEL_GRACE = 5.0
"""Seconds a worker gets to stop a run cooperatively before its process group is killed."""
STOP_GRACE = 30.0


@dataclass
class WorkerHandle:
    slot: Slot
    process: Any
    conn: Any
    flag: Any
    pid: int = 0
    ready: bool = False
    run_id: str | None = None
    """The run the slot is held for (an ensemble's first member)."""
    cancels: Any = None
    """Run numbers to cancel (shared with the worker; 0 = empty cell)."""
    members: set[str] = field(default_factory=set)
    """Every run this worker is training now: one, or an ensemble's members."""
    cancel_sent: dict[str, float] = field(default_factory=dict)
    """When each cancel was asked for (monotonic), for the grace before a kill."""

    def take(self, run_ids: list[str]) -> None:
        self.run_id, self.members, self.cancel_sent = run_ids[0], set(run_ids), {}
        self.flag.value = NO_STOP
        self.cancels[:] = [0] * len(self.cancels)

    def cancel(self, run_id: str, now: float) -> None:
        cells = list(self.cancels)
        self.cancels[cells.index(0)] = int(run_id[1:])  # a cell per member: never full
        self.cancel_sent[run_id] = now


class Engine:
    def __init__(self, ws: Workspace, *, slots_per_gpu: int | None = None, cpu_slots: int | None = None,
                 recovery: str = "resume", notify: NotifyConfig | None = None) -> None:
        self.ws = ws
        self.store = Store(ws)
        self.recovery = recovery
        self.notify_config = notify
        self.notifier: Notifier | None = None
        """Sends [notify] from its own thread; None when engine.toml has no [notify]."""
        gpus = probe_gpus()
        self.gpus = gpus
        self.scheduler = Scheduler(make_slots(gpus, slots_per_gpu, cpu_slots))
        self.ensemble_width = ENSEMBLE_WIDTH_GPU if gpus else ENSEMBLE_WIDTH_CPU
        self.ctx = mp.get_context("spawn")
        self.workers: dict[str, WorkerHandle] = {}
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
            for slot in self.scheduler.slots:
                self._spawn(slot)
            threading.Thread(target=_warm_tuning_imports, name="warm-optuna", daemon=True).start()
            self._log(f"engine {os.getpid()} up: {len(self.scheduler.slots)} slot(s): "
                      + ", ".join(s.name for s in self.scheduler.slots))
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
                "slots": [s.name for s in self.scheduler.slots], "recovery": self.recovery}
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
            self.store.transition(run["id"], RunState.INTERRUPTED, add_events=[event])
            self._log(f"{run['id']} was running with no live worker: interrupted")
        for run in self.store.list_runs(RunState.INTERRUPTED):
            if run.get("foreground") or self.recovery == "leave":
                continue
            checkpoint = self.ws.checkpoint_path(run["id"])
            if self.recovery == "requeue" and checkpoint.exists():
                checkpoint.unlink()
            how = "resumes from its checkpoint" if checkpoint.exists() else "starts over"
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
        if not any(d.get("state") in ACTIVE_STUDY_STATES for d in self.store.list_studies()):
            return False
        self.driver.tick(capacity=len(self.scheduler.slots), ensemble_width=self.ensemble_width)
        return True

    # ----------------------------------------------------------------- workers

    def _spawn(self, slot: Slot) -> None:
        parent, child = self.ctx.Pipe()
        flag = self.ctx.Value("i", NO_STOP, lock=False)
        cancels = self.ctx.Array("q", self.ensemble_width, lock=False)
        threads = max(1, (os.cpu_count() or 1) // max(1, len(self.scheduler.slots)))
        cuda_visible = str(slot.gpu) if slot.gpu is not None else ("" if not self.gpus else None)
        process = self.ctx.Process(target=worker_main, name=f"trialdeck-worker-{slot.name}",
                                   args=(slot.name, str(self.ws.root), child, flag, threads, cuda_visible, cancels),
                                   daemon=False)
        process.start()
        child.close()
        self.workers[slot.name] = WorkerHandle(slot, process, parent, flag, cancels=cancels)

    def _kill_worker(self, handle: WorkerHandle) -> None:
        try:
            os.killpg(handle.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        handle.process.join(5)

    # ----------------------------------------------------------------- loop

    def _loop(self) -> None:
        self._feed_studies()
        self._dispatch()
        while not self.stopping:
            waitables = [self._wake_r]
            for h in self.workers.values():
                waitables += [h.conn, h.process.sentinel]
            ready = wait(waitables, timeout=1.0)
            if self._wake_r in ready:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
            for handle in list(self.workers.values()):
                if handle.conn in ready:
                    self._on_message(handle)
                if handle.process.sentinel in ready and not handle.process.is_alive():
                    self._on_worker_died(handle)
            if self.stopping:
                break
            if not self.ws.catalog_path.parent.is_dir():
                self._log(f"workspace {self.ws.root} is gone; stopping")
                break
            self._check_cancellations()
            if self._feed_studies():
                self._check_cancellations()  # a stopping study may have asked to cancel its trials
            self._dispatch()

    def _on_message(self, handle: WorkerHandle) -> None:
        try:
            while handle.conn.poll():
                message = handle.conn.recv()
                if message[0] == "ready":
                    handle.ready, handle.pid = True, message[1]
                    self._log(f"worker {handle.pid} ready on {handle.slot.name}")
                elif message[0] == "memory":  # the first epoch's peak GPU memory of a run
                    _, run_id, peak = message
                    self.scheduler.learn(run_id, peak)
                elif message[0] == "done":
                    _, run_id, state = message
                    self._log(f"{run_id} {state} on {handle.slot.name}")
                    self._ended(run_id, state)
                    handle.members.discard(run_id)
                    if not handle.members and handle.run_id is not None:
                        self.scheduler.release(handle.run_id)
                        handle.run_id = None
                        handle.flag.value = NO_STOP
        except (EOFError, OSError):
            pass

    def _on_worker_died(self, handle: WorkerHandle) -> None:
        code = handle.process.exitcode
        killed = code is not None and code < 0
        how = f"was killed by signal {signal.Signals(-code).name}" if killed else f"exited with code {code}"
        self._log(f"worker on {handle.slot.name} {how}")
        if handle.run_id is not None:
            for run_id in sorted(handle.members):
                run = self.store.get_run(run_id)
                if run and run["state"] == RunState.RUNNING.value:
                    cancelled = run_id in handle.cancel_sent
                    state = RunState.CANCELLED if cancelled else RunState.FAILED
                    message = ("cancelled by the user (worker stopped)" if cancelled
                               else f"worker process {how} (out of memory or a crash?)")
                    reason = None if cancelled else message
                    event = RunEvent(EventKind.CANCELLED.value if cancelled else EventKind.FAILED.value, None, message)
                    self.store.transition(run_id, state, error=reason, add_events=[event])
                    self._ended(run_id, state.value)
            self.scheduler.release(handle.run_id)
        handle.conn.close()
        del self.workers[handle.slot.name]
        if not self.stopping:
            self._spawn(handle.slot)

    def _check_cancellations(self) -> None:
        now = time.monotonic()
        busy = {run_id: h for h in self.workers.values() if h.run_id for run_id in h.members}
        if not busy:
            return
        for run in self.store.list_runs(RunState.RUNNING, omit=("config", "history", "events")):
            handle = busy.get(run["id"])
            if handle is None or not run.get("cancel_requested") or self.workers.get(handle.slot.name) is not handle:
                continue  # not ours, not asked, or its worker was killed for another member just now
            sent = handle.cancel_sent.get(run["id"])
            if sent is None:
                handle.cancel(run["id"], now)
            elif now - sent > CANCEL_GRACE:
                self._log(f"{run['id']} did not stop within {CANCEL_GRACE:.0f} s; killing its worker")
                self._kill_worker(handle)
                self._on_worker_died(handle)

    def _gpu_readings(self) -> tuple[dict[int, int], dict[int, int | None]]:
        """Free memory and utilisation per GPU, read now (packing decisions need fresh numbers)."""
        if not self.gpus:
            return {}, {}
        gpus = probe_gpus()
        return {g.index: g.free for g in gpus}, {g.index: g.util for g in gpus}

    def _dispatch(self) -> None:
        free = [s for s in self.scheduler.slots if s.free and self.workers.get(s.name) and self.workers[s.name].ready]
        if not free:
            return
        queued = self.store.queued()
        if not queued:
            return
        # Only ready workers' slots are offered: mark the others busy for this plan.
        hidden = [s for s in self.scheduler.slots if s.free and s not in free]
        for s in hidden:
            s.run_id = "(starting)"
        heads, groups = self._ensembles(queued)
        heads = [run for run in heads if not self._refuse(run, groups.get(run["id"], [run["id"]]))]
        try:
            placements = self.scheduler.plan(heads, *self._gpu_readings())
        finally:
            for s in hidden:
                s.run_id = None
        for p in placements:
            handle = self.workers[p.slot.name]
            members = groups.get(p.run_id, [p.run_id])
            started = []
            for i, run_id in enumerate(members):
                how = f"started on {p.slot.name}"
                if len(members) > 1:
                    how += f" (member {i + 1} of an ensemble of {len(members)})"
                try:
                    self.store.transition(run_id, RunState.RUNNING, worker=handle.pid, slot=p.slot.name,
                                          device=p.slot.device, cancel_requested=False,
                                          add_events=[RunEvent(EventKind.STARTED.value, None, how)])
                except ValueError:  # cancelled between our read and this write
                    continue
                started.append(run_id)
            if not started:
                self.scheduler.release(p.run_id)
                continue
            if started[0] != p.run_id:  # the slot is held under the first member that started
                self.scheduler.release(p.run_id)
                p.slot.run_id = started[0]
            handle.take(started)
            if len(started) > 1:
                handle.conn.send(("group", started, p.device))
            else:
                handle.conn.send(("run", started[0], p.device))
            self._log(f"{', '.join(started)} -> {p.slot.name}")

    def _ensembles(self, queued: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        """Queued runs as the scheduler should see them: each group `membership.queue_groups`
        makes (an ensemble, or a run alone) collapsed into its first run, in queue order; and
        each first run's members."""
        heads: list[dict[str, Any]] = []
        groups: dict[str, list[str]] = {}
        for group in queue_groups(queued, self.ensemble_width, self.ws.checkpoint_path):
            head = group[0]
            head["members"] = len(group)
            heads.append(head)
            groups[head["id"]] = [run["id"] for run in group]
        return heads, groups

    def _refuse(self, run: dict[str, Any], members: list[str]) -> bool:
        """Fail queued runs no slot of this engine can ever take (pinned to a missing GPU)."""
        reason = self.scheduler.impossible(run)
        if reason is None:
            return False
        for run_id in members:
            try:
                self.store.transition(run_id, RunState.FAILED, error=reason,
                                      add_events=[RunEvent(EventKind.FAILED.value, None, reason)])
                self._log(f"{run_id} failed: {reason}")
                self._ended(run_id, RunState.FAILED.value)
            except ValueError:  # cancelled meanwhile
                pass
        return True

    def _ended(self, run_id: str, state: str) -> None:
        """A run ended under this engine: tell the notifier (it only queues; the sending is its thread's)."""
        if self.notifier is not None:
            self.notifier.run_ended(run_id, state)

    def _study_ended(self, name: str, state: str) -> None:
        if self.notifier is not None:
            self.notifier.study_ended(name, state)

    def _shutdown(self) -> None:
        busy = [h for h in self.workers.values() if h.run_id]
        for h in busy:
            h.flag.value = INTERRUPT
        deadline = time.monotonic() + STOP_GRACE
        # Each busy worker checkpoints its run, records it interrupted and answers "done".
        while any(h.run_id and h.process.is_alive() for h in busy) and time.monotonic() < deadline:
            for conn in wait([h.conn for h in busy if h.run_id], timeout=0.5):
                self._on_message(next(h for h in busy if h.conn is conn))
        for h in list(self.workers.values()):
            if h.run_id:
                self._kill_worker(h)
                for run_id in sorted(h.members):
                    run = self.store.get_run(run_id)
                    if run and run["state"] == RunState.RUNNING.value:
                        self.store.transition(run_id, RunState.INTERRUPTED, add_events=[
                            RunEvent(EventKind.INTERRUPTED.value, None, "interrupted: the engine stopped")])
            else:
                try:
                    h.conn.send(("exit",))
                except (BrokenPipeError, OSError):
                    pass
        for h in list(self.workers.values()):
            h.process.join(3)
            if h.process.is_alive():
                self._kill_worker(h)
        self.workers.clear()
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
    args = parser.parse_args(argv)
    os.umask(0o077)  # everything the engine and its workers create is private to the user
    ws = Workspace.resolve(args.home).ensure()
    try:
        config = load_engine_config(ws)
    except TrialdeckError as exc:
        print(f"trialdeck engine: {exc}", file=sys.stderr)
        return int(exc.code)
    engine = Engine(
        ws,
        slots_per_gpu=args.slots_per_gpu or _per_gpu(config.get("slots_per_gpu", "auto")),
        cpu_slots=args.cpu_slots or config.get("cpu_slots"),
        recovery=args.recovery or config.get("recovery", "resume"),
        notify=parse_config(config.get("notify"), ws.root / "engine.toml"),
    )
    try:
        engine.run()
    except TrialdeckError as exc:
        print(f"trialdeck engine: {exc}", file=sys.stderr)
        return int(exc.code)
    return 0


def _per_gpu(value: int | str) -> int | None:
    return None if value == "auto" else int(value)


def load_engine_config(ws: Workspace) -> dict[str, Any]:
    """Optional `engine.toml` in the workspace: slots_per_gpu (a number or "auto"), cpu_slots, recovery,
    and a [notify] table (trialdeck.engine.runtime.notify)."""
    import tomllib

    path = Path(ws.root) / "engine.toml"
    if not path.exists():
        return {}
    from trialdeck.engine.errors import BadInput

    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: TOML syntax error: {exc}") from None
    allowed = {"slots_per_gpu", "cpu_slots", "recovery", "notify"}
    for key in data:
        if key not in allowed:
            raise BadInput(f"{path}: unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")
    parse_config(data.get("notify"), path)
    if "recovery" in data and data["recovery"] not in RECOVERY_POLICIES:
        raise BadInput(f"{path}: recovery = {data['recovery']!r} is not allowed; allowed: {', '.join(RECOVERY_POLICIES)}")
    for key in ("slots_per_gpu", "cpu_slots"):
        if key == "slots_per_gpu" and data.get(key) == "auto":
            continue
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int) or not 1 <= data[key] <= 64):
            also = ' or "auto"' if key == "slots_per_gpu" else ""
            raise BadInput(f"{path}: {key} = {data[key]!r} must be a whole number from 1 to 64{also}")
    return data


if __name__ == "__main__":
    sys.exit(main())
