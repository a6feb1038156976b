"""What the TUI asks of the engine: queue, cancel, requeue, reorder, start a study. No Textual here.

One job: the TUI's writes, through the engine's public API only (Store and
trialdeck.engine.runtime.control.client), with the same rules as the CLI (`run`, `queue cancel|move|clear`):
a running run is cancelled by setting `cancel_requested` and waking the
engine; with no engine alive it is marked cancelled directly. These run in
thread workers: `ensure_engine` may take seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import BadInput
from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.runtime.control import actions as control
from trialdeck.engine.types import RunRecord
from trialdeck.engine.workspace import Workspace
from trialdeck.tui.composition import Composition, PresetLibrary

MAX_REPEAT = control.REPEAT_LIMIT


@dataclass(frozen=True)
class QueueRequest:
    """What the queue dialog returns: a composition, how many copies, at what priority."""

    composition: Composition
    repeat: int = 1
    priority: int = 0


def specs_for(library: PresetLibrary, request: QueueRequest) -> list[RunSpec]:
    """One spec per copy; copies after the first get seed + k (as `trialdeck run --repeat`)."""
    control.check_repeat(request.repeat)
    first = library.resolve(request.composition)
    if request.repeat == 1:
        return [first]
    comp = request.composition
    return [library.resolve(Composition(comp.parents, (*comp.sets, f"train.seed={first.train.seed + k}"), comp.name))
            for k in range(request.repeat)]


class Control:
    """The engine-facing operations of one TUI session.

    `start_engine=False` never starts an engine (tests, or a read-only
    session): runs are queued in the store, and a live engine is still woken.
    """

    def __init__(self, ws: Workspace, store: Store, *, start_engine: bool = True,
                 ensure: Callable[[Workspace], Any] | None = None, wake: Callable[[Workspace], bool] | None = None) -> None:
        self.ws = ws
        self.store = store
        self.start_engine = start_engine
        if ensure is None or wake is None:
            from trialdeck.engine.runtime.control.client import ensure_engine, notify

            ensure = ensure or ensure_engine
            wake = wake or notify
        self._ensure = ensure
        self._wake = wake

    def _kick(self) -> None:
        if self.start_engine:
            self._ensure(self.ws)
        self._wake(self.ws)

    def enqueue(self, specs: Sequence[RunSpec], priority: int = 0) -> list[RunRecord]:
        records = control.enqueue(self.store, specs, priority=priority)
        self._kick()
        return records

    def cancel(self, run_id: str) -> str:
        """Cancel a queued, running or interrupted run; returns what happened, in words."""
        record, how = control.cancel(self.store, run_id, lambda: self._wake(self.ws))
        return f"{record['id']} {how}"

    def requeue(self, run_id: str, sets: Sequence[str] = ()) -> RunRecord:
        """A new queued run with the same resolved config, changed by `sets` (`--set` items)
        if any (the old record stays as it is)."""
        [new] = control.rerun(self.store, [run_id], sets=sets)
        self._kick()
        return new

    def start_study(self, spec: RunSpec) -> control.StudyStart:
        """Start or resume the preset's study as `trialdeck tune PRESET` does (the same function)."""
        return control.start_study(self.store, spec, engine=self._kick)

    def save_trial(self, study: str, number: int, name: str) -> tuple[Any, ...]:
        """Save trial `number` of `study` as preset NAME (refused if it exists); (path, spec, trial)."""
        from trialdeck.engine.tuning.results import save_trial_preset

        return save_trial_preset(self.store, self.ws.presets_dir, study, name, number=number)

    def resume(self, run_id: str) -> str:
        """Queue a failed, cancelled or interrupted run again from its checkpoint; says how, in words."""
        record, how = control.resume(self.store, run_id)
        self._kick()
        return f"{record['id']} queued; it {how}"

    def move(self, run_id: str, where: str) -> dict[str, int]:
        """Move a queued run to the top, or one place up or down; returns the priorities changed."""
        queue = self.store.queued()
        if where == "top":
            record = self.store.move_top(run_id)
            return {run_id: int(record["priority"])}
        changes = reorder(queue, run_id, where)
        for rid, priority in changes.items():
            self.store.set_priority(rid, priority)
        if changes:
            self._wake(self.ws)
        return changes

    def set_priority(self, run_id: str, priority: int) -> RunRecord:
        record = self.store.set_priority(run_id, priority)
        self._wake(self.ws)
        return record

    def clear(self) -> int:
        return self.store.clear_queue()


def _before(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """(priority, seq) a is dispatched before b."""
    return a[0] > b[0] or (a[0] == b[0] and a[1] < b[1])


def reorder(queue: Sequence[Mapping[str, Any]], run_id: str, where: str) -> dict[str, int]:
    """New priorities that move `run_id` one place "up" or "down" in dispatch order.

    The store dispatches by (priority descending, enqueue order) and only
    priorities can change. Either raise runs from the bottom up just enough to
    stay ahead of the next one, or lower them from the top down just enough to
    stay behind the previous one; whichever changes fewer runs (usually one or
    two). Pure: tested without a store.
    """
    if where not in ("up", "down"):
        raise BadInput(f"move {where!r}: allowed: top, up, down")
    order = [dict(r) for r in queue]
    ids = [r["id"] for r in order]
    if run_id not in ids:
        raise BadInput(f"{run_id} is not queued; only queued runs can be moved")
    i = ids.index(run_id)
    j = i - 1 if where == "up" else i + 1
    if not 0 <= j < len(order):
        return {}
    order[i], order[j] = order[j], order[i]
    original = [(int(r.get("priority", 0)), int(r.get("seq", 0))) for r in order]

    raised = list(original)
    for k in range(len(raised) - 2, -1, -1):
        if not _before(raised[k], raised[k + 1]):
            p, seq = raised[k + 1]
            raised[k] = (p if raised[k][1] < seq else p + 1, raised[k][1])
    lowered = list(original)
    for k in range(1, len(lowered)):
        if not _before(lowered[k - 1], lowered[k]):
            p, seq = lowered[k - 1]
            lowered[k] = (p if lowered[k][1] > seq else p - 1, lowered[k][1])

    def changes(keys: list[tuple[int, int]]) -> dict[str, int]:
        return {r["id"]: p for r, (p, _), (old, _) in zip(order, keys, original) if p != old}

    up, down = changes(raised), changes(lowered)
    return up if len(up) <= len(down) else down
