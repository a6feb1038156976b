"""FakePlacement: places in memory, for the placement contract suite, simulations and tests.

It keeps the contract (placement.base) without processes or training: a run
it places is Started on a free place, and Ended after `ticks` passes of the
engine's loop (default: one per epoch its configuration plans), completed with
one epoch of made-up history, or at once when cancelled or interrupted. `hold=True` keeps runs training until `finish` is
called; `stubborn=True` ignores cancels and stops, so the forced paths (an
overdue cancel, an engine stop that abandons) can be walked in milliseconds.
Its devices and places are whatever it is given: a GPU-less head node whose
"cluster" offers cuda is `FakePlacement(..., devices=("cpu", "cuda"))`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.runs.facts import Ended, EndRecorded, Place, Refused, Started
from trialdeck.engine.runs.lifecycle import Lifecycle
from trialdeck.engine.runtime.config import EngineConfig
from trialdeck.engine.runtime.placement.base import BasePlacement
from trialdeck.engine.runtime.placement.capabilities import Capabilities
from trialdeck.engine.runtime.placement.scheduler import pinned_device
from trialdeck.engine.runtime.wake import Waker
from trialdeck.engine.types import EventKind, RunEvent, RunState, planned_epochs
from trialdeck.engine.workspace import Workspace


class FakePlacement(BasePlacement):
    """In-memory places (see the module docstring)."""

    kind = "fake"

    def __init__(self, ws: Workspace, store: Store, lifecycle: Lifecycle, log: Callable[[str], None],
                 config: EngineConfig | None = None, *, places: Iterable[str] = ("fake.0", "fake.1"),
                 devices: Iterable[str] = ("cpu",), ticks: int | None = None, hold: bool = False,
                 stubborn: bool = False) -> None:
        super().__init__(ws, store, lifecycle, log)
        self.places: dict[str, str | None] = {name: None for name in places}
        """Each place's run (None: free)."""
        self.devices = frozenset(devices)
        self.ticks, self.hold, self.stubborn = ticks, hold, stubborn
        self.left: dict[str, int] = {}
        """Loop passes each run has left before it completes."""
        self.waker = Waker()

    @classmethod
    def offline_capabilities(cls, ws: Workspace, config: EngineConfig) -> Capabilities:
        return Capabilities(cls.kind, frozenset({"cpu"}), ("fake.0", "fake.1"))

    def capabilities(self) -> Capabilities:
        return Capabilities(self.kind, self.devices | {"cpu"}, tuple(self.places))

    def start(self) -> None:
        self.log(f"fake placement: {len(self.places)} place(s) offering {', '.join(sorted(self.devices))}")

    def training(self) -> set[str]:
        return {run_id for run_id in self.places.values() if run_id is not None}

    def waitables(self) -> list[Any]:
        return [self.waker.fd]

    def handle(self, ready: list[Any]) -> None:
        if self.waker.fd in ready:
            self.waker.drain()
        for run_id in sorted(self.left):
            self.left[run_id] -= 1
            if self.left[run_id] <= 0:
                self.finish(run_id, RunState.COMPLETED)
        if self.left:
            self.waker.wake()

    def finish(self, run_id: str, state: RunState, reason: str | None = None) -> None:
        """End a run the way its runner would: its record, then the engine hears of it."""
        epochs = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "lr": 0.001, "seconds": 0.0}]
        events = () if state is not RunState.FAILED else (RunEvent(EventKind.FAILED.value, None, reason or "failed").to_json(),)
        fields = {"history": epochs if state is RunState.COMPLETED else [], "summary": {"epochs": 1}}
        self.report(Ended(run_id, state, reason, events, fields))
        self._free(run_id)
        self.report(EndRecorded(run_id, state, where="a fake place"))

    def _free(self, run_id: str) -> None:
        self.left.pop(run_id, None)
        for name, held in self.places.items():
            if held == run_id:
                self.places[name] = None

    def dispatch(self) -> None:
        free = [name for name, run_id in self.places.items() if run_id is None]
        if not free or self.stopping:
            return
        for run in self.queued():
            device = pinned_device(run)
            why = self.capabilities().why_not(device)
            if why is not None:
                self.report(Refused(run["id"], why))
                continue
            name = free.pop(0)
            if self.report(Started(run["id"], Place(name, "cpu" if device in ("auto", "cpu") else device))) is None:
                free.insert(0, name)
                continue
            self.places[name] = run["id"]
            if not self.hold:
                self.left[run["id"]] = self.ticks or planned_epochs(run.get("config")) or 1
                self.waker.wake()
            if not free:
                return

    def pass_cancel(self, run_id: str) -> None:
        if not self.stubborn:
            self.report(Ended(run_id, RunState.CANCELLED, None,
                              (RunEvent(EventKind.CANCELLED.value, None, "cancelled by the user").to_json(),)))
            self._free(run_id)
            self.report(EndRecorded(run_id, RunState.CANCELLED, where="a fake place"))

    def force_cancel(self, run_id: str, waited: float) -> None:
        self.cancel_overdue(run_id, "the fake place dropped it")
        self._free(run_id)

    def interrupt_all(self) -> None:
        if self.stubborn:
            return
        for run_id in sorted(self.training()):
            self.report(Ended(run_id, RunState.INTERRUPTED, None, (RunEvent(
                EventKind.INTERRUPTED.value, None, "interrupted: the engine is stopping; checkpoint kept").to_json(),)))
            self._free(run_id)
            self.report(EndRecorded(run_id, RunState.INTERRUPTED, where="a fake place"))

    def abandon(self) -> list[str]:
        left = sorted(self.training())
        for run_id in left:
            self._free(run_id)
        return left
