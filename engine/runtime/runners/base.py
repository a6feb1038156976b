"""Runners: what trains runs inside a worker process, chosen once per run from its configuration.

    runner_for(ctx, records)   one record: its script (ScriptRunner) or the built-in trainer
                               (TrainerRunner); several: one ensemble of members (EnsembleRunner)

Every worker (a local warm worker, a Dask task, `trialdeck train` in a terminal,
`trialdeck worker`) hands a runner the same RunContext: the catalogue's run
calls (RunStore), where its facts go (a Lifecycle, or on a Dask worker the way
back to the engine's), the device, the stop signal, and where its news to the
engine goes. A runner reports each run's end through `done(run_id, state)`
the moment it has one, and never ends a run without recording why.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from trialdeck.engine.runs.facts import Ended
from trialdeck.engine.runs.lifecycle import FactSink
from trialdeck.engine.runtime.workers.messages import Channel
from trialdeck.engine.training import faults
from trialdeck.engine.training.callbacks import Stop, TrainerCallback
from trialdeck.engine.types import EpochRecord, EventKind, RunEvent, RunState
from trialdeck.engine.workspace import Workspace

StopRequest = Literal["cancel", "interrupt"]


class StopSignal(Protocol):
    """How the engine asks a run to stop: a local worker's shared memory, a Dask task's control
    variable, or nothing at all in a terminal."""

    def requested(self, run_id: str) -> StopRequest | None:
        """"cancel" (this run), "interrupt" (every run of the worker: the engine stops), or None."""
        ...


class NoStop:
    """The stop signal of a run trained in a terminal: only Ctrl-C stops it."""

    def requested(self, run_id: str) -> StopRequest | None:
        return None


class RunStore(Protocol):
    """The catalogue calls a run makes while it trains (catalogue.store.Store; on a Dask worker a
    copy of the record whose writes go back to the engine)."""

    def get_run(self, run_id: str) -> Mapping[str, Any] | None: ...

    def update_run(self, run_id: str, **fields: Any) -> Mapping[str, Any]: ...

    def record_epoch_and_events(self, run_id: str, entry: Any, events: Sequence[Any]) -> Mapping[str, Any]: ...


ExtraCallback = Callable[[Mapping[str, Any]], TrainerCallback | None]
"""What else watches a run's epochs, from its record (a trial's pruner; a terminal's progress)."""


def watched_by(callback: TrainerCallback | None) -> ExtraCallback:
    """The same watcher for whatever run (a terminal's progress bar, a study worker's reporter)."""
    return lambda record: callback


def trial_reporter(store: Any, ws: Workspace, record: Mapping[str, Any]) -> TrainerCallback | None:
    """A trial reports each epoch to its Optuna study; a plain run needs nothing extra."""
    if record.get("study") is None:
        return None
    # Deferred: optuna loads only in a worker that trains a trial.
    from trialdeck.engine.tuning.reporter import TrialReporter

    return TrialReporter.for_record(store, ws, dict(record))


@dataclass
class RunContext:
    """What every runner gets, whatever process it trains in."""

    store: RunStore
    ws: Workspace
    facts: FactSink
    """Where its runs' facts go (they end through it)."""
    device: str
    """"cpu", "cuda" (the worker's one visible GPU), "cuda:N", or "auto" in a terminal."""
    stop: StopSignal = field(default_factory=NoStop)
    channel: Channel | None = None
    """News for the engine (a run's GPU memory, a script's stop grace); None in a terminal."""
    threads: int | None = None
    """The slot's share of the CPU cores (a script's OMP_NUM_THREADS)."""
    extra: ExtraCallback | None = None
    """None: a trial's own Optuna reporter (trial_reporter)."""
    resume: bool = True
    """Go on from the run's checkpoint when it has one."""

    def extra_for(self, record: Mapping[str, Any]) -> TrainerCallback | None:
        if self.extra is not None:
            return self.extra(record)
        return trial_reporter(self.store, self.ws, record)

    def fail(self, run_id: str, reason: str) -> RunState:
        """End a run failed with `reason` (its runner could not even start it); the state it has now."""
        event = RunEvent(EventKind.FAILED.value, None, reason).to_json()
        record = self.facts.apply(Ended(run_id, RunState.FAILED, reason, (event,)))
        return RunState(record["state"]) if record else self.state_of(run_id)

    def state_of(self, run_id: str) -> RunState:
        record = self.store.get_run(run_id) or {}
        return RunState(record.get("state", RunState.FAILED.value))


Done = Callable[[str, RunState], None]
"""Told each run's final state as it ends (the worker answers the engine with it)."""


class Runner(abc.ABC):
    """Trains its runs to their final states in this process."""

    def __init__(self, ctx: RunContext, records: Sequence[Mapping[str, Any]]) -> None:
        self.ctx = ctx
        self.records = list(records)

    @abc.abstractmethod
    def run(self, done: Done) -> None:
        """Train every run; `done(run_id, state)` once per run as it ends."""

    @classmethod
    def clean_up_after(cls, ws: Workspace, run_id: str) -> None:
        """What a dead worker may have left of a run of this kind (processes, files); nothing by default."""
        return None


class StopRequests(TrainerCallback):
    """Turns the engine's stop requests for one run into a Stop for the trainer, between steps and
    after each epoch; `extra` (a trial's reporter) sees every epoch too, and `first_epoch` is
    called once, after this attempt's first epoch (the engine learns its peak memory)."""

    def __init__(self, signal: StopSignal, run_id: str, extra: TrainerCallback | None = None,
                 first_epoch: Callable[[], None] | None = None) -> None:
        self.signal, self.run_id, self.extra, self.first_epoch = signal, run_id, extra, first_epoch

    def _stop(self) -> Stop | None:
        match self.signal.requested(self.run_id):
            case "cancel":
                return Stop(RunState.CANCELLED, RunEvent(EventKind.CANCELLED.value, None, "cancelled by the user"))
            case "interrupt":
                return Stop(RunState.INTERRUPTED,
                            RunEvent(EventKind.INTERRUPTED.value, None, "interrupted: the engine is stopping; checkpoint kept"))
            case _:
                return None

    def poll(self) -> Stop | None:
        return self._stop() or (self.extra.poll() if self.extra else None)

    def on_epoch(self, record: EpochRecord, events: list[RunEvent]) -> Stop | None:
        faults.check(self.run_id, record.epoch)
        if self.first_epoch is not None:
            self.first_epoch()
            self.first_epoch = None
        extra = self.extra.on_epoch(record, events) if self.extra else None
        return extra or self._stop()

    def on_event(self, event: RunEvent) -> None:
        if self.extra:
            self.extra.on_event(event)

    def on_start(self, info: dict[str, Any]) -> None:
        if self.extra:
            self.extra.on_start(info)

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        if self.extra:
            self.extra.on_step(epoch, step, loss)

    def log(self, line: str) -> None:
        if self.extra:
            self.extra.log(line)
