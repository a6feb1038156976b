"""What runs on a Dask worker: one trialdeck run, mirrored back to the engine that placed it.

The engine (runtime.dask_backend) submits `run_task(payload, blobs)` pinned to
one Dask worker. Invariants:

- No shared filesystem: the payload carries the run's record (config,
  workdir, attempt) and `blobs` the files a resume needs (the checkpoint, a
  script's reported lines and own files), written into a run folder under the
  worker's local directory. Datasets go to the worker user's own trialdeck
  data folder ($TRIALDECK_HOME/data, else ~/.trialdeck/data).
- Same per-run code as a local worker: `runtime.worker._run_one`, with a
  `MirrorStore` (the record in memory; each write is also queued for the
  engine) and, for a trial, a callback that asks the engine's pruner.
- Warm: torch, the trainer and the dataset cache stay imported in the worker
  process between tasks (`_warm`, also run by `dask worker --preload`).
- Everything the run writes comes back while it runs, through one
  `distributed.Queue` per engine, in order, each message tagged with the run
  and its attempt `token`: the bytes appended to metrics.jsonl, log.txt and
  reported.jsonl; checkpoint.pt and files/* whole each time they change (in
  CHUNK-byte parts); then the catalogue writes. The last message says `done`.
- The engine steers through the run's `distributed.Variable` ({token, stop,
  beat, verdicts}), read every TICK seconds: `stop` cancels or interrupts; a
  token that is no longer this attempt's (the engine requeued the run) or a
  beat that stops for ENGINE_LOST seconds (the engine died), or a scheduler
  unreachable for SCHEDULER_LOST seconds, interrupts the run here: nothing
  trains on for an engine that is not listening.
"""

from __future__ import annotations

import enum
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trialdeck.engine.capture.session import CAPTURED_NAME
from trialdeck.engine.runtime.recorder import LOG_NAME, METRICS_NAME
from trialdeck.engine.runtime.script import FILES_NAME, REPORTED_NAME
from trialdeck.engine.runtime.worker import INTERRUPT, NO_STOP, _run_one
from trialdeck.engine.training.callbacks import Stop, TrainerCallback
from trialdeck.engine.types import EventKind, RunEvent, RunState
from trialdeck.engine.workspace import CHECKPOINT_NAME, Workspace, atomic_write, make_private_dir, private_open

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


def plain(value: Any) -> Any:
    """`value` as msgpack and JSON carry it (enums as values, tuples as lists, no numpy scalars)."""
    def default(obj: Any) -> Any:
        if isinstance(obj, enum.Enum):
            return obj.value
        if hasattr(obj, "to_json"):
            return obj.to_json()
        if hasattr(obj, "item"):
            return obj.item()
        return str(obj)

    return json.loads(json.dumps(value, default=default))


# ----------------------------------------------------------------------------- the worker process


_WARM: dict[str, Any] = {}


def _warm() -> dict[str, Any]:
    """Import torch and the trainer once per worker process (the warm state kept between tasks)."""
    if not _WARM:
        # Imported here: the one-time cost a warm worker pays once, not per run.
        from trialdeck.engine.presets.schema import RunSpec
        from trialdeck.engine.runtime.recorder import RunRecorder
        from trialdeck.engine.training.trainer import train

        _WARM.update(RunSpec=RunSpec, RunRecorder=RunRecorder, train=train)
    return _WARM


def _share_cores(worker: Any, client: Any) -> None:
    """Once per worker process: torch's CPU threads, this worker's share of its host's cores
    (every worker on the host, each thread of each running a run). Oversubscribed, a digits
    epoch measured 30x slower here. OMP_NUM_THREADS, when set (a nanny sets 1), stands."""
    if _WARM.get("threads") or os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    try:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        on_host = sum(int(w.get("nthreads") or 1) for w in workers if w.get("host") == worker.ip) or 1
    except Exception:  # noqa: BLE001 - without the list, assume the host is shared with one more worker
        on_host = 2 * int(getattr(worker.state, "nthreads", 1) or 1)
    _WARM["threads"] = max(1, (os.cpu_count() or 1) // on_host)
    torch.set_num_threads(_WARM["threads"])


def dask_setup(worker: Any) -> None:
    """`dask worker URL --preload trialdeck.engine.runtime.dask_worker`: warm up at the worker's
    start, so its first run does not wait for torch."""
    _warm()


@dataclass(frozen=True)
class WorkerWorkspace(Workspace):
    """Run folders under the Dask worker's local directory; datasets in the worker user's own
    trialdeck data folder, downloaded once per box."""

    data: Path = Path()

    @property
    def data_dir(self) -> Path:
        return self.data


# ----------------------------------------------------------------------------- mirrored writes


class Outbox:
    """What a run wrote since the last shipment: new bytes of its growing files, its changed
    whole files, its catalogue writes and its notes to the engine. Thread-safe."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.lock = threading.Lock()
        self.ops: list[list[Any]] = []
        self.notes: list[list[Any]] = []
        self.offsets = {name: _size(run_dir / name) for name in APPENDED}
        self.sent: dict[str, tuple[int, int, int] | None] = {}
        self.seen: dict[str, tuple[int, int, int] | None] = {}
        for path in self._whole_files():
            self.sent[path] = self.seen[path] = _signature(self.run_dir / path)

    def op(self, name: str, args: dict[str, Any]) -> None:
        with self.lock:
            self.ops.append([name, plain(args)])

    def note(self, message: tuple) -> None:
        with self.lock:
            self.notes.append(plain(list(message)))

    def _whole_files(self) -> list[str]:
        return ([WHOLE] if (self.run_dir / WHOLE).exists() else []) + script_files(self.run_dir)

    def collect(self, final: bool = False) -> list[dict[str, Any]]:
        """The messages to send now, in order: parts of whole files, then one with the rest."""
        with self.lock:
            ops, notes, self.ops, self.notes = self.ops, self.notes, [], []
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
        parts: list[dict[str, Any]] = []
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
            parts += [{"file": rel, "part": i, "parts": count, "data": data[i * CHUNK:(i + 1) * CHUNK]}
                      for i in range(count)]
        main: dict[str, Any] = {}
        if appended:
            main["append"] = appended
        if ops:
            main["ops"] = ops
        if notes:
            main["notes"] = notes
        return parts + ([main] if main else [])


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


class MirrorStore:
    """The Store calls a run makes (runtime.worker, runtime.recorder, runtime.script), on the
    run's record in memory; each write is also queued for the engine, which makes it on the
    real catalogue."""

    def __init__(self, record: dict[str, Any], outbox: Outbox) -> None:
        self.record = record
        self.outbox = outbox

    def get_run(self, run_id: str) -> dict[str, Any]:
        return json.loads(json.dumps(self.record))

    def update_run(self, run_id: str, **fields: Any) -> dict[str, Any]:
        fields = plain(fields)
        self.record.update(fields)
        self.outbox.op("update_run", {"fields": fields})
        return self.get_run(run_id)

    def record_epoch_and_events(self, run_id: str, entry: Any, events: list[Any]) -> dict[str, Any]:
        entry, events = plain(entry), plain(list(events))
        if entry is not None:
            self.record.setdefault("history", []).append(entry)
        self.record.setdefault("events", []).extend(events)
        self.outbox.op("record_epoch_and_events", {"entry": entry, "events": events})
        return self.get_run(run_id)

    def transition(self, run_id: str, new_state: Any, *, error: str | None = None, add_events: Any = None,
                   to_back: bool = False, **fields: Any) -> dict[str, Any]:
        state = RunState(new_state).value
        fields, events = plain(fields), plain(list(add_events or ()))
        self.record.update(fields, state=state)
        if error is not None:
            self.record["error"] = error
        self.record.setdefault("events", []).extend(events)
        self.outbox.op("transition", {"state": state, "error": error, "events": events, "fields": fields})
        return self.get_run(run_id)


class NoteConn:
    """The pipe a local worker answers the engine on (`memory`, `grace`), as notes in the outbox."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def send(self, message: tuple) -> None:
        self.outbox.note(message)


# ----------------------------------------------------------------------------- steering


class Flag:
    """Stands in for a local worker's shared flag: `value` is read by ControlCallback."""

    value = NO_STOP


class Pilot(threading.Thread):
    """Ships the run's news every TICK seconds and reads its control variable (see the module
    docstring); the run's flag and cancel cells follow what the engine asks."""

    def __init__(self, tag: str, token: str, run_id: str, outbox: Outbox, client: Any) -> None:
        super().__init__(name=f"trialdeck-{run_id}", daemon=True)
        from distributed import Queue, Variable  # only ever imported on a Dask worker

        self.tag, self.token, self.run_id, self.outbox, self.client = tag, token, run_id, outbox, client
        self.queue = Queue(queue_name(tag), client=client)
        self.control = Variable(control_name(tag, run_id), client=client)
        self.flag = Flag()
        self.cancels: list[int] = [0]
        self.verdicts: dict[str, Any] = {}
        self.stale = False
        """The engine no longer wants this attempt: nothing more is sent."""
        self.why: str | None = None
        self.seq = 0
        self._send_lock = threading.Lock()
        self._halt = threading.Event()
        self._beat: Any = None
        self._beat_at = time.monotonic()
        self._reached = time.monotonic()

    # -- control -----------------------------------------------------------------------------

    def read_control(self, timeout: float = 2.0) -> None:
        try:
            value = self.control.get(timeout=timeout)
        except Exception:  # noqa: BLE001 - unset (a stale attempt) or the scheduler unreachable
            value = None if self._reachable() else "unreachable"
        now = time.monotonic()
        if value == "unreachable":
            if now - self._reached > SCHEDULER_LOST:
                self._interrupt("the Dask scheduler cannot be reached")
            return
        self._reached = now
        if not isinstance(value, dict) or value.get("token") != self.token:
            self.stale = True
            self._interrupt("the engine requeued this run elsewhere")
            return
        if value.get("beat") != self._beat:
            self._beat, self._beat_at = value.get("beat"), now
        elif now - self._beat_at > ENGINE_LOST:
            self._interrupt(f"its engine has not been heard from for {ENGINE_LOST:.0f} s")
        self.verdicts = value.get("verdicts") or {}
        if value.get("stop") == "cancel":
            self.cancels[0] = int(self.run_id[1:])
        elif value.get("stop") == "interrupt":
            self.flag.value = INTERRUPT

    def _reachable(self) -> bool:
        return getattr(self.client, "status", "running") == "running"

    def _interrupt(self, why: str) -> None:
        if self.flag.value != INTERRUPT:
            self.why = why
            self.flag.value = INTERRUPT

    # -- shipping ----------------------------------------------------------------------------

    def ship(self, final: bool = False, **extra: Any) -> None:
        """Send what the run wrote since the last call (and `extra` fields) in order."""
        with self._send_lock:
            if self.stale:
                return
            messages = self.outbox.collect(final)
            if extra:
                if messages and "file" not in messages[-1]:
                    messages[-1].update(extra)
                else:
                    messages.append(dict(extra))
            for message in messages:
                self.seq += 1
                message.update(run=self.run_id, token=self.token, seq=self.seq)
                try:
                    self.queue.put(message, timeout=SCHEDULER_LOST)
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

    def verdict(self, epoch: int, record: dict[str, Any]) -> dict[str, Any] | None:
        """Ask the engine's pruner about a trial's epoch; its answer (None: go on)."""
        self.ship(ask={"epoch": epoch, "record": plain(record)})
        deadline = time.monotonic() + VERDICT_TIMEOUT
        while time.monotonic() < deadline and not self.stale and self.flag.value != INTERRUPT:
            if str(epoch) in self.verdicts:
                return self.verdicts[str(epoch)]
            time.sleep(0.02)
            self.read_control()
        return None


class PrunerVerdict(TrainerCallback):
    """A trial's `extra` callback on a Dask worker: the engine holds the study, so it decides."""

    def __init__(self, pilot: Pilot) -> None:
        self.pilot = pilot

    def on_epoch(self, record: Any, events: list[RunEvent]) -> Stop | None:
        verdict = self.pilot.verdict(record.epoch, record.to_json())
        if not verdict:
            return None
        return Stop(RunState(verdict["state"]), RunEvent(**verdict["event"]))


# ----------------------------------------------------------------------------- the task


def script_files(run_dir: Path) -> list[str]:
    """A script run's own files (FILES, dotfiles left out), as paths relative to `run_dir`."""
    out: list[str] = []
    files = run_dir / FILES
    if files.is_dir():
        for root, _, names in os.walk(files):
            out += [os.path.relpath(os.path.join(root, n), run_dir) for n in names if not n.startswith(".")]
    return out


def missing_workdir(record: dict[str, Any], where: str) -> str | None:
    """Why this run cannot train here: it needs its workdir (a script, a python model, data by a
    relative path) and this worker does not have that folder; None when it can."""
    config = record.get("config") or {}
    script = config.get("script") or {}
    model, data = config.get("model") or {}, config.get("data") or {}
    relative = isinstance(data.get("path"), str) and not os.path.isabs(data["path"])
    if not (script or model.get("kind") == "python" or relative):
        return None
    workdir = (script.get("workdir") or (model.get("path") if model.get("kind") == "python" else None)
               or record.get("workdir"))
    if workdir and Path(workdir).is_dir():
        return None
    return (f"its workdir {workdir or '(none)'} does not exist on Dask worker {where}: a script, a python model "
            "or data by a relative path needs the same folder on every worker (a shared filesystem)")


def run_task(payload: dict[str, Any], blobs: dict[str, bytes]) -> dict[str, Any]:
    """Train one run on this Dask worker; the engine learns everything through the queue."""
    from distributed import get_client, get_worker  # only ever imported on a Dask worker

    worker = get_worker()
    warm = _warm()
    _share_cores(worker, get_client())
    run_id, token, tag = payload["run_id"], payload["token"], payload["tag"]
    where = str(worker.name) if str(worker.name) != worker.address else worker.address
    home = Workspace.resolve(None)
    # One folder per attempt: a stale copy of this run (requeued meanwhile) may still be stopping here.
    ws = WorkerWorkspace(Path(worker.local_directory) / "trialdeck" / tag / token, data=home.data_dir)
    run_dir = ws.runs_dir / run_id
    make_private_dir(run_dir)
    for rel, data in (blobs or {}).items():
        target = run_dir / rel
        make_private_dir(target.parent)
        atomic_write(target, data)
    outbox = Outbox(run_dir)
    pilot = Pilot(tag, token, run_id, outbox, get_client())
    pilot.read_control()
    if pilot.stale:
        pilot.queue.close()
        shutil.rmtree(ws.root, ignore_errors=True)
        return {"state": None, "stale": True}
    record = payload["record"]
    store = MirrorStore(record, outbox)
    pilot.start()
    state = RunState.FAILED.value
    try:
        with open(private_open(run_dir / "log.txt"), "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%H:%M:%S')} on Dask worker {where} ({worker.address}), pid {os.getpid()}\n")
        why = missing_workdir(record, where)
        if why is not None:
            store.transition(run_id, RunState.FAILED, error=why,
                             add_events=[RunEvent(EventKind.FAILED.value, None, why)])
            return {"state": RunState.FAILED.value}
        extra = (lambda *_: PrunerVerdict(pilot)) if record.get("study") is not None else (lambda *_: None)
        state = _run_one(store, ws, run_id, payload["device"], pilot.flag, pilot.cancels, warm["RunSpec"],
                         warm["RunRecorder"], warm["train"], NoteConn(outbox), extra_callback=extra)
        if pilot.why and state == RunState.INTERRUPTED.value:
            outbox.note(("why", pilot.why))
        return {"state": state}
    finally:
        pilot.halt()
        pilot.ship(final=True, done={"state": store.record.get("state", state)})
        pilot.queue.close()
        shutil.rmtree(ws.root, ignore_errors=True)  # everything it wrote went back to the engine
