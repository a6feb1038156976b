"""Warm worker processes: one per device slot, alive between runs.

A worker imports torch once, keeps the dataset cache, and trains one run at a
time when the engine sends it a run id over its pipe; it writes the run's
progress through the store and answers "done" when the run has a final state.
It runs in its own process group (a kill takes any children with it) and dies
with the engine (PR_SET_PDEATHSIG), so a new engine never races an orphan.
The engine asks it to stop a run through a shared flag it polls between steps.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

from trialdeck.engine.training import faults
from trialdeck.engine.training.callbacks import Stop, TrainerCallback
from trialdeck.engine.types import EventKind, RunEvent, RunState

NO_STOP, INTERRUPT = 0, 2
"""Values of a worker's `flag`: INTERRUPT stops whatever it trains (the engine is stopping)."""


class ControlCallback(TrainerCallback):
    """Turns the engine's stop requests into a Stop for the trainer: `flag` (INTERRUPT, for every
    run of the worker) and `cancels` (run numbers to cancel, one cell each, so one member of an
    ensemble can be cancelled alone)."""

    def __init__(self, flag, extra: TrainerCallback | None = None, run_id: str | None = None,
                 first_epoch: Callable[[], None] | None = None, cancels=None) -> None:
        self.flag = flag
        self.extra = extra
        self.run_id = run_id
        self.first_epoch = first_epoch
        """Called once, after this attempt's first epoch (the engine learns its peak memory)."""
        self.cancels = cancels
        self.number = int(run_id[1:]) if cancels is not None and run_id else None

    def _stop(self) -> Stop | None:
        value = self.flag.value
        if self.cancels is not None and self.number in self.cancels[:]:
            return Stop(RunState.CANCELLED, RunEvent(EventKind.CANCELLED.value, None, "cancelled by the user"))
        if value == INTERRUPT:
            return Stop(RunState.INTERRUPTED,
                        RunEvent(EventKind.INTERRUPTED.value, None, "interrupted: the engine is stopping; checkpoint kept"))
        return None

    def poll(self) -> Stop | None:
        return self._stop() or (self.extra.poll() if self.extra else None)

    def on_start(self, info):
        if self.extra:  # a trial's reporter learns the parameter count (an objective may be it)
            self.extra.on_start(info)

    def on_epoch(self, record, events):
        faults.check(self.run_id, record.epoch)
        if self.first_epoch is not None:
            self.first_epoch()
            self.first_epoch = None
        extra = self.extra.on_epoch(record, events) if self.extra else None
        return extra or self._stop()

    def on_event(self, event):
        if self.extra:
            self.extra.on_event(event)


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


def worker_main(slot: str, home: str, conn, flag, threads: int, cuda_visible: str | None, cancels=None) -> None:
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
    from trialdeck.engine.presets.schema import RunSpec
    from trialdeck.engine.runtime.recorder import RunRecorder
    from trialdeck.engine.training.trainer import train
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
    try:
        conn.send(("ready", os.getpid()))
    except (BrokenPipeError, OSError):  # the engine died while we imported torch
        _say(f"worker {os.getpid()} ({slot}): its engine is gone; exiting")
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "exit":
            return
        if message[0] == "group":  # an ensemble: each member's "done" is sent as it ends
            _, run_ids, device = message
            if not _run_group(store, ws, run_ids, device, flag, cancels, conn, RunSpec, RunRecorder, train):
                return
        else:
            _, run_id, device = message  # the engine cleared `flag` before sending
            run_ids = [run_id]
            state = _run_one(store, ws, run_id, device, flag, cancels, RunSpec, RunRecorder, train, conn)
            try:
                conn.send(("done", run_id, state))
            except (BrokenPipeError, OSError):
                return
        if device.startswith("cuda"):
            if _cuda_broken(store, run_ids):
                return  # the engine starts a fresh worker in this slot (any CUDA call here would raise again)
            torch.cuda.empty_cache()  # give the run's cached blocks back to the other slots on this GPU


def _run_one(store, ws, run_id: str, device: str, flag, cancels, RunSpec, RunRecorder, train, conn=None,
             extra_callback: Callable[..., TrainerCallback | None] | None = None) -> str:
    """Train one run to its final state (the trainer, or its script) and record it through `store`.
    A Dask worker (runtime.dask_worker) calls this too, with a store that mirrors to the engine
    and `extra_callback` asking the engine's pruner instead of the study's storage."""
    record = store.get_run(run_id)
    run_dir = ws.run_dir(run_id)
    recorder = None
    try:
        spec = RunSpec.model_validate(record["config"])
        extra = (extra_callback or _extra_callback)(store, ws, record)
        if spec.script is not None:  # the user's own program instead of the trainer (runtime.script)
            import torch  # loaded at the worker's start: the slot's share of the cores

            from trialdeck.engine.runtime.script import run_script

            return run_script(store, ws, record, spec, device, ControlCallback(flag, extra, run_id, None, cancels),
                              conn, torch.get_num_threads())
        probe = _memory_probe(conn, run_id) if conn is not None and device.startswith("cuda") else None
        recorder = RunRecorder(store, run_id, run_dir, observer=ControlCallback(flag, extra, run_id, probe, cancels))
        recorder.log(f"worker {os.getpid()} starting {run_id} on {device} (attempt {record.get('attempts', 1)})")
        result = train(spec, recorder, run_dir=run_dir, data_dir=ws.data_dir, device=device, resume=True)
        peak = _peak_memory(device)
        final = recorder.finish(result, **({"peak_memory": peak} if peak else {}))
        return final["state"]
    except Exception as exc:  # noqa: BLE001 - the run fails alone, with its reason
        if recorder is not None:
            recorder.log(traceback.format_exc())
        return _fail(store, run_id, f"{type(exc).__name__}: {exc}")
    finally:
        if recorder is not None:
            recorder.close()


def _run_group(store, ws, run_ids: list[str], device: str, flag, cancels, conn, RunSpec, RunRecorder, train) -> bool:
    """Train `run_ids` as one ensemble (trialdeck.engine.training.ensemble); each is recorded, and reported to the
    engine, the moment it ends. Runs that cannot join train one after another with train().
    False when the engine's end of the pipe is gone."""
    from trialdeck.engine.training.ensemble import train_ensemble
    from trialdeck.engine.training.membership import member_key, split_group

    pending = list(run_ids)
    records = [store.get_run(run_id) for run_id in run_ids]
    specs: list[Any] = []
    keys: list[Any] = []
    for run_id, record in zip(run_ids, records):
        try:
            specs.append(RunSpec.model_validate(record["config"]))
            keys.append(member_key(specs[-1], ws.run_dir(run_id)))
        except Exception:  # noqa: BLE001 - _run_one records the reason
            specs.append(None)
            keys.append(None)
    joined, left = split_group(keys)
    alone = [run_ids[i] for i in left]
    members: list[tuple[str, Any, Any]] = []
    for i in joined:
        try:
            recorder = RunRecorder(store, run_ids[i], ws.run_dir(run_ids[i]), observer=ControlCallback(
                flag, _extra_callback(store, ws, records[i]), run_ids[i], cancels=cancels))
        except Exception:  # noqa: BLE001 - _run_one records the reason
            alone.append(run_ids[i])
            continue
        members.append((run_ids[i], specs[i], recorder))

    def send_done(run_id: str, state: str) -> bool:
        pending.remove(run_id)
        try:
            conn.send(("done", run_id, state))
            return True
        except (BrokenPipeError, OSError):
            return False

    alive = True

    def on_end(i: int, result) -> None:
        nonlocal alive
        run_id, _, recorder = members[i]
        state = _finish(store, recorder, run_id, result)
        alive = send_done(run_id, state) and alive

    if len(members) == 1:
        alone.insert(0, members[0][0])
        members[0][2].close()
        members = []
    try:
        if members:
            for i, (run_id, _, recorder) in enumerate(members):
                recorder.log(f"worker {os.getpid()} starting {run_id} on {device}: member {i + 1} of an ensemble "
                             f"of {len(members)} ({', '.join(m[0] for m in members)})")
            train_ensemble([m[1] for m in members], [m[2] for m in members],
                           run_dirs=[ws.run_dir(m[0]) for m in members], data_dir=ws.data_dir, device=device,
                           on_end=on_end)
    finally:
        for run_id, _, recorder in members:
            recorder.close()
            if run_id in pending:  # never ended (a bug or a kill): fail it rather than leave it running
                alive = send_done(run_id, _fail(store, run_id, "the ensemble ended without a result for it")) and alive
    for run_id in alone:
        if not alive:
            break
        state = _run_one(store, ws, run_id, device, flag, cancels, RunSpec, RunRecorder, train)
        alive = send_done(run_id, state)
    return alive


def _finish(store, recorder, run_id: str, result) -> str:
    """Record a finished ensemble member; its final state."""
    try:
        return recorder.finish(result)["state"]
    except Exception as exc:  # noqa: BLE001 - the run fails alone, with its reason
        recorder.log(traceback.format_exc())
        return _fail(store, run_id, f"{type(exc).__name__}: {exc}")


def _fail(store, run_id: str, reason: str) -> str:
    try:
        store.transition(run_id, RunState.FAILED, error=reason,
                         add_events=[RunEvent(EventKind.FAILED.value, None, reason)])
    except Exception:  # noqa: BLE001 - the engine reconciles a run left running
        traceback.print_exc()
    return RunState.FAILED.value


def _extra_callback(store, ws, record: dict[str, Any]) -> TrainerCallback | None:
    """Trials report to their Optuna study; plain runs need nothing extra."""
    if record.get("study") is None:
        return None
    from trialdeck.engine.tuning.reporter import TrialReporter

    return TrialReporter.for_record(store, ws, record)


def _cuda_broken(store, run_ids: list[str]) -> bool:
    """Whether one of these runs failed with a CUDA error other than out-of-memory (a
    device-side assert, an illegal address): such an error poisons this process's CUDA
    context, and every later run in it would fail the same way."""
    for run_id in run_ids:
        record = store.get_run(run_id) or {}
        if record.get("state") == RunState.FAILED.value and "CUDA error" in (record.get("error") or ""):
            return True
    return False


def _memory_probe(conn, run_id: str) -> Callable[[], None]:
    """Tell the engine the run's peak GPU memory so far (the caching allocator's reserve, which
    is what other processes see as used), so runs of the same footprint can be packed."""
    import torch

    torch.cuda.reset_peak_memory_stats()

    def report() -> None:
        try:
            conn.send(("memory", run_id, int(torch.cuda.max_memory_reserved())))
        except (BrokenPipeError, OSError):
            pass

    return report


def _peak_memory(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    import torch

    peak = int(torch.cuda.max_memory_allocated())
    torch.cuda.reset_peak_memory_stats()
    return peak
