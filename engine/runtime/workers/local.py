"""Warm worker processes: one per device slot of this box, alive between runs.

A worker imports torch once, keeps the dataset cache, and trains what the
engine sends over its pipe (runtime.workers.messages: Train, TrainGroup,
Exit) with the runner the run's configuration picks (runners.choice); each
run's progress and end go through the store and the worker's own lifecycle,
and it answers RunDone the moment a run has its final state. It runs in its
own process group (a kill takes any children with it) and dies with the engine
(PR_SET_PDEATHSIG), so a new engine never races an orphan. The engine asks it
to stop a run through shared memory it reads between steps (SharedStop).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import sys
import traceback
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

from trialdeck.engine.runtime.runners.base import StopRequest
from trialdeck.engine.runtime.workers.messages import Exit, RunDone, Train, TrainGroup, WorkerReady
from trialdeck.engine.types import RunState

NO_STOP, INTERRUPT = 0, 2
"""Values of SharedStop's flag: INTERRUPT stops whatever the worker trains (the engine is stopping)."""


class SharedStop:
    """A local worker's stop signal, in memory shared with the engine: a flag (INTERRUPT: every run
    of the worker) and one cell per run to cancel (so one member of an ensemble can be cancelled
    alone). The engine writes it; the worker's runs read it (runners.base.StopSignal)."""

    def __init__(self, context: Any, width: int) -> None:
        self.flag = context.Value("i", NO_STOP, lock=False)
        self.cells = context.Array("q", width, lock=False)

    def clear(self) -> None:
        """A new run (or ensemble) starts: nothing is asked of it yet."""
        self.flag.value = NO_STOP
        self.cells[:] = [0] * len(self.cells)

    def interrupt(self) -> None:
        self.flag.value = INTERRUPT

    def cancel(self, run_id: str) -> None:
        cells = list(self.cells)
        self.cells[cells.index(0)] = int(run_id[1:])  # a cell per member: never full

    def requested(self, run_id: str) -> StopRequest | None:
        if int(run_id[1:]) in self.cells[:]:
            return "cancel"
        return "interrupt" if self.flag.value == INTERRUPT else None


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the engine dies, so no orphan keeps training."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _engine_gone(slot: str) -> bool:
    """True, after one plain line for engine.log, when the engine that started this worker has
    died already: killed before `_die_with_parent` took effect, this worker would otherwise live
    on as an orphan and fail on the engine's closed pipe with a traceback."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is None or os.getppid() == parent.pid:
        return False
    _say(f"worker {os.getpid()} ({slot}): its engine (pid {parent.pid}) is gone; exiting")
    return True


def _say(line: str) -> None:
    """One line in engine.log (the worker's stderr), stamped like the engine's own."""
    import time

    print(time.strftime("%Y-%m-%d %H:%M:%S"), line, file=sys.stderr, flush=True)


def worker_main(slot: str, home: str, conn: Connection, stop: SharedStop, threads: int,
                cuda_visible: str | None) -> None:
    os.setpgid(0, 0)
    _die_with_parent()
    if _engine_gone(slot):  # after PR_SET_PDEATHSIG: from now on the engine's death kills us
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on `engine run` is the engine's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if cuda_visible is not None:
        # `cuda_visible` is an NVML index, which follows the PCI bus; CUDA's own default order
        # (fastest first) differs on a box with mixed GPUs.
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible
    # Imported here: this is the one-time warm-up cost the worker exists to pay once.
    import torch

    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.runs.lifecycle import Lifecycle
    from trialdeck.engine.runtime.runners.base import RunContext
    from trialdeck.engine.runtime.runners.choice import runner_for
    from trialdeck.engine.workspace import Workspace

    torch.set_num_threads(max(1, threads))
    if cuda_visible and torch.cuda.is_available():
        # The CUDA context (hundreds of MB) now, not at the first run: the first step comes
        # sooner, and NVML's free memory, which packing trusts, already counts every worker's.
        try:
            torch.zeros(1, device="cuda")
        except Exception:  # noqa: BLE001 - each run then fails with the reason; the worker must not crash-loop
            traceback.print_exc()
    ws = Workspace.resolve(home)
    store = Store(ws)
    context = RunContext(store, ws, Lifecycle(store), "cpu", stop=stop, channel=conn, threads=torch.get_num_threads())
    try:
        conn.send(WorkerReady(os.getpid()))
    except (BrokenPipeError, OSError):  # the engine died while we imported torch
        _say(f"worker {os.getpid()} ({slot}): its engine is gone; exiting")
        return
    engine_listens = True

    def done(run_id: str, state: RunState) -> None:
        nonlocal engine_listens
        try:
            conn.send(RunDone(run_id, state))
        except (BrokenPipeError, OSError):
            engine_listens = False

    while engine_listens:
        try:
            order = conn.recv()
        except (EOFError, OSError):
            return
        match order:
            case Train(run_id, device):
                run_ids: tuple[str, ...] = (run_id,)
            case TrainGroup(run_ids, device):
                pass
            case Exit():
                return
            case _:
                _say(f"worker {os.getpid()} ({slot}): ignored a message that is no order: {order!r:.200}")
                continue
        records: list[Mapping[str, Any]] = [store.get_run(r) or {"id": r} for r in run_ids]
        runner_for(dataclasses.replace(context, device=device), records).run(done)
        if device.startswith("cuda"):
            if _cuda_broken(store, list(run_ids)):
                return  # the engine starts a fresh worker in this slot (any CUDA call here would raise again)
            torch.cuda.empty_cache()  # give the run's cached blocks back to the other slots on this GPU


def _cuda_broken(store: Any, run_ids: list[str]) -> bool:
    """Whether one of these runs failed with a CUDA error other than out-of-memory (a
    device-side assert, an illegal address): such an error poisons this process's CUDA
    context, and every later run in it would fail the same way."""
    for run_id in run_ids:
        record = store.get_run(run_id) or {}
        if record.get("state") == RunState.FAILED.value and "CUDA error" in (record.get("error") or ""):
            return True
    return False
