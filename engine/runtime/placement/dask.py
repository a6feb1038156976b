"""DaskPlacement: the engine places queued runs on a Dask distributed cluster.

Turned on by `cluster = "tcp://HOST:8786"` in engine.toml or `trialdeck engine
start --cluster URL`; `distributed` is imported only then. The engine stays the
one owner of the queue and the catalogue; Dask only runs tasks. Invariants:

- Places: each Dask worker offers as many places as its `GPU` resource
  (`dask worker URL --resources GPU=1`), else as its threads. The engine
  submits a run only to a free place, pinned to that worker
  (`allow_other_workers=False`), so Dask never queues or re-runs it elsewhere
  behind the engine's back: queued runs wait in the engine's queue. Places
  come and go with workers, so a pin no worker offers now waits, never fails.
- A run's task (runtime.workers.dask.run_task) streams everything back through
  one `distributed.Queue` per engine; `ClusterLink`'s thread takes it in and
  the engine's loop writes it where a local run's goes (metrics.jsonl, log.txt,
  the catalogue, checkpoint.pt), dropping what an older attempt sends. The
  run's end arrives as its runner's Ended fact, for the engine's lifecycle.
- A worker that leaves mid-run (the scheduler's `remove-worker` event, or its
  absence from the worker list): the run is Lost, requeued per `recovery`,
  resuming from the last checkpoint that came back.
- The scheduler going away: runs in flight are Lost until it is back
  (`cluster.json`, read by engine status and the TUI, says so), the link
  retries every RETRY_SECONDS, and once it is back they are requeued
  (PlaceBack). The local queue is never touched meanwhile.
- Cancel, engine stop and a pruner's verdict reach a task through its run's
  `distributed.Variable` within a TICK (runtime.workers.dask_transport).
- Nothing here blocks the engine's loop: every network call is the link
  thread's; the loop only reads the events the link queues and wakes it for.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trialdeck.engine.catalogue.reported import ReportedEpoch
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import BadInput
from trialdeck.engine.runs.facts import Crashed, Ended, EndRecorded, Lost, Place, PlaceBack, Started
from trialdeck.engine.runs.folder import CAPTURED_NAME, REPORTED_NAME
from trialdeck.engine.runs.lifecycle import Lifecycle
from trialdeck.engine.runtime.config import EngineConfig
from trialdeck.engine.runtime.placement.base import CANCEL_GRACE, CLUSTER_STATUS_NAME, BasePlacement
from trialdeck.engine.runtime.placement.capabilities import Capabilities
from trialdeck.engine.runtime.placement.dask_link import (
    RETRY_SECONDS,
    ClusterLink,
    Connected,
    ConnectionLost,
    Forget,
    SetControl,
    Submit,
    SubmitFailed,
    TaskFinished,
    TaskNewsArrived,
    WorkerRemoved,
    Workers,
    WorkersChanged,
)
from trialdeck.engine.runtime.placement.scheduler import pinned_device
from trialdeck.engine.runtime.wake import Waker
from trialdeck.engine.runtime.workers.dask_transport import APPENDED, FILES, WHOLE, script_files
from trialdeck.engine.runtime.workers.messages import (
    FilePart,
    RecordEpoch,
    StopGrace,
    StoppedBecause,
    TaskControl,
    TaskNews,
    UpdateRun,
    Verdict,
    VerdictAsked,
    from_wire,
)
from trialdeck.engine.types import EventKind, RunEvent
from trialdeck.engine.workspace import Workspace, atomic_write, make_private_dir, private_open

BEAT_SECONDS = 5.0
"""How often running tasks are told the engine lives (runtime.workers.dask_transport.ENGINE_LOST)."""
FINISH_WAIT = 5.0
"""How long a task that ended may take for its last message to arrive before the run is settled without it."""
SILENT_SECONDS = 10.0
"""A run not heard from for this long whose worker is no longer listed is taken as lost with its worker."""


def engine_tag(ws: Workspace) -> str:
    """Names this workspace's queue and variables on a cluster several engines may share; the
    same for every engine of the workspace, so a new one silences its predecessor's stale tasks."""
    return hashlib.sha1(f"{socket.gethostname()}:{ws.root}".encode()).hexdigest()[:12]


def _places(worker: dict[str, Any]) -> int:
    """Runs a worker takes at once: its GPUs when it declares them, else its threads."""
    gpus = int(worker["resources"].get("GPU", 0))
    return gpus if gpus > 0 else max(1, int(worker["nthreads"]))


def _place_name(worker: dict[str, Any], k: int) -> str:
    return worker["name"] + (f".{k}" if _places(worker) > 1 else "")


@dataclass
class RemoteRun:
    """A run the engine placed on the cluster, as the engine's loop tracks it."""

    run_id: str
    token: str
    address: str
    name: str
    place: tuple[str, int]
    control: TaskControl
    heard: float = field(default_factory=time.monotonic)
    grace: float = 0.0
    finished: float | None = None
    """When its task ended (monotonic), while its last message may still be on the way."""
    task_error: str | None = None
    parts: dict[str, list[bytes | None]] = field(default_factory=dict)
    checkpoints: int = 0
    """Checkpoints that came back during this attempt."""
    reporter: Any = None
    why: str | None = None


class DaskPlacement(BasePlacement):
    """Runs placed as tasks on a Dask cluster (see the module docstring)."""

    kind = "dask"
    cancel_grace = CANCEL_GRACE + 5.0  # a task's cancel has further to go than a local worker's

    def __init__(self, ws: Workspace, store: Store, lifecycle: Lifecycle, log: Callable[[str], None],
                 config: EngineConfig | None = None) -> None:
        super().__init__(ws, store, lifecycle, log)
        url = (config or EngineConfig()).cluster
        assert url, "DaskPlacement needs `cluster` in engine.toml (or engine start --cluster URL)"
        if importlib.util.find_spec("distributed") is None:
            raise BadInput(f"cluster = {url!r} needs Dask's distributed package on this box: "
                           "pip install 'trialdeck[cluster]'")
        self.url = url
        self.tag = engine_tag(ws)
        self.waker = Waker()
        self.link = ClusterLink(url, self.tag, self.waker.wake)
        self.state = "connecting"
        self.since = time.time()
        self.error: str | None = None
        self.workers: Workers = {}
        self.remote: dict[str, RemoteRun] = {}
        self.lost_runs: set[str] = set()
        """Runs interrupted when the scheduler went away: requeued once it is back."""
        self.beat = 0
        self._beat_at = time.monotonic()
        self._status_written: str | None = None

    # -- what it is --------------------------------------------------------------------------

    @classmethod
    def offline_capabilities(cls, ws: Workspace, config: EngineConfig) -> Capabilities:
        return Capabilities(cls.kind, frozenset({"cpu"}), (), growing=True)

    def capabilities(self) -> Capabilities:
        gpus = [int(w["resources"].get("GPU", 0)) for w in self.workers.values()]
        devices = {"cpu", *(["cuda"] if any(gpus) else []), *(f"cuda:{k}" for k in range(max(gpus, default=0)))}
        places = tuple(_place_name(w, k) for w in self.workers.values() for k in range(_places(w)))
        return Capabilities(self.kind, frozenset(devices), places, growing=True)

    def capacity(self) -> int:
        return max(1, sum(_places(w) for w in self.workers.values()))

    def training(self) -> set[str]:
        return set(self.remote)

    def stop_grace(self, run_id: str) -> float:
        rr = self.remote.get(run_id)
        return rr.grace if rr else 0.0

    def can_hear(self) -> bool:
        return self.state == "connected"

    def start(self) -> None:
        self._write_status()
        self.link.start()

    def waitables(self) -> list[Any]:
        return [self.waker.fd]

    def handle(self, ready: list[Any]) -> None:
        if self.waker.fd in ready:
            self.waker.drain()
        while self.link.events:
            self._on_event(self.link.events.popleft())
        now = time.monotonic()
        for rr in list(self.remote.values()):
            if rr.finished is not None and now - rr.finished > FINISH_WAIT:
                self._settle(rr)
            elif (self.state == "connected" and rr.address not in self.workers
                  and now - rr.heard > SILENT_SECONDS):
                self._worker_gone(rr.address)
        if now - self._beat_at >= BEAT_SECONDS:
            self._beat_at, self.beat = now, self.beat + 1
            for rr in self.remote.values():
                self._steer(rr, beat=self.beat)
        self._write_status()

    def _steer(self, rr: RemoteRun, **change: Any) -> None:
        rr.control = dataclasses.replace(rr.control, **change)
        self.link.post(SetControl(rr.run_id, rr.control))

    # -- link events -------------------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        match event:
            case Connected(workers):
                self._connected(workers)
            case ConnectionLost(why):
                self._lost(why)
            case WorkersChanged(workers):
                self._workers_changed(workers)
            case WorkerRemoved(address):
                if address:
                    self.workers.pop(address, None)
                    self._worker_gone(address)
            case TaskNewsArrived(item):
                self._on_news(item)
            case TaskFinished(run_id, token, error):
                rr = self.remote.get(run_id)
                if rr is not None and rr.token == token and rr.finished is None:
                    rr.finished, rr.task_error = time.monotonic(), error
            case SubmitFailed(run_id, token, why):
                rr = self.remote.get(run_id)
                if rr is not None and rr.token == token:
                    self._interrupt(rr, f"interrupted: it could not be placed on Dask worker {rr.name} ({why})",
                                    requeue=True)

    def _connected(self, workers: Workers) -> None:
        self.state, self.since, self.error, self.workers = "connected", time.time(), None, workers
        self.log(f"connected to the Dask scheduler at {self.url}: {len(workers)} worker(s), "
                 f"{sum(_places(w) for w in workers.values())} place(s)")
        for run_id in sorted(self.lost_runs):
            self.report(PlaceBack(run_id))
        self.lost_runs.clear()

    def _lost(self, why: str) -> None:
        was = self.state
        if was == "connected" or why != self.error:  # said once, not at every retry
            self.log(f"Dask scheduler at {self.url}: {why}; retrying every {RETRY_SECONDS:g} s")
        if was in ("connected", "connecting"):
            self.since = time.time()
            # "lost": it was there and went away; "unreachable": never reached since the engine started.
            self.state = "lost" if was == "connected" else "unreachable"
        self.error, self.workers = why, {}
        for rr in list(self.remote.values()):
            self._interrupt(rr, f"interrupted: the Dask scheduler at {self.url} went away ({why})", requeue=False)
            self.lost_runs.add(rr.run_id)

    def _workers_changed(self, workers: Workers) -> None:
        for address in sorted(set(workers) - set(self.workers)):
            w = workers[address]
            self.log(f"Dask worker {w['name']} ({address}) joined: {_describe_worker(w)}")
        left = set(self.workers) - set(workers)
        self.workers = workers
        for address in left:
            self._worker_gone(address)

    # -- what comes back ---------------------------------------------------------------------

    def _on_news(self, item: Any) -> None:
        try:
            news = from_wire(item)
        except (ValueError, TypeError) as exc:
            self.log(f"ignored an item of the cluster queue that is not a run's news: {exc}")
            return
        rr = self.remote.get(news.run_id) if isinstance(news, TaskNews) else None
        if rr is None or news.token != rr.token:
            return  # an older attempt's, or a run this engine already settled
        rr.heard = time.monotonic()
        run_dir = self.ws.run_dir(rr.run_id)
        if news.part is not None:
            self._take_part(rr, run_dir, news.part)
        for name, data in news.appended.items():
            if name in APPENDED and data:
                fd = private_open(run_dir / name)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
        for write in news.writes:
            self._apply(rr.run_id, write)
        for note in news.notes:
            match note:
                case StopGrace(_, seconds):
                    rr.grace = float(seconds)
                case StoppedBecause(_, why):
                    rr.why = why
        if news.ask is not None:
            self._verdict(rr, news.ask)
        if news.done:
            self._done(rr)

    def _take_part(self, rr: RemoteRun, run_dir: Path, part: FilePart) -> None:
        rel = part.path
        parts = Path(rel).parts
        if rel != WHOLE and not (len(parts) > 1 and parts[0] == FILES and ".." not in parts and not Path(rel).is_absolute()):
            self.log(f"{rr.run_id}: ignored a file named {rel!r} from its Dask worker")
            return
        count, index = int(part.parts), int(part.part)
        got = rr.parts.setdefault(rel, [None] * count)
        if len(got) != count or index == 0:  # a new version of the file starts over
            got = rr.parts[rel] = [None] * count
        got[index] = part.data
        if any(p is None for p in got):
            return
        del rr.parts[rel]
        target = run_dir / rel
        make_private_dir(target.parent)
        atomic_write(target, b"".join(p for p in got if p is not None))
        if rel == WHOLE:
            rr.checkpoints += 1

    def _apply(self, run_id: str, write: Any) -> None:
        """Make a catalogue write the run made on its worker (its copy of the record), or its end."""
        try:
            match write:
                case UpdateRun(fields):
                    self.store.update_run(run_id, **fields)
                case RecordEpoch(entry, events):
                    self.store.record_epoch_and_events(run_id, entry, list(events))
                case Ended():
                    self.report(write)
                case _:
                    self.log(f"{run_id}: ignored a write from its Dask worker that is not one: {write!r:.200}")
        except ValueError as exc:  # e.g. cancelled directly meanwhile: the catalogue's state stands
            self.log(f"{run_id}: {type(write).__name__} from its Dask worker not recorded: {exc}")

    def _verdict(self, rr: RemoteRun, ask: VerdictAsked) -> None:
        """A trial's epoch: the engine holds the study, so its pruner decides here."""
        verdict = None
        try:
            if rr.reporter is None:
                # Deferred: optuna loads only for an engine that runs studies.
                from trialdeck.engine.tuning.reporter import TrialReporter

                rr.reporter = TrialReporter.for_record(self.store, self.ws, self.store.get_run(rr.run_id) or {})
            stop = rr.reporter.on_epoch(ReportedEpoch(int(ask.epoch), dict(ask.record)), [])
            if stop is not None:
                event = stop.event or RunEvent(EventKind.PRUNED.value, ask.epoch, "pruned")
                verdict = Verdict(stop.state, event.to_json())
        except Exception as exc:  # noqa: BLE001 - the trial goes on unpruned; the reason goes to engine.log
            self.log(f"{rr.run_id}: its pruner failed at epoch {ask.epoch}: {type(exc).__name__}: {exc}")
        self._steer(rr, verdicts={str(ask.epoch): verdict})

    def _done(self, rr: RemoteRun) -> None:
        self._release(rr, cancel=False)
        # Its last write did not come: fail it rather than leave it running.
        if self.report(Crashed(rr.run_id, f"its Dask task on {rr.name} ended without recording a result")) is None:
            state = self.lifecycle.state_of(rr.run_id)
            self.report(EndRecorded(rr.run_id, state, where=rr.name, why=rr.why))

    def _settle(self, rr: RemoteRun) -> None:
        """Its task ended and its last message never came (the task failed, or was lost)."""
        self.log(f"{rr.run_id} task ended on {rr.name}: {rr.task_error or 'no last message'}")
        self._release(rr, cancel=False)
        why = rr.task_error or "ended without its last message"
        self.report(Crashed(rr.run_id, f"its Dask task on {rr.name} failed: {why}"))

    def _release(self, rr: RemoteRun, cancel: bool) -> None:
        self.remote.pop(rr.run_id, None)
        self.link.post(Forget(rr.run_id, cancel))

    def _interrupt(self, rr: RemoteRun, why: str, requeue: bool) -> None:
        self._release(rr, cancel=True)
        self.report(Lost(rr.run_id, why, requeue=requeue))

    def _worker_gone(self, address: str) -> None:
        for rr in [r for r in self.remote.values() if r.address == address]:
            came = (f"it resumes from the checkpoint that came back ({rr.checkpoints} this attempt)"
                    if self.ws.checkpoint_path(rr.run_id).exists() else "no checkpoint had come back; it starts over")
            self._interrupt(rr, f"interrupted: Dask worker {rr.name} ({address}) left the cluster; {came}", requeue=True)

    # -- cancel and dispatch -----------------------------------------------------------------

    def pass_cancel(self, run_id: str) -> None:
        if run_id in self.remote:
            self._steer(self.remote[run_id], stop="cancel")

    def force_cancel(self, run_id: str, waited: float) -> None:
        rr = self.remote.get(run_id)
        if rr is None:
            return
        self.cancel_overdue(run_id, f"its task on Dask worker {rr.name} did not stop and was abandoned")
        self._release(rr, cancel=True)

    def dispatch(self) -> None:
        if self.state != "connected" or self.stopping:
            return
        busy = {rr.place for rr in self.remote.values()}
        free = [(a, k) for a, w in self.workers.items() for k in range(_places(w)) if (a, k) not in busy]
        if not free:
            return
        for run in self.queued():
            place = self._pick(run, free)
            if place is None:
                continue
            if self._start(run, place):
                free.remove(place)
            if not free:
                return

    def _pick(self, run: Mapping[str, Any], free: list[tuple[str, int]]) -> tuple[str, int] | None:
        """A free place for `run`: a GPU worker's for a run pinned to CUDA, any other for the rest
        (GPU workers first), on the worker with the most free places (runs spread out)."""
        pinned = pinned_device(run)
        gpu = {a for a, w in self.workers.items() if w["resources"].get("GPU", 0) >= 1}
        fits = [p for p in free if p[0] in gpu] if pinned.startswith("cuda") else list(free)
        if not fits:
            return None
        count = collections.Counter(a for a, _ in free)
        return min(fits, key=lambda p: (p[0] not in gpu or pinned == "cpu", -count[p[0]], self.workers[p[0]]["name"], p[1]))

    def _start(self, run: Mapping[str, Any], place: tuple[str, int]) -> bool:
        address, k = place
        worker = self.workers[address]
        gpus = int(worker["resources"].get("GPU", 0))
        device = "cpu" if pinned_device(run) == "cpu" or gpus < 1 else ("cuda" if gpus == 1 else f"cuda:{k}")
        record = self.report(Started(run["id"], Place(_place_name(worker, k), device, worker["name"], address)))
        if record is None:  # cancelled between our read and this write
            return False
        token = secrets.token_hex(8)
        payload = {"run_id": run["id"], "token": token, "tag": self.tag, "device": device,
                   "record": {k: v for k, v in record.items() if k not in ("events", "history")}}
        control = TaskControl(token, beat=self.beat)
        self.remote[run["id"]] = RemoteRun(run["id"], token, address, worker["name"], place, control)
        self.link.post(Submit(run["id"], token, payload, self._blobs(run["id"]), address,
                              {"GPU": 1} if gpus >= 1 else None, control))
        self.log(f"{run['id']} -> Dask worker {worker['name']} ({address}) on {device}")
        return True

    def _blobs(self, run_id: str) -> dict[str, bytes]:
        """The files a resume needs: the checkpoint, a script's reported lines and its own files."""
        run_dir = self.ws.runs_dir / run_id
        out: dict[str, bytes] = {}
        for rel in (WHOLE, REPORTED_NAME, CAPTURED_NAME):
            with contextlib.suppress(FileNotFoundError):
                out[rel] = (run_dir / rel).read_bytes()
        for rel in script_files(run_dir):
            with contextlib.suppress(OSError):
                out[rel] = (run_dir / rel).read_bytes()
        return out

    # -- the end -----------------------------------------------------------------------------

    def interrupt_all(self) -> None:
        if self.state != "connected":
            return
        for rr in self.remote.values():
            self._steer(rr, stop="interrupt")

    def abandon(self) -> list[str]:
        left = sorted(self.remote)
        for rr in list(self.remote.values()):
            self._release(rr, cancel=True)
        self.link.close()
        with contextlib.suppress(FileNotFoundError):
            (self.ws.root / CLUSTER_STATUS_NAME).unlink()
        return left

    def _write_status(self) -> None:
        """cluster.json, for `engine status` and the TUI (control.client.read_cluster_status)."""
        runs: dict[str, list[str]] = {}
        for rr in self.remote.values():
            runs.setdefault(rr.address, []).append(rr.run_id)
        doc = {
            "url": self.url, "state": self.state, "since": round(self.since, 3), "error": self.error,
            "retry_seconds": RETRY_SECONDS, "places": sum(_places(w) for w in self.workers.values()),
            "workers": [{"address": a, **w, "places": _places(w), "runs": sorted(runs.get(a, []))}
                        for a, w in self.workers.items()],
            "interrupted": sorted(self.lost_runs),
        }
        text = json.dumps(doc, sort_keys=True)
        if text != self._status_written and not self.stopping:
            atomic_write(self.ws.root / CLUSTER_STATUS_NAME, text.encode())
            self._status_written = text

    def status_fields(self) -> dict[str, Any]:
        return {**super().status_fields(), "cluster": self.url}


def _describe_worker(w: dict[str, Any]) -> str:
    resources = ", ".join(f"{k}={v:g}" for k, v in sorted(w["resources"].items()))
    return f"{w['nthreads']} thread(s)" + (f", {resources}" if resources else "") + f"; takes {_places(w)} run(s) at once"
