"""The lifecycle: the one door for a run's state changes.

Every `store.transition` in trialdeck is made here (the store refuses a change
its table does not allow); everything else reports a fact (runs.facts) or asks
for a change a person or a study wants (`cancel`, `resume`). Invariants:

- Each change follows types.LIFECYCLE: a cause allows only its targets, and
  the store allows only its sources. Its event text is written here, once.
- Requeue and resume decisions are made here alone: an interrupted run goes
  back in the queue as the engine's `recovery` says ("resume" from its
  checkpoint, "requeue" from scratch, "leave" interrupted), never while the
  engine stops (the next engine's `recover` does it), never for a run trained
  in a terminal (`trialdeck train`: its user resumes it).
- A run the engine sees end (its worker's word, a crash, an overdue cancel, a
  refusal) is told to `on_end` once, from here (the notifier listens).

One Lifecycle per process that changes states: the engine's (recovery policy,
log and on_end set), a local worker's (its runners' Ended facts), `trialdeck
train`'s. On a Dask worker runtime.workers.dask forwards the runner's facts to
the engine's lifecycle instead (FactSink).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, cast

from trialdeck.engine.runs.facts import (
    CancelOverdue,
    Crashed,
    Ended,
    EndRecorded,
    Fact,
    Lost,
    PlaceBack,
    Refused,
    Started,
    StartedHere,
)
from trialdeck.engine.runs.folder import forget_script_attempts, script_resumes
from trialdeck.engine.types import LIFECYCLE, TRANSITIONS, Cause, EventKind, RunEvent, RunRecord, RunState
from trialdeck.engine.workspace import Workspace

Recovery = Literal["resume", "requeue", "leave"]
RECOVERY_POLICIES: tuple[Recovery, ...] = ("resume", "requeue", "leave")


class TransitionStore(Protocol):
    """What the lifecycle needs of the catalogue (catalogue.store.Store)."""

    @property
    def workspace(self) -> Workspace: ...

    def get_run(self, run_id: str) -> Mapping[str, Any] | None: ...

    def list_runs(self, status: RunState | str | None = None, *, omit: Sequence[str] = ()) -> Sequence[Mapping[str, Any]]: ...

    def transition(self, run_id: str, new_state: RunState | str, *, error: str | None = None,
                   add_events: Sequence[RunEvent | Mapping[str, Any]] | None = None, to_back: bool = False,
                   **fields: Any) -> Mapping[str, Any]: ...


class FactSink(Protocol):
    """Where a runner's facts go: a Lifecycle, or (on a Dask worker) the way back to the engine's."""

    def apply(self, fact: Fact) -> RunRecord | None: ...


_SOURCES: dict[tuple[Cause, RunState], frozenset[RunState]] = {
    (t.cause, t.target): frozenset(s.source for s in LIFECYCLE if s.cause is t.cause and s.target is t.target)
    for t in LIFECYCLE
}
"""The states each (cause, target) moves a run from."""
_CHECKED = frozenset(key for key, sources in _SOURCES.items()
                     if any(key[1] in TRANSITIONS[state] for state in RunState if state not in sources))
"""Where the store alone would allow more sources than the cause does: the state is read first."""


class Lifecycle:
    """Makes a run's state changes from facts and requests (see the module docstring)."""

    def __init__(self, store: TransitionStore, *, recovery: Recovery = "resume",
                 log: Callable[[str], None] | None = None,
                 on_end: Callable[[str, RunState], None] | None = None) -> None:
        self.store = store
        self.recovery: Recovery = recovery
        self.log = log or (lambda line: None)
        self.on_end = on_end or (lambda run_id, state: None)
        self.stopping = False
        """Set by the engine as it stops: nothing is requeued until the next engine recovers it."""

    @property
    def ws(self) -> Workspace:
        return self.store.workspace

    # -- the one door ------------------------------------------------------------------------

    def _move(self, run_id: str, target: RunState, cause: Cause, *, event: RunEvent | None = None,
              events: Sequence[Mapping[str, Any] | RunEvent] = (), error: str | None = None, to_back: bool = False,
              **fields: Any) -> RunRecord:
        """The transition itself; ValueError when the run's state does not allow it for this cause."""
        sources = _SOURCES.get((cause, target))
        assert sources, f"{cause.value} never makes a run {target.value} (types.LIFECYCLE)"
        if (cause, target) in _CHECKED and (now := self._state(run_id)) is not None and now not in sources:
            names = ", ".join(sorted(s.value for s in sources))
            raise ValueError(f"run {run_id} is {now.value}: {cause.value} makes only {names} runs {target.value}")
        added = [*events, *([event] if event is not None else [])]
        record = self.store.transition(run_id, target, error=error, add_events=added, to_back=to_back,
                                       **fields)
        return cast(RunRecord, dict(record))

    def _state(self, run_id: str) -> RunState | None:
        """The run's state, or None when the catalogue does not say (the store then decides)."""
        record = self.store.get_run(run_id)
        return RunState(record["state"]) if record and record.get("state") else None

    def state_of(self, run_id: str) -> RunState:
        """The run's state in the catalogue now (failed for a run that is not there)."""
        return self._state(run_id) or RunState.FAILED

    # -- facts -------------------------------------------------------------------------------

    def apply(self, fact: Fact) -> RunRecord | None:
        """Make the change `fact` means; the run's record after it, or None when its state no
        longer allows it (cancelled meanwhile, say): the catalogue's state then stands."""
        try:
            return self._apply(fact)
        except ValueError as exc:
            self.log(f"{fact.run_id}: {type(fact).__name__} not recorded: {exc}")
            return None

    def _apply(self, fact: Fact) -> RunRecord | None:
        match fact:
            case Started(run_id, place, pid, member, members):
                how = f"started on {place.describe()}"
                if members > 1:
                    how += f" (member {member} of an ensemble of {members})"
                return self._move(run_id, RunState.RUNNING, Cause.STARTED, worker=pid, cancel_requested=False,
                                  event=RunEvent(EventKind.STARTED.value, None, how), **place.fields())
            case StartedHere(run_id, pid, fields):
                return self._move(run_id, RunState.RUNNING, Cause.STARTED, worker=pid, foreground=True, **fields)
            case Ended(run_id, state, reason, events, fields):
                return self._move(run_id, state, Cause.ENDED, error=reason, events=events, **fields)
            case EndRecorded(run_id, state, where, why):
                self.log(f"{run_id} {state.value}" + (f" on {where}" if where else "") + (f" ({why})" if why else ""))
                self.on_end(run_id, state)
                if state is RunState.INTERRUPTED:  # it stopped itself (its scheduler or engine seemed gone)
                    self._requeue(run_id)
                return None
            case Crashed(run_id, why, cancel_asked):
                return self._crashed(run_id, why, cancel_asked)
            case Lost(run_id, why, requeue):
                record = None
                if self._state(run_id) is RunState.RUNNING:
                    record = self._move(run_id, RunState.INTERRUPTED, Cause.LOST,
                                        event=RunEvent(EventKind.INTERRUPTED.value, None, why))
                    self.log(f"{run_id} {why}")
                if requeue:
                    record = self._requeue(run_id) or record
                return record
            case PlaceBack(run_id):
                return self._requeue(run_id)
            case CancelOverdue(run_id, how):
                message = f"cancelled by the user ({how})"
                record = self._move(run_id, RunState.CANCELLED, Cause.CANCEL_OVERDUE,
                                    event=RunEvent(EventKind.CANCELLED.value, None, message))
                self.log(f"{run_id} {message}")
                self.on_end(run_id, RunState.CANCELLED)
                return record
            case Refused(run_id, why):
                record = self._move(run_id, RunState.FAILED, Cause.REFUSED, error=why,
                                    event=RunEvent(EventKind.FAILED.value, None, why))
                self.log(f"{run_id} failed: {why}")
                self.on_end(run_id, RunState.FAILED)
                return record

    def _crashed(self, run_id: str, why: str, cancel_asked: bool) -> RunRecord | None:
        if self._state(run_id) is not RunState.RUNNING:
            return None  # it recorded its own end before its process went
        if cancel_asked:
            record = self._move(run_id, RunState.CANCELLED, Cause.CRASHED, event=RunEvent(
                EventKind.CANCELLED.value, None, "cancelled by the user (worker stopped)"))
        else:
            record = self._move(run_id, RunState.FAILED, Cause.CRASHED, error=why,
                                event=RunEvent(EventKind.FAILED.value, None, why))
        self.on_end(run_id, RunState(record["state"]))
        return record

    # -- requeue and resume: the decisions ---------------------------------------------------

    def next_attempt(self, run_id: str, *, by_user: bool) -> str:
        """How the run's next attempt goes on, in words: from its checkpoint, its script with
        TRIALDECK_RESUME=1, or from scratch."""
        record = self.store.get_run(run_id) or {}
        if (record.get("config") or {}).get("script") and script_resumes(self.ws, run_id):
            return ("starts its script again with TRIALDECK_RESUME=1" if by_user
                    else "resumes its script with TRIALDECK_RESUME=1")
        if self.ws.checkpoint_path(run_id).exists():
            return "resumes from its checkpoint"
        return "starts over (it has no checkpoint)" if by_user else "starts over"

    def _requeue(self, run_id: str) -> RunRecord | None:
        """An interrupted run goes back in the queue as `recovery` says (see the module docstring)."""
        record = self.store.get_run(run_id)
        if (record is None or record["state"] != RunState.INTERRUPTED.value or record.get("foreground")
                or self.recovery == "leave" or self.stopping):
            return None
        if self.recovery == "requeue":
            self.ws.checkpoint_path(run_id).unlink(missing_ok=True)
            forget_script_attempts(self.ws, run_id)
        how = self.next_attempt(run_id, by_user=False)
        moved = self._move(run_id, RunState.QUEUED, Cause.REQUEUED,
                           event=RunEvent(EventKind.REQUEUED.value, None, f"requeued after an interruption; {how}"))
        self.log(f"{run_id} requeued ({how})")
        return moved

    def recover(self) -> None:
        """At the engine's start: every interrupted run goes back in the queue per `recovery`."""
        for run in self.store.list_runs(RunState.INTERRUPTED, omit=("config", "history", "events")):
            self.apply(PlaceBack(run["id"]))

    # -- what people (and studies) ask -------------------------------------------------------

    def cancel(self, run_id: str, message: str, *, cause: Cause = Cause.CANCELLED) -> RunRecord:
        """Cancel a queued, interrupted (or, with no engine to stop it, running) run with `message`
        as its event: a person's cancel, a stopped study's, or a failed dependency's (Cause.DEPENDENCY).
        ValueError when its state does not allow it."""
        return self._move(run_id, RunState.CANCELLED, cause, event=RunEvent(EventKind.CANCELLED.value, None, message))

    def resume(self, run_id: str) -> tuple[RunRecord, str]:
        """Queue a failed, cancelled or interrupted run again under its own id, behind the runs
        queued at its priority; its record and how it goes on. ValueError when its state does not
        allow it (the caller checks which runs a person may resume)."""
        how = self.next_attempt(run_id, by_user=True)
        event = RunEvent(EventKind.REQUEUED.value, None, f"requeued by the user; {how}")
        # foreground=False: a `trialdeck train` run goes on in the engine.
        record = self._move(run_id, RunState.QUEUED, Cause.RESUMED, event=event, cancel_requested=False,
                            foreground=False, to_back=True)
        return record, how
