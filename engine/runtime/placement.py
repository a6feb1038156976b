"""Placement: where the engine's queued runs train, behind one small interface.

The engine (runtime.daemon) owns the queue, the catalogue and the studies; a
placement backend owns the places runs train in. Two implement it:

- `LocalPlacement` (the default): one warm worker process per device slot of
  this box (runtime.worker), runs dispatched over pipes the moment a slot
  frees, ensembles packed by `membership.queue_groups`.
- `DaskPlacement` (runtime.dask_backend, when engine.toml has `cluster`): runs
  placed as tasks on a Dask distributed cluster, their results streamed back.

Contract, for both (tests/test_placement.py runs one suite against each):
- `dispatch` takes queued runs only while it has room, marks each running
  (with `slot`, `device`, and `host` on a cluster) and ends each in exactly one
  final state, told to the engine through `ended`.
- A cancel requested in the catalogue (`cancel_requested`) stops the run
  within seconds (`check_cancellations`); a run that does not stop is killed.
- `shutdown` interrupts what runs, keeping a checkpoint to resume from.
- Nothing blocks the engine's loop: the loop waits on `waitables()` and
  calls `handle` with whichever are ready.

The Dask backend's status file (`cluster.json`, read by `engine status` and
the TUI) is read here, without importing `distributed`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.runtime.gpus import probe_gpus
from trialdeck.engine.runtime.scheduler import Scheduler, Slot, make_slots
from trialdeck.engine.runtime.script import kill_leftovers
from trialdeck.engine.runtime.worker import INTERRUPT, NO_STOP, worker_main
from trialdeck.engine.training.membership import queue_groups
from trialdeck.engine.types import EventKind, RunEvent, RunRecord, RunState
from trialdeck.engine.workspace import Workspace

ENSEMBLE_WIDTH_GPU, ENSEMBLE_WIDTH_CPU = 32, 16
"""Most trials one worker trains as one ensemble (trialdeck.engine.training.ensemble)."""
CANCEL_GRACE = 5.0
"""Seconds a run gets to stop cooperatively after a cancel before its worker is killed."""
STOP_GRACE = 30.0
"""Seconds running runs get to checkpoint when the engine stops."""
CLUSTER_STATUS_NAME = "cluster.json"
"""In the workspace, written by a Dask-placing engine: the cluster as it last saw it."""


class BasePlacement:
    """Where runs train (see the module docstring). `log` writes a line to engine.log;
    `ended(run_id, state)` tells the engine a run reached its final state under this backend."""

    kind = "base"

    def __init__(self, ws: Workspace, store: Store, log: Callable[[str], None],
                 ended: Callable[[str, str], None]) -> None:
        self.ws, self.store, self.log, self.ended = ws, store, log, ended
        self.stopping = False
        """Set by the engine when it stops: a dead worker is then not replaced."""

    def start(self) -> None:
        """Bring the places up (spawn workers, connect); must not block for long."""

    def slot_names(self) -> list[str]:
        """Names of the places runs train in, for engine.pid and the start line."""
        return []

    def capacity(self) -> int:
        """How many runs it can train at once now (a study asks this many trials ahead)."""
        return 1

    @property
    def ensemble_width(self) -> int:
        """Most trials one place trains as one ensemble (1: no ensembles)."""
        return 1

    def waitables(self) -> list[Any]:
        """Objects for `multiprocessing.connection.wait` that become ready when there is news."""
        return []

    def handle(self, ready: list[Any]) -> None:
        """Take in the news among `ready` (messages, finished runs, dead workers)."""

    def check_cancellations(self) -> None:
        """Pass on cancels the catalogue asks for; kill what does not stop in time."""

    def dispatch(self) -> None:
        """Start queued runs on free places."""

    def shutdown(self) -> None:
        """Interrupt what runs (each keeps its checkpoint) and stop the places."""


# ----------------------------------------------------------------------------- local workers


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
    grace: dict[str, float] = field(default_factory=dict)
    """Script runs (runtime.script) among `members`: the seconds each may take to stop after SIGTERM."""

    def take(self, run_ids: list[str]) -> None:
        self.run_id, self.members, self.cancel_sent, self.grace = run_ids[0], set(run_ids), {}, {}
        self.flag.value = NO_STOP
        self.cancels[:] = [0] * len(self.cancels)

    def cancel(self, run_id: str, now: float) -> None:
        cells = list(self.cancels)
        self.cancels[cells.index(0)] = int(run_id[1:])  # a cell per member: never full
        self.cancel_sent[run_id] = now


class LocalPlacement(BasePlacement):
    """One warm worker process per device slot of this box (today's behaviour)."""

    kind = "local"

    def __init__(self, ws: Workspace, store: Store, log: Callable[[str], None], ended: Callable[[str, str], None],
                 *, slots_per_gpu: int | None = None, cpu_slots: int | None = None) -> None:
        super().__init__(ws, store, log, ended)
        self.gpus = probe_gpus()
        self.scheduler = Scheduler(make_slots(self.gpus, slots_per_gpu, cpu_slots))
        self._width = ENSEMBLE_WIDTH_GPU if self.gpus else ENSEMBLE_WIDTH_CPU
        self.ctx = mp.get_context("spawn")
        self.workers: dict[str, WorkerHandle] = {}

    # -- the interface -----------------------------------------------------------------------

    def start(self) -> None:
        for slot in self.scheduler.slots:
            self._spawn(slot)

    def slot_names(self) -> list[str]:
        return [s.name for s in self.scheduler.slots]

    def capacity(self) -> int:
        return len(self.scheduler.slots)

    @property
    def ensemble_width(self) -> int:
        return self._width

    def waitables(self) -> list[Any]:
        out: list[Any] = []
        for h in self.workers.values():
            out += [h.conn, h.process.sentinel]
        return out

    def handle(self, ready: list[Any]) -> None:
        for handle in list(self.workers.values()):
            if handle.conn in ready:
                self._on_message(handle)
            if handle.process.sentinel in ready and not handle.process.is_alive():
                self._on_worker_died(handle)

    # -- workers -----------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        parent, child = self.ctx.Pipe()
        flag = self.ctx.Value("i", NO_STOP, lock=False)
        cancels = self.ctx.Array("q", self._width, lock=False)
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

    def _on_message(self, handle: WorkerHandle) -> None:
        try:
            while handle.conn.poll():
                message = handle.conn.recv()
                if message[0] == "ready":
                    handle.ready, handle.pid = True, message[1]
                    self.log(f"worker {handle.pid} ready on {handle.slot.name}")
                elif message[0] == "memory":  # the first epoch's peak GPU memory of a run
                    _, run_id, peak = message
                    self.scheduler.learn(run_id, peak)
                elif message[0] == "grace":  # a script run started: its stop takes up to this long
                    _, run_id, seconds = message
                    handle.grace[run_id] = float(seconds)
                elif message[0] == "done":
                    _, run_id, state = message
                    self.log(f"{run_id} {state} on {handle.slot.name}")
                    self.ended(run_id, state)
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
        self.log(f"worker on {handle.slot.name} {how}")
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
                    self.ended(run_id, state.value)
            self.scheduler.release(handle.run_id)
        for run_id in handle.grace:  # a script dies with its worker; its children may not have
            kill_leftovers(self.ws, run_id)
        handle.conn.close()
        del self.workers[handle.slot.name]
        if not self.stopping:
            self._spawn(handle.slot)

    def check_cancellations(self) -> None:
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
            elif now - sent > CANCEL_GRACE + handle.grace.get(run["id"], 0.0):
                waited = CANCEL_GRACE + handle.grace.get(run["id"], 0.0)
                self.log(f"{run['id']} did not stop within {waited:.0f} s; killing its worker")
                self._kill_worker(handle)
                self._on_worker_died(handle)

    # -- dispatch ----------------------------------------------------------------------------

    def _gpu_readings(self) -> tuple[dict[int, int], dict[int, int | None]]:
        """Free memory and utilisation per GPU, read now (packing decisions need fresh numbers)."""
        if not self.gpus:
            return {}, {}
        gpus = probe_gpus()
        return {g.index: g.free for g in gpus}, {g.index: g.util for g in gpus}

    def dispatch(self) -> None:
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
                                          device=p.slot.device, host=None, cancel_requested=False,
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
            self.log(f"{', '.join(started)} -> {p.slot.name}")

    def _ensembles(self, queued: list[RunRecord]) -> tuple[list[RunRecord], dict[str, list[str]]]:
        """Queued runs as the scheduler should see them: each group `membership.queue_groups`
        makes (an ensemble, or a run alone) collapsed into its first run, in queue order; and
        each first run's members."""
        heads: list[RunRecord] = []
        groups: dict[str, list[str]] = {}
        for group in queue_groups(queued, self._width, self.ws.checkpoint_path):
            head = group[0]
            head["members"] = len(group)
            heads.append(head)
            groups[head["id"]] = [run["id"] for run in group]
        return heads, groups

    def _refuse(self, run: Mapping[str, Any], members: list[str]) -> bool:
        """Fail queued runs no slot of this engine can ever take (pinned to a missing GPU)."""
        reason = self.scheduler.impossible(run)
        if reason is None:
            return False
        for run_id in members:
            try:
                self.store.transition(run_id, RunState.FAILED, error=reason,
                                      add_events=[RunEvent(EventKind.FAILED.value, None, reason)])
                self.log(f"{run_id} failed: {reason}")
                self.ended(run_id, RunState.FAILED.value)
            except ValueError:  # cancelled meanwhile
                pass
        return True

    # -- the end -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        self.stopping = True
        busy = [h for h in self.workers.values() if h.run_id]
        for h in busy:
            h.flag.value = INTERRUPT
        # A script run may take its grace_seconds after SIGTERM, and its worker then answers.
        deadline = time.monotonic() + STOP_GRACE + max((g for h in busy for g in h.grace.values()), default=0.0)
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


# ----------------------------------------------------------------------------- cluster status


def read_cluster_status(ws: Workspace) -> dict[str, Any] | None:
    """What a Dask-placing engine last wrote about its cluster (url, state, workers and their
    runs), or None when the engine places runs locally. Light: no `distributed` import."""
    try:
        data = json.loads((ws.root / CLUSTER_STATUS_NAME).read_text())
    except (FileNotFoundError, ValueError, OSError):
        return None
    return data if isinstance(data, dict) else None
