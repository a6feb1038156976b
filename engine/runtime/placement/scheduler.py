"""Device slots and placement: which queued run goes to which free slot.

Pure logic (no processes, no torch) so it is tested with simulated devices.
Slots come from the machine: each CUDA GPU times `slots_per_gpu`, or CPU slots
when there is no GPU. A run may pin a device (`--device cuda:1`, `cpu`, or its
preset's `train.device`); one pinned to a GPU this box does not have is
refused (`impossible`) rather than left queued for ever.

Packing: a GPU takes a second (third, ...) run only when
- the run's memory need is known: the peak its worker measured over the first
  epoch of a run with the same footprint (data, model, batch size, precision;
  see `footprint`), so the trials of a study are measured once. A run never
  measured starts only on an idle GPU;
- the GPU's free memory (nvidia-ml-py) covers that need plus a margin, after
  taking off the need of each run already there that has not reported its own
  measurement (it may not have allocated yet); a run there whose need is not
  known at all (never measured, or an ensemble) keeps the GPU to itself; and
- the GPU is not already saturated (utilisation under `SATURATED_UTIL`):
  time-slicing runs that each fill the GPU gains nothing.
`slots_per_gpu = "auto"` (the default) offers up to `AUTO_MAX_PER_GPU` slots per
GPU (fewer on a box with few CPU cores) and lets these rules decide how many fill.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trialdeck.engine.runtime.placement.capabilities import Capabilities
from trialdeck.engine.runtime.placement.gpus import GpuInfo

GIB = 1 << 30
MARGIN_BYTES = 512 << 20
"""Kept free on a shared GPU beyond the measured needs (a new worker's CUDA context, fragmentation)."""
SATURATED_UTIL = 90
"""GPU utilisation (%) from which a busy GPU takes no further run."""
AUTO_MAX_PER_GPU = 8
FOOTPRINT_KEYS = {"data": None, "model": None, "train": ("precision", "compile"), "augment": None}


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


def pinned_device(run: Mapping[str, Any]) -> str:
    """The device `run` asked for: `trialdeck run --device` (its record's `pinned`; older
    records kept it in `device`), else its preset's `train.device`; "auto" if neither."""
    device = run["pinned"] if "pinned" in run else run.get("device")
    if not device or device == "auto":
        device = ((run.get("config") or {}).get("train") or {}).get("device") or "auto"
    return device


def footprint(config: dict[str, Any] | None) -> str | None:
    """What decides a run's GPU memory: its data, model, batch size and precision (not its
    learning rate or seed), as a short key; None without a config."""
    if not config:
        return None
    picked: dict[str, Any] = {}
    if config.get("script"):
        # A script run: its program, and the params that are whole numbers (batch sizes, widths,
        # which change memory); floats (rates, decays) do not, so a study's trials share one measure.
        params = config.get("params") or {}
        picked["script"] = {k: config["script"].get(k) for k in ("command", "workdir", "env")}
        picked["params"] = {k: v for k, v in params.items() if isinstance(v, (int, str, list)) and not isinstance(v, bool)}
    for block, keys in FOOTPRINT_KEYS.items():
        section = config.get(block) or {}
        picked[block] = section if keys is None else {k: section.get(k) for k in keys}
    return hashlib.sha1(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def auto_slots_per_gpu(n_gpus: int, cpu_count: int | None = None) -> int:
    """Slots offered per GPU when the user sets none: each is a warm worker process with
    its own CPU threads, so a box with few cores per GPU gets fewer."""
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, min(AUTO_MAX_PER_GPU, cores // max(1, n_gpus)))


def make_slots(gpus: list[GpuInfo], slots_per_gpu: int | None = None, cpu_slots: int | None = None) -> list[Slot]:
    """`slots_per_gpu` None means automatic (`auto_slots_per_gpu`)."""
    if gpus:
        per_gpu = slots_per_gpu if slots_per_gpu is not None else auto_slots_per_gpu(len(gpus))
        return [Slot(f"gpu{g.index}.{k}", f"cuda:{g.index}", g.index) for g in gpus for k in range(per_gpu)]
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
    """Measured peak GPU memory per footprint (see `footprint`)."""
    footprints: dict[str, str] = field(default_factory=dict)
    """Footprint of each placed run, so a measurement reported by run id can be learned."""
    reported: set[str] = field(default_factory=set)
    """Placed runs whose own measurement came in: they have allocated, so NVML's free memory counts them."""

    def learn(self, run_id: str, peak_bytes: int) -> None:
        """A worker measured `peak_bytes` for `run_id` (its first epoch): runs of the same
        footprint may now share a GPU on the strength of it."""
        key = self.footprints.get(run_id)
        if key is not None and peak_bytes > 0:
            self.need_bytes[key] = max(self.need_bytes.get(key, 0), int(peak_bytes))
            self.reported.add(run_id)

    def need_of(self, run: dict[str, Any]) -> int | None:
        key = footprint(run.get("config"))
        return None if key is None else self.need_bytes.get(key)

    def capabilities(self) -> Capabilities:
        """The devices these slots can ever offer ("cpu" always: a GPU slot trains a CPU-pinned run
        too), and the slots."""
        gpus = {s.device for s in self.slots if s.gpu is not None}
        return Capabilities("local", frozenset({"cpu", *gpus, *(["cuda"] if gpus else [])}),
                            tuple(s.name for s in self.slots))

    def impossible(self, run: Mapping[str, Any]) -> str | None:
        """Why no slot of this engine can ever take `run` (pinned to a GPU it does not have),
        or None."""
        return self.capabilities().why_not(pinned_device(run))

    def fits(self, run: Mapping[str, Any], slot: Slot, free_memory: dict[int, int],
             util: dict[int, int | None] | None = None, need: int | None = None) -> bool:
        """Whether `run` may start on `slot` now; `need` is its measured memory (None: never
        measured, or an ensemble, whose need grows with its size)."""
        pinned = pinned_device(run)
        if pinned == "cuda" and slot.gpu is None:
            return False
        if pinned.startswith("cuda:") and slot.device != pinned:
            return False
        if slot.gpu is None:
            return True
        busy = [s for s in self.slots if s.gpu == slot.gpu and not s.free]
        if not busy:
            return True
        if need is None or slot.gpu not in free_memory:
            return False  # never measured, or no NVML reading: a shared GPU is not risked
        # A neighbour that has not reported yet may not have allocated yet, so NVML's free memory
        # flatters: count its footprint's need against it, or refuse if that is unknown too.
        pending = 0
        for s in busy:
            key = self.footprints.get(s.run_id or "")
            if key is None or key not in self.need_bytes:
                return False
            if s.run_id not in self.reported:
                pending += self.need_bytes[key]
        busy_util = (util or {}).get(slot.gpu)
        if busy_util is not None and busy_util >= SATURATED_UTIL:
            return False
        return free_memory[slot.gpu] - pending >= need + MARGIN_BYTES

    def plan(self, queued: Sequence[Mapping[str, Any]], free_memory: dict[int, int] | None = None,
             util: dict[int, int | None] | None = None) -> list[Placement]:
        """Assign queued runs (already in dispatch order) to free slots. A run that fits
        nowhere now waits; runs behind it may still take slots that suit them."""
        free_memory = dict(free_memory or {})
        placements: list[Placement] = []
        gpus = any(s.gpu is not None for s in self.slots)
        for run in queued:
            # Once per run, not per slot; and on a CPU-only box only for the runs placed.
            key = footprint(run.get("config")) if gpus else None
            # An ensemble's members each need about one run's memory (and their own data copy).
            need = self.need_bytes.get(key) if key is not None and run.get("members", 1) == 1 else None
            for slot in self.slots:
                if slot.free and self.fits(run, slot, free_memory, util, need):
                    slot.run_id = run["id"]
                    key = key if gpus else footprint(run.get("config"))
                    if key is not None and run.get("members", 1) == 1:  # an ensemble is never "measured"
                        self.footprints[run["id"]] = key
                    if slot.gpu is not None and slot.gpu in free_memory and need is None:
                        free_memory[slot.gpu] = 0  # unknown need: nothing else joins (a known one counts as pending)
                    device = "cpu" if pinned_device(run) == "cpu" or slot.gpu is None else "cuda"
                    placements.append(Placement(run["id"], slot, device))
                    break
            if all(not s.free for s in self.slots):
                break
        return placements

    def release(self, run_id: str) -> None:
        self.footprints.pop(run_id, None)
        self.reported.discard(run_id)
        for slot in self.slots:
            if slot.run_id == run_id:
                slot.run_id = None
