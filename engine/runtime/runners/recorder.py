"""RunRecorder: the trainer callback that writes a run's results where they belong.

Per-step losses and every epoch summary go at once to the run's append-only
metrics stream (runs/<id>/metrics.jsonl), which live views follow. The
catalogue gets the same summaries and events too, but coalesced: at most one
store write per `flush_seconds` (TinyDB rewrites its whole file per write, and
a digits epoch takes 10 ms), plus whatever is pending in the final state
transition, so a finished run's record always holds its whole history.
Human lines go to runs/<id>/log.txt. The final record goes through the run's
lifecycle as an Ended fact. Used by `trialdeck train` and by engine workers alike.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trialdeck.engine.catalogue.metrics import JsonlMetricsWriter
from trialdeck.engine.runs.facts import Ended
from trialdeck.engine.runs.folder import LOG_NAME, METRICS_NAME
from trialdeck.engine.runs.lifecycle import FactSink, Lifecycle
from trialdeck.engine.training.callbacks import Stop, TrainerCallback
from trialdeck.engine.types import EpochRecord, RunEvent

if TYPE_CHECKING:  # the runners' protocol; recorder is imported by runners.base's users, not by it
    from trialdeck.engine.runtime.runners.base import RunStore

__all__ = ["LOG_NAME", "METRICS_NAME", "RunRecorder"]


class RunRecorder(TrainerCallback):
    wants_steps = True

    def __init__(self, store: RunStore, run_id: str, run_dir: Path, observer: TrainerCallback | None = None,
                 flush_seconds: float = 1.0, facts: FactSink | None = None) -> None:
        self.store = store
        self.facts: FactSink = facts if facts is not None else Lifecycle(store)  # type: ignore[arg-type]
        """Where the run's end goes (default: a lifecycle over `store`, which must then be a Store)."""
        self.run_id = run_id
        self.run_dir = run_dir
        self.observer = observer
        self.flush_seconds = flush_seconds
        self.metrics = JsonlMetricsWriter(run_dir / METRICS_NAME)
        from trialdeck.engine.workspace import private_open

        self._log = open(private_open(run_dir / LOG_NAME), "a", buffering=1, encoding="utf-8")
        self._history: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._fields: dict[str, Any] = {}
        self._base: list[dict[str, Any]] | None = None
        """The history the trainer started from (a resumed checkpoint's); replaces the stored one
        at the next flush, since the catalogue may be ahead of or behind that checkpoint."""
        self._last_flush = time.monotonic()

    # -- coalesced catalogue writes ----------------------------------------------------------

    def flush(self) -> None:
        if not (self._history or self._events or self._fields):
            return
        fields = dict(self._fields)
        if self._base is not None:
            fields["history"] = self._base + self._history
            self._base = None
        elif self._history:
            record = self.store.get_run(self.run_id) or {}
            fields["history"] = list(record.get("history") or []) + self._history
        if fields:
            self.store.update_run(self.run_id, **fields)
        if self._events:
            self.store.record_epoch_and_events(self.run_id, None, self._events)
        self._fields, self._history, self._events = {}, [], []
        self._last_flush = time.monotonic()

    def pending(self) -> dict[str, Any]:
        """What the final transition must carry: unflushed fields, epochs and events."""
        out = {"fields": dict(self._fields), "history": list(self._history), "events": list(self._events)}
        self._fields, self._history, self._events = {}, [], []
        return out

    def finish(self, result: Any, **fields: Any) -> Mapping[str, Any]:
        """Record the run's final state with everything still pending, in one write (a TrainResult,
        or a script's result); the record after it (the catalogue's, when its state no longer
        allowed this end: cancelled directly meanwhile, say)."""
        pending = self.pending()
        # The trainer's history is complete (a resumed run's includes the checkpoint's epochs).
        history = [h.to_json() for h in result.history]
        values = {**pending["fields"], "history": history, "device": result.device, "summary": result.summary(),
                  "kept_epoch": result.kept_epoch, **fields}
        record = self.facts.apply(Ended(self.run_id, result.state, result.error, tuple(pending["events"]), values))
        return record if record is not None else self.store.get_run(self.run_id) or {}

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def tick(self) -> None:
        """For a caller that polls (a script run): pending epochs reach the catalogue once due, even
        when no later epoch comes to carry them (a program that went quiet)."""
        self._maybe_flush()

    # -- TrainerCallback ---------------------------------------------------------------------

    def close(self) -> None:
        self.metrics.close()
        self._log.close()

    def on_start(self, info: dict) -> None:
        self._fields.update(device=info["device"], n_params=info["params"])
        # Which data path the run took and which code its model came from (DESIGN: what the engine records).
        self._fields.update({k: info[k] for k in ("data_path", "code_hash") if info.get(k)})
        self._base = list(info.get("history") or [])
        self._history = []
        self.metrics.write({"t": time.time(), "kind": "start", **{k: v for k, v in info.items() if k != "history"}})
        if self.observer:
            self.observer.on_start(info)

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        self.metrics.write({"t": time.time(), "epoch": epoch, "step": step, "loss": loss})
        if self.observer:
            self.observer.on_step(epoch, step, loss)

    def on_epoch(self, record: EpochRecord, events: list[RunEvent]) -> Stop | None:
        entry = record.to_json()
        self.metrics.write({"t": time.time(), "kind": "epoch", **entry})
        self._history.append(entry)
        for e in events:
            self._events.append(e.to_json())
            self.metrics.write({"t": e.time, "kind": "event", "event": e.to_json()})
            self.log(_event_line(e))
        self._maybe_flush()
        if self.observer:
            return self.observer.on_epoch(record, events)
        return None

    def on_event(self, event: RunEvent) -> None:
        self._events.append(event.to_json())
        self.metrics.write({"t": event.time, "kind": "event", "event": event.to_json()})
        self.log(_event_line(event))
        if self.observer:
            self.observer.on_event(event)

    def poll(self) -> Stop | None:
        return self.observer.poll() if self.observer else None

    def log(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        for part in line.rstrip("\n").splitlines():
            self._log.write(f"{stamp} {part}\n")
        if self.observer:
            self.observer.log(line)


def _event_line(event: RunEvent) -> str:
    """An event as a log line: "[epoch 4] early_stopped: ...", or without the epoch when it has none."""
    return f"{'' if event.epoch is None else f'[epoch {event.epoch}] '}{event.kind}: {event.message}"

