"""Facts: what placement backends, workers and runners report about a run.

A fact says what happened, never what the run's state becomes: the lifecycle
(runs.lifecycle) decides that, writes the event a person reads, and decides
whether an interrupted run goes back in the queue. Facts are frozen and plain,
so they cross a process pipe as they are (pickled) and a Dask queue through
runtime.workers.messages' codec.

    Started        a place took a queued run                      -> running
    StartedHere    `trialdeck train` / `trialdeck worker` runs it  -> running (foreground)
    Ended          its runner's own word, with its record          -> that state
    EndRecorded    a worker recorded the run's end itself         (the engine hears of it)
    Crashed        the process training it died under it          -> failed (cancelled if a cancel was asked)
    Lost           its place went away; checkpoint kept            -> interrupted, requeued per `recovery`
    PlaceBack      the place a Lost run waited for is back         -> queued per `recovery`
    CancelOverdue  it did not obey a cancel within the grace       -> cancelled (then stopped by force)
    Refused        no place can ever take it                       -> failed
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trialdeck.engine.types import RunState


@dataclass(frozen=True)
class Place:
    """Where a run trains: a slot of this box, or a place on a Dask worker."""

    slot: str
    """"cpu.0", "gpu1.2"; on a cluster the worker's name ("w1", or "w1.1" for its second place)."""
    device: str
    """The device the run's record names: "cpu", "cuda:N" (this box's GPU N), or on a cluster what the
    task is told ("cuda": its worker's one GPU)."""
    host: str | None = None
    """The Dask worker's name (None on this box)."""
    host_address: str | None = None
    """The Dask worker's address (tcp://...)."""

    def describe(self) -> str:
        if self.host is None:
            return self.slot
        return f"Dask worker {self.host} ({self.host_address})" if self.host_address else f"Dask worker {self.host}"

    def fields(self) -> dict[str, Any]:
        """What a running run's record says of its place."""
        out: dict[str, Any] = {"slot": self.slot, "device": self.device, "host": self.host}
        if self.host_address is not None:
            out["host_address"] = self.host_address
        return out


@dataclass(frozen=True)
class Started:
    """A place took a queued run; `member`/`members`: its place among an ensemble's runs."""

    run_id: str
    place: Place
    pid: int | None = None
    """The worker process training it on this box (None on a cluster)."""
    member: int = 1
    members: int = 1


@dataclass(frozen=True)
class StartedHere:
    """A run created to train in this very process (`trialdeck train`, `trialdeck worker`)."""

    run_id: str
    pid: int
    fields: Mapping[str, Any] = field(default_factory=dict)
    """Extra record fields (the folder it was started from)."""


@dataclass(frozen=True)
class Ended:
    """A runner's own word: the state it ended in, the reason when it failed or was stopped, the
    events still to record and the record fields it leaves (history, summary, kept epoch...)."""

    run_id: str
    state: RunState
    reason: str | None = None
    events: tuple[Mapping[str, Any], ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EndRecorded:
    """A worker recorded the run's end itself (its Ended went through its own lifecycle); the
    engine learns of it to tell the notifier and to requeue a run that stopped itself."""

    run_id: str
    state: RunState
    where: str = ""
    """Where it ran, for the engine's log line."""
    why: str | None = None
    """Why it stopped itself, when it was interrupted (its scheduler or engine seemed gone)."""


@dataclass(frozen=True)
class Crashed:
    """The process training it died under it, or its runner ended without recording a result."""

    run_id: str
    why: str
    cancel_asked: bool = False
    """A cancel had been asked: the run ends cancelled, not failed."""


@dataclass(frozen=True)
class Lost:
    """Its place went away (a Dask worker or scheduler, its engine or worker gone, the engine
    stopping); its checkpoint stays. `requeue`: queue it again now (per `recovery`) unless the
    engine is stopping; False when its backend reports PlaceBack later."""

    run_id: str
    why: str
    requeue: bool = True


@dataclass(frozen=True)
class PlaceBack:
    """The place an interrupted run waited for is back (a Dask scheduler reconnected)."""

    run_id: str


@dataclass(frozen=True)
class CancelOverdue:
    """A cancel the run did not obey within the grace; `how` says what its backend does about it."""

    run_id: str
    how: str


@dataclass(frozen=True)
class Refused:
    """No place of this engine can ever take the run (pinned to a device it does not have)."""

    run_id: str
    why: str


Fact = Started | StartedHere | Ended | EndRecorded | Crashed | Lost | PlaceBack | CancelOverdue | Refused
"""Everything a backend, worker or runner reports about a run."""
