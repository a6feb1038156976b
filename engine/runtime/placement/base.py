"""Placement: where the engine's queued runs train, behind one abstract base class.

The engine (runtime.daemon) owns the queue, the catalogue and the studies; a
placement backend owns the places runs train in. Three implement it:

- `LocalPlacement` (placement.local, the default): one warm worker process per
  device slot of this box, runs dispatched over pipes the moment a slot frees,
  ensembles packed by `membership.queue_groups`.
- `DaskPlacement` (placement.dask, with `cluster` in engine.toml): runs placed
  as tasks on a Dask distributed cluster, their results streamed back.
- `FakePlacement` (placement.fake): places in memory, for tests and simulations.

Contract (tests/test_placement_contract.py runs one suite against all three):
- `capabilities()` says which devices it can ever offer and its places now;
  enqueue checks (`--device cuda`, pins) and `engine status` read it from the
  engine's pid file, or from `offline_capabilities` when no engine runs.
- `dispatch` takes queued runs only while it has room and reports each start
  (runs.facts.Started); every run it took ends in exactly one final state.
- A cancel requested in the catalogue (`cancel_requested`) reaches the run at
  once; a run that has not stopped after CANCEL_GRACE (+ its own stop grace)
  is cancelled by force (CancelOverdue).
- `shutdown` interrupts what runs, each keeping a checkpoint to resume from;
  what has not stopped after STOP_GRACE is recorded interrupted (Lost).
- Backends report facts to the lifecycle and never change a run's state
  themselves; nothing blocks the engine's loop (it waits on `waitables()` and
  calls `handle` with whichever are ready).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any, ClassVar

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.runs.facts import CancelOverdue, Fact, Lost
from trialdeck.engine.runs.lifecycle import Lifecycle
from trialdeck.engine.runtime.placement.capabilities import Capabilities
from trialdeck.engine.types import RunRecord, RunState
from trialdeck.engine.workspace import Workspace

if TYPE_CHECKING:
    from trialdeck.engine.runtime.config import EngineConfig

CANCEL_GRACE = 5.0
"""Seconds a run gets to stop cooperatively after a cancel before it is stopped by force."""
STOP_GRACE = 30.0
"""Seconds running runs get to checkpoint when the engine stops."""
CLUSTER_STATUS_NAME = "cluster.json"
"""In the workspace, written by a Dask-placing engine: the cluster as it last saw it
(read by control.client.read_cluster_status, for `engine status` and the TUI)."""


class BasePlacement(abc.ABC):
    """Where runs train (see the module docstring). `log` writes a line to engine.log; every fact
    goes to `lifecycle`, which changes the run's state."""

    kind: ClassVar[str]
    cancel_grace: ClassVar[float] = CANCEL_GRACE
    """Seconds a run gets to obey a cancel (beyond its own stop grace) before it is stopped by force."""

    def __init__(self, ws: Workspace, store: Store, lifecycle: Lifecycle, log: Callable[[str], None],
                 config: EngineConfig | None = None) -> None:
        self.ws, self.store, self.lifecycle, self.log = ws, store, lifecycle, log
        self.config = config
        self.stopping = False
        """Set when the engine stops: a dead worker is then not replaced, nothing is dispatched."""
        self.cancel_sent: dict[str, float] = {}
        """When each run's cancel was passed on (monotonic), for the grace before force."""

    def report(self, fact: Fact) -> RunRecord | None:
        return self.lifecycle.apply(fact)

    # -- what each backend is ----------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def offline_capabilities(cls, ws: Workspace, config: EngineConfig) -> Capabilities:
        """What an engine started now with `config` would offer (no engine runs: enqueue checks)."""

    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """What it offers now."""

    @abc.abstractmethod
    def start(self) -> None:
        """Bring the places up (spawn workers, connect); must not block for long."""

    def capacity(self) -> int:
        """How many runs it can train at once now (a study asks this many trials ahead)."""
        return max(1, len(self.capabilities().places))

    @property
    def ensemble_width(self) -> int:
        """Most trials one place trains as one ensemble (1: no ensembles)."""
        return 1

    @abc.abstractmethod
    def waitables(self) -> list[Any]:
        """Objects for `multiprocessing.connection.wait` that become ready when there is news."""

    @abc.abstractmethod
    def handle(self, ready: list[Any]) -> None:
        """Take in the news among `ready` (messages, finished runs, dead workers)."""

    @abc.abstractmethod
    def dispatch(self) -> None:
        """Start queued runs (`queued()`) on free places."""

    def queued(self) -> list[RunRecord]:
        """The queued runs a backend may start now, in dispatch order: every backend's dispatch reads
        them here, the one place a queue policy (dependencies, a paused queue, groups) filters them."""
        return self.store.queued()

    # -- cancels: the same rule for every backend --------------------------------------------

    @abc.abstractmethod
    def training(self) -> set[str]:
        """The runs this backend trains now."""

    @abc.abstractmethod
    def pass_cancel(self, run_id: str) -> None:
        """Ask a run to stop, cancelled (it ends through its runner within seconds)."""

    def stop_grace(self, run_id: str) -> float:
        """Extra seconds a run may take to stop once asked (a script's grace_seconds)."""
        return 0.0

    @abc.abstractmethod
    def force_cancel(self, run_id: str, waited: float) -> None:
        """A run did not obey its cancel within `waited` seconds: stop it by force (report CancelOverdue)."""

    def check_cancellations(self) -> None:
        """Pass on cancels the catalogue asks for; force what does not stop in time."""
        mine = self.training()
        for gone in [r for r in self.cancel_sent if r not in mine]:
            del self.cancel_sent[gone]
        if not mine:
            return
        now = time.monotonic()
        for run in self.store.list_runs(RunState.RUNNING, omit=("config", "history", "events")):
            run_id = run["id"]
            # Not ours, not asked, or ended just now (its worker killed for another member, say).
            if not run.get("cancel_requested") or run_id not in mine or run_id not in self.training():
                continue
            sent = self.cancel_sent.get(run_id)
            if sent is None:
                self.cancel_sent[run_id] = now
                self.pass_cancel(run_id)
            elif now - sent > self.cancel_grace + self.stop_grace(run_id):
                self.force_cancel(run_id, self.cancel_grace + self.stop_grace(run_id))

    def cancel_overdue(self, run_id: str, how: str) -> None:
        self.cancel_sent.pop(run_id, None)
        self.report(CancelOverdue(run_id, how))

    # -- the end: the same rule for every backend --------------------------------------------

    @abc.abstractmethod
    def interrupt_all(self) -> None:
        """Ask every run to stop, interrupted, keeping a checkpoint (the engine stops)."""

    @abc.abstractmethod
    def abandon(self) -> list[str]:
        """Stop whatever still trains by force and the places themselves; the runs it abandoned."""

    def shutdown(self) -> None:
        """Interrupt what runs (each keeps its checkpoint) and stop the places; a run that has not
        recorded its end within STOP_GRACE (+ its own stop grace) is recorded interrupted."""
        self.stopping = True
        self.lifecycle.stopping = True
        busy = self.training()
        if busy:
            self.interrupt_all()
            deadline = time.monotonic() + STOP_GRACE + max((self.stop_grace(r) for r in busy), default=0.0)
            # Each run checkpoints, records itself interrupted and its worker answers.
            while self.training() and self.can_hear() and time.monotonic() < deadline:
                self.handle(wait(self.waitables(), timeout=0.5))
        for run_id in self.abandon():
            self.report(Lost(run_id, "interrupted: the engine stopped", requeue=False))

    def can_hear(self) -> bool:
        """Whether news of running runs can still arrive (a lost cluster's cannot)."""
        return True

    def status_fields(self) -> dict[str, Any]:
        """What the engine's pid file says of this backend (read by `engine status` and enqueue checks)."""
        return {"placement": self.kind, "capabilities": self.capabilities().to_json(),
                "slots": list(self.capabilities().places)}
