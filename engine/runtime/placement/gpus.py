"""GPU probing through NVML (nvidia-ml-py): what the engine sees of this box's GPUs.

A reading the engine cannot get (no NVIDIA driver, NVML failing) is an empty list, never an
error: the engine then runs on CPU slots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class GpuInfo:
    index: int
    name: str
    total: int
    free: int
    util: int | None = None
    uuid: str | None = None


def probe_gpus() -> list[GpuInfo]:
    """GPUs through NVML; an empty list when there is no NVIDIA driver or NVML fails
    (a reading the engine cannot get must not stop it)."""
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
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            gpus.append(GpuInfo(i, name.decode() if isinstance(name, bytes) else name, mem.total, mem.free, util,
                                uuid.decode() if isinstance(uuid, bytes) else uuid))
    except pynvml.NVMLError:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g for g in gpus if _visible(g, visible)]
    return gpus


def _visible(gpu: GpuInfo, visible: str) -> bool:
    """Whether CUDA_VISIBLE_DEVICES names `gpu`: by index (NVML's, the PCI bus order that
    workers also use, see worker_main) or by UUID or a unique prefix of it ("GPU-8f3c")."""
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit() and int(entry) == gpu.index:
            return True
        if entry.startswith("GPU-") and gpu.uuid and gpu.uuid.startswith(entry):
            return True
    return False
