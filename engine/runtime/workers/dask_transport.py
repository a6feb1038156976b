"""How a run on a Dask worker talks to the engine that placed it: its news out, the engine's control in.

One job: the transport of runtime.workers.dask's task. Invariants:

- Everything the run writes comes back while it runs, through one
  `distributed.Queue` per engine, in order, each item a TaskNews
  (runtime.workers.messages) tagged with the run and its attempt `token`:
  the bytes appended to metrics.jsonl, log.txt and reported.jsonl;
  checkpoint.pt and files/* whole each time they change (in CHUNK-byte
  parts); its catalogue writes and its Ended fact, in the order made. The
  last item says `done`.
- The runner sees the catalogue through MirrorStore (the record in memory, each
  write also queued for the engine) and ends through RemoteFacts (its Ended
  fact goes to the engine's lifecycle, which makes the change).
- The engine steers through the run's `distributed.Variable` (a TaskControl),
  read every TICK seconds by TaskSteering, the run's stop signal: `stop`
  cancels or interrupts; a token that is no longer this attempt's (the engine
  requeued the run), a beat that stops for ENGINE_LOST seconds (the engine
  died), or a scheduler unreachable for SCHEDULER_LOST seconds interrupts the
  run here: nothing trains on for an engine that is not listening.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from trialdeck.engine.runs.facts import Ended, Fact
from trialdeck.engine.runs.folder import CAPTURED_NAME, FILES_NAME, LOG_NAME, METRICS_NAME, REPORTED_NAME
from trialdeck.engine.runtime.runners.base import StopRequest
from trialdeck.engine.runtime.workers.messages import (
    FilePart,
    RecordEpoch,
    TaskControl,
    TaskNews,
    UpdateRun,
    VerdictAsked,
    WorkerNews,
    from_wire,
    to_wire,
)
from trialdeck.engine.training.callbacks import Stop, TrainerCallback
from trialdeck.engine.types import EpochRecord, RunEvent, RunRecord
from trialdeck.engine.workspace import CHECKPOINT_NAME

TICK = 0.2
"""Seconds between two shipments of a run's news, and two reads of its control variable."""
CHUNK = 4 << 20
"""Whole files travel in parts of at most this many bytes (each a queue item through the scheduler)."""
APPENDED = (METRICS_NAME, LOG_NAME, REPORTED_NAME, CAPTURED_NAME)
"""Files of a run folder that only grow: their new bytes are sent."""
WHOLE = CHECKPOINT_NAME
FILES = FILES_NAME
"""A script run's own folder (TRIALDECK_RUN_DIR): each file is sent whole when it changed and settled."""
ENGINE_LOST = 60.0
"""Seconds without a beat from the engine after which a run stops here (checkpoint kept)."""
SCHEDULER_LOST = 10.0
"""Seconds the scheduler may be unreachable before a run stops here."""
VERDICT_TIMEOUT = 60.0
"""Longest a trial waits for the engine's pruner after an epoch before it goes on unpruned."""


def queue_name(tag: str) -> str:
    return f"trialdeck-{tag}"


def control_name(tag: str, run_id: str) -> str:
    return f"trialdeck-{tag}-{run_id}"


def script_files(run_dir: Path) -> list[str]:
    """A script run's own files (FILES, dotfiles left out), as paths relative to `run_dir`."""
    out: list[str] = []
    files = run_dir / FILES
    if files.is_dir():
        for root, _, names in os.walk(files):
            out += [os.path.relpath(os.path.join(root, n), run_dir) for n in names if not n.startswith(".")]
    return out


# ----------------------------------------------------------------------------- what goes out


class Outbox:
    """What a run wrote since the last shipment: new bytes of its growing files, its changed
    whole files, its catalogue writes and facts, its notes to the engine. Thread-safe."""

    def __init__(self, run_id: str, token: str, run_dir: Path) -> None:
        self.run_id, self.token, self.run_dir = run_id, token, run_dir
        self.lock = threading.Lock()
        self.writes: list[UpdateRun | RecordEpoch | Ended] = []
        self.notes: list[WorkerNews] = []
        self.offsets = {name: _size(run_dir / name) for name in APPENDED}
        self.sent: dict[str, tuple[int, int, int] | None] = {}
        self.seen: dict[str, tuple[int, int, int] | None] = {}
        for path in self._whole_files():
            self.sent[path] = self.seen[path] = _signature(self.run_dir / path)

    def write(self, write: UpdateRun | RecordEpoch | Ended) -> None:
        with self.lock:
            self.writes.append(write)

    def note(self, message: WorkerNews) -> None:
        with self.lock:
            self.notes.append(message)

    def _whole_files(self) -> list[str]:
        return ([WHOLE] if (self.run_dir / WHOLE).exists() else []) + script_files(self.run_dir)

    def _appended(self) -> dict[str, bytes]:
        appended: dict[str, bytes] = {}
        for name in APPENDED:
            path = self.run_dir / name
            size = _size(path)
            if size > self.offsets[name]:
                with open(path, "rb") as f:
                    f.seek(self.offsets[name])
                    data = f.read(size - self.offsets[name])
                self.offsets[name] += len(data)
                appended[name] = data
        return appended

    def _parts(self, final: bool) -> list[FilePart]:
        parts: list[FilePart] = []
        for rel in self._whole_files():
            sig = _signature(self.run_dir / rel)
            if sig is None or sig == self.sent.get(rel):
                continue
            # checkpoint.pt is replaced atomically; a script's own file is sent once it settled
            # (unchanged over one tick), so a file being written is not sent half-way.
            settled = rel == WHOLE or final or self.seen.get(rel) == sig
            self.seen[rel] = sig
            if not settled:
                continue
            try:
                data = (self.run_dir / rel).read_bytes()
            except OSError:
                continue
            self.sent[rel] = sig
            count = max(1, -(-len(data) // CHUNK))
            parts += [FilePart(rel, i, count, data[i * CHUNK:(i + 1) * CHUNK]) for i in range(count)]
        return parts

    def collect(self, final: bool = False, ask: VerdictAsked | None = None, done: bool = False) -> list[TaskNews]:
        """The news to send now, in order: parts of whole files, then one item with the rest."""
        with self.lock:
            writes, notes, self.writes, self.notes = self.writes, self.notes, [], []
        appended = self._appended()
        news = [TaskNews(self.run_id, self.token, part=part) for part in self._parts(final)]
        if appended or writes or notes or ask is not None or done:
            news.append(TaskNews(self.run_id, self.token, appended=appended, writes=tuple(writes), notes=tuple(notes),
                                 ask=ask, done=done))
        return news


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _copy(value: Any) -> Any:
    """A JSON-plain copy (the record as the catalogue would hand it out)."""
    return json.loads(json.dumps(to_wire(value)))


class MirrorStore:
    """The catalogue calls a run makes while it trains (runners.base.RunStore), on the run's record
    in memory; each write is also queued for the engine, which makes it on the real catalogue."""

    def __init__(self, record: dict[str, Any], outbox: Outbox) -> None:
        self.record = record
        self.outbox = outbox

    def get_run(self, run_id: str) -> dict[str, Any]:
        return _copy(self.record)

    def update_run(self, run_id: str, **fields: Any) -> dict[str, Any]:
        fields = _copy(fields)
        self.record.update(fields)
        self.outbox.write(UpdateRun(fields))
        return self.get_run(run_id)

    def record_epoch_and_events(self, run_id: str, entry: Any, events: Sequence[Any]) -> dict[str, Any]:
        entry, plain_events = _copy(entry), _copy(list(events))
        if entry is not None:
            self.record.setdefault("history", []).append(entry)
        self.record.setdefault("events", []).extend(plain_events)
        self.outbox.write(RecordEpoch(entry, tuple(plain_events)))
        return self.get_run(run_id)


class RemoteFacts:
    """A run's facts on a Dask worker (lifecycle.FactSink): the record in memory follows the end the
    runner reports, and the fact goes to the engine's lifecycle, which makes the change there."""

    def __init__(self, mirror: MirrorStore) -> None:
        self.mirror = mirror

    def apply(self, fact: Fact) -> RunRecord | None:
        if isinstance(fact, Ended):
            fact = Ended(fact.run_id, fact.state, fact.reason, tuple(_copy(list(fact.events))), _copy(dict(fact.fields)))
            record = self.mirror.record
            record.update(fact.fields, state=fact.state.value)
            if fact.reason is not None:
                record["error"] = fact.reason
            record.setdefault("events", []).extend(fact.events)
            self.mirror.outbox.write(fact)
        return cast(RunRecord, self.mirror.get_run(fact.run_id))


class OutboxChannel:
    """A run's news for the engine (messages.Channel), as notes in the outbox."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def send(self, message: WorkerNews) -> None:
        self.outbox.note(message)


# ----------------------------------------------------------------------------- what comes in


class TaskSteering(threading.Thread):
    """Ships the run's news every TICK seconds and reads its control variable (see the module
    docstring); the run's stop signal follows what the engine asks."""

    def __init__(self, tag: str, token: str, run_id: str, outbox: Outbox, client: Any) -> None:
        super().__init__(name=f"trialdeck-{run_id}", daemon=True)
        from distributed import Queue, Variable  # only ever imported on a Dask worker

        self.tag, self.token, self.run_id, self.outbox, self.client = tag, token, run_id, outbox, client
        self.queue = Queue(queue_name(tag), client=client)
        self.control = Variable(control_name(tag, run_id), client=client)
        self.cancelled = False
        self.interrupted = False
        self.verdicts: Mapping[str, Any] = {}
        self.stale = False
        """The engine no longer wants this attempt: nothing more is sent."""
        self.why: str | None = None
        self.seq = 0
        self._send_lock = threading.Lock()
        self._halt = threading.Event()
        self._beat: Any = None
        self._beat_at = time.monotonic()
        self._reached = time.monotonic()

    def requested(self, run_id: str) -> StopRequest | None:
        """The run's stop signal (runners.base.StopSignal)."""
        if self.cancelled:
            return "cancel"
        return "interrupt" if self.interrupted else None

    # -- control -----------------------------------------------------------------------------

    def read_control(self, timeout: float = 2.0) -> None:
        try:
            value = from_wire(self.control.get(timeout=timeout))
        except Exception:  # noqa: BLE001 - unset (a stale attempt) or the scheduler unreachable
            value = None if self._reachable() else "unreachable"
        now = time.monotonic()
        if value == "unreachable":
            if now - self._reached > SCHEDULER_LOST:
                self._interrupt("the Dask scheduler cannot be reached")
            return
        self._reached = now
        if not isinstance(value, TaskControl) or value.token != self.token:
            self.stale = True
            self._interrupt("the engine requeued this run elsewhere")
            return
        if value.beat != self._beat:
            self._beat, self._beat_at = value.beat, now
        elif now - self._beat_at > ENGINE_LOST:
            self._interrupt(f"its engine has not been heard from for {ENGINE_LOST:.0f} s")
        self.verdicts = value.verdicts
        match value.stop:
            case "cancel":
                self.cancelled = True
            case "interrupt":
                self.interrupted = True

    def _reachable(self) -> bool:
        return getattr(self.client, "status", "running") == "running"

    def _interrupt(self, why: str) -> None:
        if not self.interrupted:
            self.why = why
            self.interrupted = True

    # -- shipping ----------------------------------------------------------------------------

    def ship(self, final: bool = False, ask: VerdictAsked | None = None, done: bool = False) -> None:
        """Send what the run wrote since the last call (and `ask`, `done`) in order."""
        with self._send_lock:
            if self.stale:
                return
            for news in self.outbox.collect(final, ask, done):
                self.seq += 1
                try:
                    self.queue.put(to_wire(dataclasses.replace(news, seq=self.seq)), timeout=SCHEDULER_LOST)
                    self._reached = time.monotonic()
                except Exception:  # noqa: BLE001 - the scheduler is gone: the engine resumes from what it has
                    if time.monotonic() - self._reached > SCHEDULER_LOST:
                        self._interrupt("the Dask scheduler cannot be reached")
                    return

    def run(self) -> None:
        while not self._halt.wait(TICK):
            self.read_control()
            self.ship()

    def halt(self) -> None:
        self._halt.set()
        self.join(10)

    def verdict(self, epoch: int, record: Mapping[str, Any]) -> Any:
        """Ask the engine's pruner about a trial's epoch; its answer (a Verdict, or None: go on)."""
        self.ship(ask=VerdictAsked(epoch, dict(record)))
        deadline = time.monotonic() + VERDICT_TIMEOUT
        while time.monotonic() < deadline and not self.stale and not self.interrupted:
            if str(epoch) in self.verdicts:
                return self.verdicts[str(epoch)]
            time.sleep(0.02)
            self.read_control()
        return None


class PrunerVerdict(TrainerCallback):
    """A trial's extra callback on a Dask worker: the engine holds the study, so it decides."""

    def __init__(self, steering: TaskSteering) -> None:
        self.steering = steering

    def on_epoch(self, record: EpochRecord, events: list[RunEvent]) -> Stop | None:
        verdict = self.steering.verdict(record.epoch, record.to_json())
        if not verdict:
            return None
        return Stop(verdict.state, RunEvent(**verdict.event))
