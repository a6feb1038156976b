"""A run's processes: find them, stop them, measure their GPU memory.

A script run (runtime.runners.script) is a process tree the engine did not write: the
script, its process group, and children that may have started sessions of
their own. They all inherit the run's marker (TRIALDECK_RUN_DIR in their
environment), which is how they are found again, also by a later engine after
a kill -9. Invariants: only this user's processes are looked at; a process
group is signalled only while its leader is our unreaped child (after that
its number could name someone else's group); SIGTERM first, SIGKILL after the
grace, and a second look for children started during it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from typing import Any

import psutil

MARKER_ENV = "TRIALDECK_RUN_DIR"
"""The environment variable whose value marks a run's processes (its own folder: unique)."""


def run_processes(marker: str, pgid: int | None = None, root: int | None = None) -> list[psutil.Process]:
    """This user's processes that belong to a run: `root` and its descendants, members of
    process group `pgid`, and any process whose environment carries the run's `marker`
    (children that started a session of their own still inherit it)."""
    found: dict[int, psutil.Process] = {}
    if root is not None:
        try:
            proc = psutil.Process(root)
            found[root] = proc
            found.update((c.pid, c) for c in proc.children(recursive=True))
        except psutil.Error:
            pass
    me, uid = os.getpid(), os.getuid()
    for proc in psutil.process_iter(["uids"]):
        if proc.pid == me or proc.pid in found:
            continue
        try:
            uids = proc.info["uids"]
            if uids is None or uids.real != uid:
                continue
            if pgid is not None and os.getpgid(proc.pid) == pgid or proc.environ().get(MARKER_ENV) == marker:
                found[proc.pid] = proc
        except (psutil.Error, OSError):
            continue
    return [p for p in found.values() if p.pid != me]


def _alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def _signal(procs: Iterable[psutil.Process], pgid: int | None, sig: int) -> None:
    if pgid is not None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


def stop_processes(marker: str, grace: float, child: subprocess.Popen | None = None) -> int:
    """SIGTERM every process of the run, SIGKILL what is left after `grace` seconds; returns
    how many were still there for the SIGKILL. `child` (the script itself, leader of its own
    process group) is reaped here."""

    def group() -> int | None:
        # Its group id only while it is unreaped: after that the number could name another
        # process's group, and the marker finds what is left of ours.
        return child.pid if child is not None and child.poll() is None else None

    pgid = group()
    procs = run_processes(marker, pgid, pgid)
    if not procs:
        return 0
    _signal(procs, pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if child is not None:
            child.poll()  # reap it, or it lingers as a zombie that counts as alive
        if not _alive(procs):
            break
        time.sleep(0.05)
    # Look again: a process may have started a child during the grace.
    pgid = group()
    left = _alive({p.pid: p for p in [*procs, *run_processes(marker, pgid, pgid)]}.values())
    if left:
        _signal(left, pgid, signal.SIGKILL)
        psutil.wait_procs(left, timeout=5)
    if child is not None:
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            pass
    return len(left)


def gpu_memory(pids: Iterable[int], processes: Iterable[Any]) -> int:
    """Bytes of GPU memory `pids` use, from NVML's per-process list (objects with `pid` and
    `usedGpuMemory`; NVML gives None where it cannot tell). Pure, so it is tested without a GPU."""
    wanted = set(pids)
    return sum(int(p.usedGpuMemory or 0) for p in processes if p.pid in wanted)


def read_gpu_memory(pids: Iterable[int], gpu: str) -> int | None:
    """What `pids` use on GPU `gpu` (an NVML index or UUID, as the slot's CUDA_VISIBLE_DEVICES
    names it), or None when NVML cannot say (no driver, or PIDs of another namespace)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        handle = (pynvml.nvmlDeviceGetHandleByIndex(int(gpu)) if gpu.isdigit()
                  else pynvml.nvmlDeviceGetHandleByUUID(gpu))
        used = gpu_memory(pids, pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
        return used or None
    except pynvml.NVMLError:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
