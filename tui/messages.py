"""App-wide messages: what the background reader reports, and what screens ask the app to do.

Events are past tense (the reader saw something); requests are imperative
(a screen asks the app, which owns every write, to act). High-rate reports
override `can_replace` so a newer one supersedes an older one still queued:
each carries the whole latest state, never a delta, so dropping one loses
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from textual.message import Message

from trialdeck.tui.composition import Composition
from trialdeck.tui.control import QueueRequest
from trialdeck.tui.live import Catalog, LiveRun, LogEntry
from trialdeck.tui.probes import EngineSample, HardwareSample

# ----------------------------------------------------------------------------- reports (reader -> app)


@dataclass
class CatalogLoaded(Message):
    """The catalogue changed (store.version() moved) and was read again."""

    catalog: Catalog

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, CatalogLoaded)


@dataclass
class MetricsUpdated(Message):
    """Followed runs' streams grew; `live` holds every followed run's latest state."""

    live: Mapping[str, LiveRun]

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, MetricsUpdated)


@dataclass
class StatusSampled(Message):
    """A new engine and hardware reading for the status line."""

    engine: EngineSample
    hardware: HardwareSample

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StatusSampled)


@dataclass
class EventsArrived(Message):
    """Run events not reported before (never coalesced: each batch is new)."""

    entries: tuple[LogEntry, ...]
    initial: bool = False
    """True for the start-up backlog: logged, not toasted."""


@dataclass
class ReaderFailed(Message):
    """The workspace could not be read (corrupt or locked catalogue); the reader keeps trying."""

    error: str


# ----------------------------------------------------------------------------- requests (screen -> app)


@dataclass
class OpenRun(Message):
    run_id: str


@dataclass
class CompareRuns(Message):
    """Open the compare view on these runs (two or more, in the order they were marked)."""

    run_ids: tuple[str, ...]


@dataclass
class QueueRuns(Message):
    request: QueueRequest


@dataclass
class CancelRun(Message):
    run_id: str


@dataclass
class RequeueRun(Message):
    run_id: str
    sets: tuple[str, ...] = ()
    """`--set` items for the new run (`runs rerun RUN --set ...`): none runs the same config."""


@dataclass
class StartStudy(Message):
    """Start (or resume) the study of a preset with a [tune] block, as `trialdeck tune` does."""

    composition: Composition


@dataclass
class SaveTrialPreset(Message):
    """Save a study's trial as a preset (`studies best STUDY --save-preset NAME`, for any trial)."""

    study: str
    number: int
    name: str


@dataclass
class ResumeRun(Message):
    """Queue a failed, cancelled or interrupted run again under its id, from its checkpoint."""

    run_id: str


@dataclass
class MoveRun(Message):
    run_id: str
    where: str
    """"top", "up" or "down"."""


@dataclass
class SetPriority(Message):
    run_id: str
    priority: int


@dataclass
class ClearQueue(Message):
    pass


@dataclass
class SavePreset(Message):
    composition: Composition
    description: str = ""
