"""Capabilities: what a placement backend can offer, asked by enqueue checks, `engine status` and the scheduler.

Plain data (no processes, no store): the engine publishes its backend's in its
pid file; a client reads them back with `from_json`, or asks the backend class
the engine would start (`offline_capabilities`) when none runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NO_GPU = "this machine has no NVIDIA GPU the engine can see"


@dataclass(frozen=True)
class Capabilities:
    """What a backend can offer: the devices a run may be pinned to and its places now. `growing`:
    places come and go (a cluster), so a device none offers now may come with a worker that joins;
    such a backend never refuses a pin, it waits."""

    kind: str
    devices: frozenset[str]
    """"cpu", "cuda" (any GPU) and each "cuda:N" it can place a run on."""
    places: tuple[str, ...]
    growing: bool = False

    def why_not(self, device: str | None) -> str | None:
        """Why no place of this backend can ever take a run pinned to `device`, or None. Only GPU
        pins are refused: every place trains a CPU run, and other devices are the trainer's to find."""
        if not device or not device.startswith("cuda") or device in self.devices or self.growing:
            return None
        gpus = sorted(d for d in self.devices if d.startswith("cuda:"))
        has = f"its GPUs are {', '.join(gpus)}" if gpus else NO_GPU
        return f"device {device!r} was asked for, but {has}"

    def why_waiting(self, device: str | None) -> str | None:
        """Why a run pinned to `device` cannot start on any place offered now (a cluster without
        such a worker at the moment), or None: for the queue's waiting reasons."""
        if not device or not device.startswith("cuda") or device in self.devices:
            return None
        return self.why_not(device) or f"no place of the {self.kind} backend offers {device} now"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "devices": sorted(self.devices), "places": list(self.places), "growing": self.growing}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Capabilities:
        return cls(str(data["kind"]), frozenset(data.get("devices") or ()), tuple(data.get("places") or ()),
                   bool(data.get("growing")))
