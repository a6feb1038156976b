"""Device slots and placement: which queued run goes to which free slot.

Pure logic (no processes, no torch) so it is tested with simulated devices.
Slots come from the machine: each CUDA GPU times `slots_per_gpu`, or CPU slots
when there is no GPU. A run may pin a device (`--device cuda:1`, `cpu`).
When a GPU already runs something, another run goes there only if the GPU's
measured free memory (nvidia-ml-py) covers what the run needs plus a margin.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

GIB = 1 << 30
DEFAULT_NEED_BYTES = 1 * GIB
"""What a run is assumed to need on a shared GPU until it has been measured."""
MARGIN_BYTES = 512 << 20


@dataclass
class Slot:
    name: str
    device: str
    """"cpu" or "cuda:N" as seen by the engine (N is the physical index)."""
    gpu: int | None = None
    run_id: str | None = None

    @property
    def free(self) -> bool:
        return self.run_id is None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "run": self.run_id}


@dataclass
class GpuInfo:
    index: int
    name: str
    total: int
    free: int
    util: int | None = None


def probe_gpus() -> list[GpuInfo]:
    """GPUs through NVML; an empty list when there is no NVIDIA driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    gpus = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            except pynvml.NVMLError:
                util = None
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(GpuInfo(i, name.decode() if isinstance(name, bytes) else name, mem.total, mem.free, util))
    finally:
        pynvml.nvmlShutdown()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        allowed = {int(x) for x in visible.split(",") if x.strip().isdigit()}
        gpus = [g for g in gpus if g.index in allowed]
    return gpus


def make_slots(gpus: list[GpuInfo], slots_per_gpu: int = 1, cpu_slots: int | None = None) -> list[Slot]:
    if gpus:
        return [Slot(f"gpu{g.index}.{k}", f"cuda:{g.index}", g.index) for g in gpus for k in range(slots_per_gpu)]
    n = cpu_slots if cpu_slots is not None else 1
    return [Slot(f"cpu.{k}", "cpu") for k in range(max(1, n))]


@dataclass
class Placement:
    run_id: str
    slot: Slot
    device: str
    """The device the trainer is told to use inside the worker ("cpu", or "cuda" for its one visible GPU)."""


@dataclass
class Scheduler:
    slots: list[Slot]
    need_bytes: dict[str, int] = field(default_factory=dict)
    """Measured peak memory per run id (from an earlier attempt), when known."""

    def fits(self, run: dict[str, Any], slot: Slot, free_memory: dict[int, int]) -> bool:
        pinned = run.get("device")
        if pinned and pinned not in ("auto", "cpu"):
            if pinned == "cuda" and slot.gpu is None:
                return False
            if pinned.startswith("cuda:") and slot.device != pinned:
                return False
        if slot.gpu is None:
            return True
        busy_here = any(s.gpu == slot.gpu and not s.free for s in self.slots)
        if not busy_here or slot.gpu not in free_memory:
            return True
        need = self.need_bytes.get(run["id"], DEFAULT_NEED_BYTES)
        return free_memory[slot.gpu] >= need + MARGIN_BYTES

    def plan(self, queued: list[dict[str, Any]], free_memory: dict[int, int] | None = None) -> list[Placement]:
        """Assign queued runs (already in dispatch order) to free slots. A run that fits
        nowhere now waits; runs behind it may still take slots that suit them."""
        free_memory = dict(free_memory or {})
        placements: list[Placement] = []
        for run in queued:
            for slot in self.slots:
                if slot.free and self.fits(run, slot, free_memory):
                    slot.run_id = run["id"]
                    if slot.gpu is not None and slot.gpu in free_memory:
                        free_memory[slot.gpu] -= self.need_bytes.get(run["id"], DEFAULT_NEED_BYTES)
                    device = "cpu" if run.get("device") == "cpu" or slot.gpu is None else "cuda"
                    placements.append(Placement(run["id"], slot, device))
                    break
            if all(not s.free for s in self.slots):
                break
        return placements

    def release(self, run_id: str) -> None:
        for slot in self.slots:
            if slot.run_id == run_id:
                slot.run_id = None

    def slot_of(self, run_id: str) -> Slot | None:
        return next((s for s in self.slots if s.run_id == run_id), None)
