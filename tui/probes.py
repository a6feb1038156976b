"""Engine and hardware readings for the dashboard's status line, without Textual.

One job: sample cheaply what the status line shows. The engine is found the
way `trialdeck.engine.runtime.control.client.status` finds it (pid file + lock), but the run counts come
from the catalogue read the UI already has: `status()` lists every run with
its config on each call, too costly at 2 Hz. GPUs are probed through
nvidia-ml-py (`trialdeck.engine.runtime.placement.gpus.probe_gpus`); a box without an NVIDIA driver
is probed once, then no more.
"""

from __future__ import annotations

from dataclasses import dataclass

from trialdeck.engine.workspace import Workspace

GIB = 1 << 30


@dataclass(frozen=True)
class EngineSample:
    running: bool
    pid: int | None = None
    started_at: float | None = None
    slots: tuple[str, ...] = ()
    cluster: str | None = None
    """A Dask-placing engine's cluster in a few words (`cluster_text`); None for this box's own slots."""


@dataclass(frozen=True)
class GpuSample:
    index: int
    util: int | None
    used: int
    total: int


@dataclass(frozen=True)
class HardwareSample:
    cpu: float | None = None
    ram_used: int | None = None
    ram_total: int | None = None
    gpus: tuple[GpuSample, ...] = ()


class SystemProbe:
    """Real readings: trialdeck.engine.runtime.control.client for the engine, psutil for CPU/RAM, NVML for GPUs."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._gpus = True
        self._primed = False

    def engine(self) -> EngineSample:
        from trialdeck.engine.runtime.control.client import engine_info

        info = engine_info(self.ws)
        if not info:
            return EngineSample(False)
        cluster = None
        if info.get("cluster"):
            from trialdeck.engine.runtime.control.client import read_cluster_status

            cluster = cluster_text(read_cluster_status(self.ws) or {"url": info["cluster"], "state": "connecting"})
        return EngineSample(True, info.get("pid"), info.get("started_at"), tuple(info.get("slots") or ()), cluster)

    def hardware(self) -> HardwareSample:
        import psutil

        cpu = psutil.cpu_percent(interval=None)  # since the previous call; the first is 0.0
        if not self._primed:
            self._primed, cpu = True, None
        mem = psutil.virtual_memory()
        gpus: tuple[GpuSample, ...] = ()
        if self._gpus:
            from trialdeck.engine.runtime.placement.gpus import probe_gpus

            found = probe_gpus()
            self._gpus = bool(found)
            gpus = tuple(GpuSample(g.index, g.util, g.total - g.free, g.total) for g in found)
        return HardwareSample(cpu, mem.total - mem.available, mem.total, gpus)


class FixedProbe:
    """Fixed readings, for snapshots and benchmarks (nothing clock- or machine-dependent)."""

    def __init__(self, engine: EngineSample | None = None, hardware: HardwareSample | None = None) -> None:
        self._engine = engine or EngineSample(False)
        self._hardware = hardware or HardwareSample(12.5, 3 * GIB, 16 * GIB, ())

    def engine(self) -> EngineSample:
        return self._engine

    def hardware(self) -> HardwareSample:
        return self._hardware


def cluster_text(cluster: dict) -> str:
    """`cluster 10.0.0.5:8786 2 workers: gpu1 r3, gpu2 idle`, or why it is away: the engine line's words
    for a Dask cluster (runtime.control.client.read_cluster_status)."""
    import time

    url = str(cluster.get("url") or "?").split("://", 1)[-1]
    state = cluster.get("state")
    if state == "connected":
        workers = cluster.get("workers") or []
        each = ", ".join(f"{w.get('name')} {' '.join(w.get('runs') or []) or 'idle'}" for w in workers)
        return f"cluster {url} {len(workers)} worker{'s' if len(workers) != 1 else ''}" + (f": {each}" if each else "")
    if state in ("lost", "unreachable"):
        since = time.strftime("%H:%M:%S", time.localtime(cluster.get("since") or time.time()))
        return f"cluster {url} {state.upper()} since {since}, retrying"
    return f"cluster {url} connecting"


def _uptime(seconds: float) -> str:
    from trialdeck.tui.live import fmt_seconds

    return fmt_seconds(seconds)


def status_text(engine: EngineSample | None, hw: HardwareSample | None, counts: dict[str, int], now: float) -> str:
    """`engine pid 123 up 5m02s slots cpu.0 | 1 running 3 queued | cpu 12% ram 3.0/16.0G | gpu0 40% 2.1/80.0G`."""
    parts = []
    if engine is None:
        parts.append("engine ?")
    elif engine.running:
        up = f" up {_uptime(now - engine.started_at)}" if engine.started_at else ""
        slots = f" slots {','.join(engine.slots)}" if engine.slots else ""
        if engine.cluster:
            slots = f" {engine.cluster}"
        parts.append(f"engine pid {engine.pid}{up}{slots}")
    else:
        parts.append("engine stopped (queueing starts it)")
    parts.append(f"{counts.get('running', 0)} running {counts.get('queued', 0)} queued")
    if hw is not None:
        cpu = f"cpu {hw.cpu:.0f}%" if hw.cpu is not None else "cpu -"
        ram = f"ram {hw.ram_used / GIB:.1f}/{hw.ram_total / GIB:.1f}G" if hw.ram_total and hw.ram_used is not None else ""
        parts.append(" ".join(p for p in (cpu, ram) if p))
        for g in hw.gpus:
            util = f"{g.util}%" if g.util is not None else "-"
            parts.append(f"gpu{g.index} {util} {g.used / GIB:.1f}/{g.total / GIB:.1f}G")
    return " │ ".join(parts)
