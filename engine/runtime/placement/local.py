"""LocalPlacement: the engine's queued runs train in warm worker processes, one per device slot of this box.

Slots come from the machine (placement.scheduler.make_slots: each GPU times
`slots_per_gpu`, or CPU slots); the scheduler packs runs onto them. Each slot
has one worker process (runtime.workers.local) that imports torch once; a run
is dispatched over its pipe the moment the slot frees, and ensembles of
trials go to one worker as a group (membership.queue_groups). A worker that
dies fails the runs it held (Crashed: a crash or the OOM killer is the run's
doing) and is replaced at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.runs.facts import Crashed, EndRecorded, Place, Refused, Started
from trialdeck.engine.runs.lifecycle import Lifecycle
from trialdeck.engine.runtime.config import EngineConfig
from trialdeck.engine.runtime.placement.base import BasePlacement
from trialdeck.engine.runtime.placement.capabilities import Capabilities
from trialdeck.engine.runtime.placement.gpus import probe_gpus
from trialdeck.engine.runtime.placement.scheduler import Placement, Scheduler, Slot, make_slots
from trialdeck.engine.runtime.runners.choice import runner_class
from trialdeck.engine.runtime.workers.local import SharedStop, worker_main
from trialdeck.engine.runtime.workers.messages import (
    Exit,
    MemoryMeasured,
    RunDone,
    StopGrace,
    StoppedBecause,
    Train,
    TrainGroup,
    WorkerReady,
)
from trialdeck.engine.training.membership import queue_groups
from trialdeck.engine.types import RunRecord
from trialdeck.engine.workspace import Workspace

ENSEMBLE_WIDTH_GPU, ENSEMBLE_WIDTH_CPU = 32, 16
"""Most trials one worker trains as one ensemble (trialdeck.engine.training.ensemble)."""


@dataclass
class WorkerHandle:
    """The engine's side of one slot's worker process."""

    slot: Slot
    process: Any
    conn: Any
    stop: SharedStop | None
    pid: int = 0
    ready: bool = False
    run_id: str | None = None
    """The run the slot is held for (an ensemble's first member)."""
    members: set[str] = field(default_factory=set)
    """Every run this worker is training now: one, or an ensemble's members."""
    grace: dict[str, float] = field(default_factory=dict)
    """Script runs among `members`: the seconds each may take to stop after SIGTERM."""

    def take(self, run_ids: list[str]) -> None:
        self.run_id, self.members, self.grace = run_ids[0], set(run_ids), {}
        if self.stop is not None:
            self.stop.clear()


class LocalPlacement(BasePlacement):
    """One warm worker process per device slot of this box (see the module docstring)."""

    kind = "local"

    def __init__(self, ws: Workspace, store: Store, lifecycle: Lifecycle, log: Callable[[str], None],
                 config: EngineConfig | None = None) -> None:
        super().__init__(ws, store, lifecycle, log)
        config = config or EngineConfig()
        self.gpus = probe_gpus()
        self.scheduler = Scheduler(make_slots(self.gpus, config.slots_per_gpu, config.cpu_slots))
        self._width = ENSEMBLE_WIDTH_GPU if self.gpus else ENSEMBLE_WIDTH_CPU
        self.ctx = mp.get_context("spawn")
        self.workers: dict[str, WorkerHandle] = {}

    # -- what it is --------------------------------------------------------------------------

    @classmethod
    def offline_capabilities(cls, ws: Workspace, config: EngineConfig) -> Capabilities:
        return Scheduler(make_slots(probe_gpus(), config.slots_per_gpu, config.cpu_slots)).capabilities()

    def capabilities(self) -> Capabilities:
        return self.scheduler.capabilities()

    def capacity(self) -> int:
        return len(self.scheduler.slots)

    @property
    def ensemble_width(self) -> int:
        return self._width

    def training(self) -> set[str]:
        return {run_id for h in self.workers.values() if h.run_id for run_id in h.members}

    def stop_grace(self, run_id: str) -> float:
        return next((h.grace[run_id] for h in self.workers.values() if run_id in h.grace), 0.0)

    # -- workers -----------------------------------------------------------------------------

    def start(self) -> None:
        for slot in self.scheduler.slots:
            self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        parent, child = self.ctx.Pipe()
        stop = SharedStop(self.ctx, self._width)
        threads = max(1, (os.cpu_count() or 1) // max(1, len(self.scheduler.slots)))
        cuda_visible = str(slot.gpu) if slot.gpu is not None else ("" if not self.gpus else None)
        process = self.ctx.Process(target=worker_main, name=f"trialdeck-worker-{slot.name}",
                                   args=(slot.name, str(self.ws.root), child, stop, threads, cuda_visible),
                                   daemon=False)
        process.start()
        child.close()
        self.workers[slot.name] = WorkerHandle(slot, process, parent, stop)

    def _kill_worker(self, handle: WorkerHandle) -> None:
        try:
            os.killpg(handle.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        handle.process.join(5)

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

    def _on_message(self, handle: WorkerHandle) -> None:
        try:
            while handle.conn.poll():
                match handle.conn.recv():
                    case WorkerReady(pid):
                        handle.ready, handle.pid = True, pid
                        self.log(f"worker {pid} ready on {handle.slot.name}")
                    case MemoryMeasured(run_id, peak_bytes):  # the first epoch's peak GPU memory of a run
                        self.scheduler.learn(run_id, peak_bytes)
                    case StopGrace(run_id, seconds):  # a script run started: its stop takes up to this long
                        handle.grace[run_id] = float(seconds)
                    case RunDone(run_id, state):
                        self.report(EndRecorded(run_id, state, where=handle.slot.name))
                        self._free(handle, run_id)
                    case StoppedBecause():
                        pass  # a Dask task's note; a local worker is stopped by its engine only
        except (EOFError, OSError):
            pass

    def _free(self, handle: WorkerHandle, run_id: str) -> None:
        handle.members.discard(run_id)
        if not handle.members and handle.run_id is not None:
            self.scheduler.release(handle.run_id)
            handle.run_id = None
            if handle.stop is not None:
                handle.stop.clear()

    def _on_worker_died(self, handle: WorkerHandle) -> None:
        code = handle.process.exitcode
        killed = code is not None and code < 0
        how = f"was killed by signal {signal.Signals(-code).name}" if killed else f"exited with code {code}"
        self.log(f"worker on {handle.slot.name} {how}")
        if handle.run_id is not None:
            for run_id in sorted(handle.members):
                self.report(Crashed(run_id, f"worker process {how} (out of memory or a crash?)",
                                    cancel_asked=run_id in self.cancel_sent))
            self.scheduler.release(handle.run_id)
        for run_id in sorted(handle.members):
            record: Mapping[str, Any] = self.store.get_run(run_id) or {}
            runner_class(record.get("config")).clean_up_after(self.ws, run_id)
        handle.conn.close()
        del self.workers[handle.slot.name]
        if not self.stopping:
            self._spawn(handle.slot)

    # -- cancels -----------------------------------------------------------------------------

    def _holder(self, run_id: str) -> WorkerHandle | None:
        return next((h for h in self.workers.values() if h.run_id and run_id in h.members), None)

    def pass_cancel(self, run_id: str) -> None:
        handle = self._holder(run_id)
        if handle is not None and handle.stop is not None:
            handle.stop.cancel(run_id)

    def force_cancel(self, run_id: str, waited: float) -> None:
        handle = self._holder(run_id)
        if handle is None:
            return
        self.log(f"{run_id} did not stop within {waited:.0f} s; killing its worker")
        self.cancel_overdue(run_id, "worker stopped")
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
        if not free or self.stopping:
            return
        queued = self.queued()
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
            self._start(p, groups.get(p.run_id, [p.run_id]))

    def _start(self, p: Placement, members: list[str]) -> None:
        handle = self.workers[p.slot.name]
        place = Place(p.slot.name, p.slot.device)
        started = [run_id for i, run_id in enumerate(members)
                   if self.report(Started(run_id, place, handle.pid, i + 1, len(members))) is not None]
        if not started:  # each was cancelled between our read and its start
            self.scheduler.release(p.run_id)
            return
        if started[0] != p.run_id:  # the slot is held under the first member that started
            self.scheduler.release(p.run_id)
            p.slot.run_id = started[0]
        handle.take(started)
        handle.conn.send(TrainGroup(tuple(started), p.device) if len(started) > 1 else Train(started[0], p.device))
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
            self.report(Refused(run_id, reason))
        return True

    # -- the end -----------------------------------------------------------------------------

    def interrupt_all(self) -> None:
        for h in self.workers.values():
            if h.run_id and h.stop is not None:
                h.stop.interrupt()

    def abandon(self) -> list[str]:
        left: list[str] = []
        for h in list(self.workers.values()):
            if h.run_id:
                self._kill_worker(h)
                left += sorted(h.members)
            else:
                try:
                    h.conn.send(Exit())
                except (BrokenPipeError, OSError):
                    pass
        for h in list(self.workers.values()):
            h.process.join(3)
            if h.process.is_alive():
                self._kill_worker(h)
        self.workers.clear()
        return left
