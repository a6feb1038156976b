"""The messages between the engine and the processes that train its runs: frozen dataclasses.

Over a local worker's pipe they travel as they are (pickled); to and from a
Dask task they go through `to_wire`/`from_wire`, since a `distributed.Queue`
and `Variable` carry msgpack data only. Receivers `match` on the class; no
message is a tuple tagged by a string.

    engine -> local worker      Train, TrainGroup, Exit
    worker -> engine            WorkerReady, MemoryMeasured, StopGrace, RunDone
    Dask task -> engine         TaskNews (file parts, appended bytes, catalogue writes, its Ended, notes)
    engine -> Dask task         TaskControl (in the run's Variable)
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from trialdeck.engine.runs import facts
from trialdeck.engine.types import RunState

# ----------------------------------------------------------------------------- engine -> local worker


@dataclass(frozen=True)
class Train:
    """Train one run on `device` ("cpu", or "cuda": the one GPU the worker sees)."""

    run_id: str
    device: str


@dataclass(frozen=True)
class TrainGroup:
    """Train these runs as one ensemble (each reported as it ends)."""

    run_ids: tuple[str, ...]
    device: str


@dataclass(frozen=True)
class Exit:
    """Leave: the engine is stopping and this worker trains nothing."""


WorkerOrder = Train | TrainGroup | Exit

# ----------------------------------------------------------------------------- worker -> engine


@dataclass(frozen=True)
class WorkerReady:
    """The worker imported torch and waits for runs."""

    pid: int


@dataclass(frozen=True)
class MemoryMeasured:
    """A run's peak GPU memory after its first epoch (packing learns runs of its footprint)."""

    run_id: str
    peak_bytes: int


@dataclass(frozen=True)
class StopGrace:
    """A script run started: after SIGTERM it may take this many seconds to stop."""

    run_id: str
    seconds: float


@dataclass(frozen=True)
class RunDone:
    """The worker recorded this run's end (through its own lifecycle)."""

    run_id: str
    state: RunState


@dataclass(frozen=True)
class StoppedBecause:
    """Why a Dask task stopped its run by itself (its engine or scheduler seemed gone)."""

    run_id: str
    why: str


WorkerNews = WorkerReady | MemoryMeasured | StopGrace | RunDone | StoppedBecause


class Channel(Protocol):
    """Where a runner's news to the engine goes: a local worker's pipe, or a Dask task's outbox."""

    def send(self, message: WorkerNews) -> None: ...


# ----------------------------------------------------------------------------- catalogue writes from a Dask task


@dataclass(frozen=True)
class UpdateRun:
    """`Store.update_run` the task made on its copy of the record."""

    fields: Mapping[str, Any]


@dataclass(frozen=True)
class RecordEpoch:
    """`Store.record_epoch_and_events` the task made on its copy of the record."""

    entry: Mapping[str, Any] | None
    events: tuple[Mapping[str, Any], ...]


CatalogueWrite = UpdateRun | RecordEpoch


@dataclass(frozen=True)
class Verdict:
    """The engine's pruner stopped a trial at an epoch: the state it ends in and the event that says why."""

    state: RunState
    event: Mapping[str, Any]


@dataclass(frozen=True)
class TaskControl:
    """What the engine tells a run's Dask task, in the run's `distributed.Variable`: which attempt
    it wants (`token`; None: none), whether to stop, its heartbeat, and its pruner's verdicts per epoch."""

    token: str | None
    stop: Literal["cancel", "interrupt"] | None = None
    beat: int = 0
    verdicts: Mapping[str, Verdict | None] = field(default_factory=dict)
    """Per epoch (as a string: msgpack keys) the pruner's answer; None: go on."""


# ----------------------------------------------------------------------------- what a Dask task sends back


@dataclass(frozen=True)
class FilePart:
    """Part `part` of `parts` of a whole file of the run folder (checkpoint.pt, files/...)."""

    path: str
    part: int
    parts: int
    data: bytes


@dataclass(frozen=True)
class VerdictAsked:
    """A trial's epoch: the engine holds its study, so the engine's pruner decides."""

    epoch: int
    record: Mapping[str, Any]


@dataclass(frozen=True)
class TaskNews:
    """One item a run's Dask task puts in its engine's queue, in order: a part of a whole file,
    or the bytes appended to the run's growing files, its catalogue writes and facts (in the
    order it made them), its notes, a verdict it waits for, and `done` on the last one. `token`
    names the attempt (a stale attempt's news is dropped); `seq` counts items."""

    run_id: str
    token: str
    seq: int = 0
    part: FilePart | None = None
    appended: Mapping[str, bytes] = field(default_factory=dict)
    writes: tuple[CatalogueWrite | facts.Ended, ...] = ()
    notes: tuple[WorkerNews, ...] = ()
    ask: VerdictAsked | None = None
    done: bool = False


# ----------------------------------------------------------------------------- the wire (msgpack-safe)

_TAG = "__trialdeck__"
"""The key that names a message's class on the wire (no record field is called this)."""
_TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    Train, TrainGroup, Exit, WorkerReady, MemoryMeasured, StopGrace, RunDone, StoppedBecause, UpdateRun, RecordEpoch,
    TaskControl, Verdict, FilePart, VerdictAsked, TaskNews, facts.Place, facts.Started, facts.StartedHere, facts.Ended,
    facts.EndRecorded, facts.Crashed, facts.Lost, facts.PlaceBack, facts.CancelOverdue, facts.Refused)}
_ENUMS: dict[str, type[enum.Enum]] = {"state": RunState}
"""Fields decoded back into their enum."""


def to_wire(value: Any) -> Any:
    """`value` as msgpack carries it: a message as a dict of its fields with its class under
    _TAG, enums as their values, tuples as lists, numpy scalars as numbers; bytes stay bytes."""
    if hasattr(value, "to_json"):  # a RunEvent or EpochRecord: plain data, as the catalogue stores it
        return to_wire(value.to_json())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_TAG: type(value).__name__, **{f.name: to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool, bytes)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def from_wire(data: Any) -> Any:
    """The value `to_wire` made, messages rebuilt as their classes (their sequences as tuples)."""
    if isinstance(data, (list, tuple)):  # msgpack may hand sequences back as tuples
        return [from_wire(v) for v in data]
    if not isinstance(data, Mapping):
        return data
    if _TAG not in data:
        return {k: from_wire(v) for k, v in data.items()}
    cls = _TYPES.get(str(data[_TAG]))
    if cls is None:
        raise ValueError(f"not a trialdeck message: {str(data)[:200]}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = from_wire(data[f.name])
            if f.name in _ENUMS and value is not None:
                value = _ENUMS[f.name](value)
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)
