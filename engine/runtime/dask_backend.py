"""DaskPlacement: the engine places queued runs on a Dask distributed cluster.

Turned on by `cluster = "tcp://HOST:8786"` in engine.toml or `trialdeck engine
start --cluster URL`; `distributed` is imported only then. The engine stays the
one owner of the queue and the catalogue; Dask only runs tasks. Invariants:

- Places: each Dask worker offers as many places as its `GPU` resource
  (`dask worker URL --resources GPU=1`), else as its threads. The engine
  submits a run only to a free place, pinned to that worker
  (`allow_other_workers=False`), so Dask never queues or re-runs it elsewhere
  behind the engine's back: queued runs wait in the engine's queue.
- A run's task (runtime.dask_worker.run_task) streams everything back through
  one `distributed.Queue` per engine; `ClusterLink`'s thread takes it in and
  the engine's loop writes it where a local run's goes (metrics.jsonl, log.txt,
  the catalogue, checkpoint.pt), dropping what an older attempt sends.
- A worker that leaves mid-run (the scheduler's `remove-worker` event, or its
  absence from the worker list): the run becomes interrupted and is requeued
  per `recovery`, resuming from the last checkpoint that came back.
- The scheduler going away: runs in flight become interrupted, `cluster.json`
  (engine status, the TUI) says so, the link retries every RETRY_SECONDS, and
  the interrupted runs are requeued once it is back. The local queue is never
  touched meanwhile.
- Cancel, engine stop and a pruner's verdict reach a task through its run's
  `distributed.Variable` within a TICK (runtime.dask_worker).
- Nothing here blocks the engine's loop: every network call is the link
  thread's; the loop only reads the events the link queues and wakes it for.
"""

from __future__ import annotations

import collections
import contextlib
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

from trialdeck.engine.capture.session import CAPTURED_NAME
from trialdeck.engine.catalogue.reported import ReportedEpoch
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import BadInput
from trialdeck.engine.runtime.dask_link import RETRY_SECONDS, ClusterLink
from trialdeck.engine.runtime.dask_worker import APPENDED, FILES, WHOLE, script_files
from trialdeck.engine.runtime.placement import CANCEL_GRACE, CLUSTER_STATUS_NAME, STOP_GRACE, BasePlacement
from trialdeck.engine.runtime.scheduler import pinned_device
from trialdeck.engine.runtime.script import REPORTED_NAME
from trialdeck.engine.types import EventKind, RunEvent, RunState
from trialdeck.engine.workspace import Workspace, atomic_write, make_private_dir, private_open

BEAT_SECONDS = 5.0
"""How often running tasks are told the engine lives (runtime.dask_worker.ENGINE_LOST)."""
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


# ----------------------------------------------------------------------------- the engine's side


@dataclass
class RemoteRun:
    """A run the engine placed on the cluster, as the engine's loop tracks it."""

    run_id: str
    token: str
    address: str
    name: str
    place: tuple[str, int]
    control: dict[str, Any]
    heard: float = field(default_factory=time.monotonic)
    cancel_sent: float | None = None
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

    def __init__(self, ws: Workspace, store: Store, log: Callable[[str], None], ended: Callable[[str, str], None],
                 *, url: str, requeue: Callable[[Mapping[str, Any]], None]) -> None:
        super().__init__(ws, store, log, ended)
        if importlib.util.find_spec("distributed") is None:
            raise BadInput(f"cluster = {url!r} needs Dask's distributed package on this box: "
                           "pip install 'trialdeck[cluster]'")
        self.url, self.requeue = url, requeue
        self.tag = engine_tag(ws)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.link = ClusterLink(url, self.tag, self._wake)
        self.state = "connecting"
        self.since = time.time()
        self.error: str | None = None
        self.workers: dict[str, dict[str, Any]] = {}
        self.remote: dict[str, RemoteRun] = {}
        self.lost_runs: set[str] = set()
        """Runs interrupted when the scheduler went away: requeued once it is back."""
        self.beat = 0
        self._beat_at = time.monotonic()
        self._status_written: str | None = None

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # a full buffer already wakes the loop
            self._wake_w.send(b"x")

    # -- the interface -----------------------------------------------------------------------

    def start(self) -> None:
        self._write_status()
        self.link.start()

    def slot_names(self) -> list[str]:
        return []

    def capacity(self) -> int:
        return max(1, sum(_places(w) for w in self.workers.values()))

    def waitables(self) -> list[Any]:
        return [self._wake_r]

    def handle(self, ready: list[Any]) -> None:
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while self._wake_r.recv(4096):
                    pass
        while self.link.events:
            event = self.link.events.popleft()
            getattr(self, f"_on_{event[0]}")(*event[1:])
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
                rr.control["beat"] = self.beat
                self.link.post("control", rr.run_id, dict(rr.control))
        self._write_status()

    # -- link events -------------------------------------------------------------------------

    def _on_connected(self, workers: dict[str, dict[str, Any]]) -> None:
        self.state, self.since, self.error, self.workers = "connected", time.time(), None, workers
        self.log(f"connected to the Dask scheduler at {self.url}: {len(workers)} worker(s), "
                 f"{sum(_places(w) for w in workers.values())} place(s)")
        for run_id in sorted(self.lost_runs):
            record = self.store.get_run(run_id)
            if record and record["state"] == RunState.INTERRUPTED.value and not self.stopping:
                self.requeue(record)
        self.lost_runs.clear()

    def _on_lost(self, why: str) -> None:
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

    def _on_workers(self, workers: dict[str, dict[str, Any]]) -> None:
        joined = sorted(set(workers) - set(self.workers))
        for address in joined:
            w = workers[address]
            self.log(f"Dask worker {w['name']} ({address}) joined: {_describe_worker(w)}")
        left = set(self.workers) - set(workers)
        self.workers = workers
        for address in left:
            self._worker_gone(address)

    def _on_removed(self, address: str | None) -> None:
        if address:
            self.workers.pop(address, None)
            self._worker_gone(address)

    def _on_message(self, msg: dict[str, Any]) -> None:
        rr = self.remote.get(str(msg.get("run")))
        if rr is None or msg.get("token") != rr.token:
            return  # an older attempt's, or a run this engine already settled
        rr.heard = time.monotonic()
        run_dir = self.ws.run_dir(rr.run_id)
        if "file" in msg:
            self._take_part(rr, run_dir, msg)
        for name, data in (msg.get("append") or {}).items():
            if name in APPENDED and data:
                fd = private_open(run_dir / name)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
        for op, args in msg.get("ops") or ():
            self._apply(rr.run_id, op, args)
        for note in msg.get("notes") or ():
            if note[0] == "grace":
                rr.grace = float(note[2])
            elif note[0] == "why":
                rr.why = str(note[1])
        if "ask" in msg:
            self._verdict(rr, msg["ask"])
        if "done" in msg:
            self._done(rr)

    def _on_finished(self, run_id: str, token: str, error: str | None, result: Any) -> None:
        rr = self.remote.get(run_id)
        if rr is not None and rr.token == token and rr.finished is None:
            rr.finished, rr.task_error = time.monotonic(), error

    def _on_submit_failed(self, run_id: str, token: str, why: str) -> None:
        rr = self.remote.get(run_id)
        if rr is not None and rr.token == token:
            self._interrupt(rr, f"interrupted: it could not be placed on Dask worker {rr.name} ({why})",
                            requeue=not self.stopping)

    # -- what comes back ---------------------------------------------------------------------

    def _take_part(self, rr: RemoteRun, run_dir: Path, msg: dict[str, Any]) -> None:
        rel = str(msg["file"])
        parts = Path(rel).parts
        if rel != WHOLE and not (len(parts) > 1 and parts[0] == FILES and ".." not in parts and not Path(rel).is_absolute()):
            self.log(f"{rr.run_id}: ignored a file named {rel!r} from its Dask worker")
            return
        count, index = int(msg["parts"]), int(msg["part"])
        got = rr.parts.setdefault(rel, [None] * count)
        if len(got) != count or index == 0:  # a new version of the file starts over
            got = rr.parts[rel] = [None] * count
        got[index] = msg["data"]
        if any(p is None for p in got):
            return
        del rr.parts[rel]
        target = run_dir / rel
        make_private_dir(target.parent)
        atomic_write(target, b"".join(p for p in got if p is not None))
        if rel == WHOLE:
            rr.checkpoints += 1

    def _apply(self, run_id: str, op: str, args: dict[str, Any]) -> None:
        """Make a catalogue write the run made on its worker (runtime.dask_worker.MirrorStore)."""
        try:
            if op == "update_run":
                self.store.update_run(run_id, **args["fields"])
            elif op == "record_epoch_and_events":
                self.store.record_epoch_and_events(run_id, args["entry"], args["events"])
            elif op == "transition":
                self.store.transition(run_id, args["state"], error=args.get("error"), add_events=args.get("events"),
                                      **args.get("fields", {}))
        except ValueError as exc:  # e.g. cancelled directly meanwhile: the catalogue's state stands
            self.log(f"{run_id}: {op} from its Dask worker not recorded: {exc}")

    def _verdict(self, rr: RemoteRun, ask: dict[str, Any]) -> None:
        """A trial's epoch: the engine holds the study, so its pruner decides here."""
        epoch = int(ask["epoch"])
        verdict = None
        try:
            if rr.reporter is None:
                # Deferred: optuna loads only for an engine that runs studies.
                from trialdeck.engine.tuning.reporter import TrialReporter

                rr.reporter = TrialReporter.for_record(self.store, self.ws, self.store.get_run(rr.run_id) or {})
            stop = rr.reporter.on_epoch(ReportedEpoch(int(epoch), ask.get("record") or {}), [])
            if stop is not None:
                event = stop.event or RunEvent(EventKind.PRUNED.value, epoch, "pruned")
                verdict = {"state": stop.state.value, "event": event.to_json()}
        except Exception as exc:  # noqa: BLE001 - the trial goes on unpruned; the reason goes to engine.log
            self.log(f"{rr.run_id}: its pruner failed at epoch {epoch}: {type(exc).__name__}: {exc}")
        rr.control["verdicts"] = {str(epoch): verdict}
        self.link.post("control", rr.run_id, dict(rr.control))

    def _done(self, rr: RemoteRun) -> None:
        record: Mapping[str, Any] = self.store.get_run(rr.run_id) or {}
        state = record.get("state")
        if state == RunState.RUNNING.value:  # its last write did not come: fail it rather than leave it running
            self._fail(rr.run_id, f"its Dask task on {rr.name} ended without recording a result")
            state = RunState.FAILED.value
        self.log(f"{rr.run_id} {state} on {rr.name}" + (f" ({rr.why})" if rr.why else ""))
        self._release(rr, cancel=False)
        self.ended(rr.run_id, str(state))
        if state == RunState.INTERRUPTED.value and not self.stopping:
            self.requeue(record)  # it stopped itself (its scheduler or engine seemed gone): not lost work

    def _settle(self, rr: RemoteRun) -> None:
        """Its task ended and its last message never came (the task failed, or was lost)."""
        record: Mapping[str, Any] = self.store.get_run(rr.run_id) or {}
        if record.get("state") == RunState.RUNNING.value:
            why = rr.task_error or "ended without its last message"
            self._fail(rr.run_id, f"its Dask task on {rr.name} failed: {why}")
        self.log(f"{rr.run_id} task ended on {rr.name}: {rr.task_error or 'no last message'}")
        self._release(rr, cancel=False)
        final: Mapping[str, Any] = self.store.get_run(rr.run_id) or {}
        self.ended(rr.run_id, str(final.get("state", RunState.FAILED.value)))

    def _fail(self, run_id: str, reason: str) -> None:
        with contextlib.suppress(ValueError):
            self.store.transition(run_id, RunState.FAILED, error=reason,
                                  add_events=[RunEvent(EventKind.FAILED.value, None, reason)])

    def _release(self, rr: RemoteRun, cancel: bool) -> None:
        self.remote.pop(rr.run_id, None)
        self.link.post("forget", rr.run_id, cancel)

    def _interrupt(self, rr: RemoteRun, message: str, requeue: bool) -> None:
        record = self.store.get_run(rr.run_id)
        if record and record["state"] == RunState.RUNNING.value:
            with contextlib.suppress(ValueError):
                self.store.transition(rr.run_id, RunState.INTERRUPTED,
                                      add_events=[RunEvent(EventKind.INTERRUPTED.value, None, message)])
            self.log(f"{rr.run_id} {message}")
        self._release(rr, cancel=True)
        record = self.store.get_run(rr.run_id)
        if requeue and record and record["state"] == RunState.INTERRUPTED.value:
            self.requeue(record)

    def _worker_gone(self, address: str) -> None:
        for rr in [r for r in self.remote.values() if r.address == address]:
            came = (f"it resumes from the checkpoint that came back ({rr.checkpoints} this attempt)"
                    if self.ws.checkpoint_path(rr.run_id).exists() else "no checkpoint had come back; it starts over")
            self._interrupt(rr, f"interrupted: Dask worker {rr.name} ({address}) left the cluster; {came}",
                            requeue=not self.stopping)

    # -- cancel and dispatch -----------------------------------------------------------------

    def check_cancellations(self) -> None:
        if not self.remote:
            return
        now = time.monotonic()
        for run in self.store.list_runs(RunState.RUNNING, omit=("config", "history", "events")):
            rr = self.remote.get(run["id"])
            if rr is None or not run.get("cancel_requested"):
                continue
            if rr.cancel_sent is None:
                rr.cancel_sent = now
                rr.control["stop"] = "cancel"
                self.link.post("control", rr.run_id, dict(rr.control))
            elif now - rr.cancel_sent > CANCEL_GRACE + rr.grace + 5.0:
                message = f"cancelled by the user (its task on Dask worker {rr.name} did not stop and was abandoned)"
                with contextlib.suppress(ValueError):
                    self.store.transition(rr.run_id, RunState.CANCELLED,
                                          add_events=[RunEvent(EventKind.CANCELLED.value, None, message)])
                self.log(f"{rr.run_id} {message}")
                self._release(rr, cancel=True)
                self.ended(rr.run_id, RunState.CANCELLED.value)

    def dispatch(self) -> None:
        if self.state != "connected" or self.stopping:
            return
        busy = {rr.place for rr in self.remote.values()}
        free = [(a, k) for a, w in self.workers.items() for k in range(_places(w)) if (a, k) not in busy]
        if not free:
            return
        for run in self.store.queued():
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
        pinned = pinned_device(run)
        device = "cpu" if pinned == "cpu" or gpus < 1 else ("cuda" if gpus == 1 else f"cuda:{k}")
        slot = worker["name"] + (f".{k}" if _places(worker) > 1 else "")
        token = secrets.token_hex(8)
        try:
            record = self.store.transition(
                run["id"], RunState.RUNNING, worker=None, slot=slot, device=device, host=worker["name"],
                host_address=address, cancel_requested=False,
                add_events=[RunEvent(EventKind.STARTED.value, None, f"started on Dask worker {worker['name']} ({address})")])
        except ValueError:  # cancelled between our read and this write
            return False
        payload = {"run_id": run["id"], "token": token, "tag": self.tag, "device": device,
                   "record": {k: v for k, v in record.items() if k not in ("events", "history")}}
        control: dict[str, Any] = {"token": token, "stop": None, "beat": self.beat, "verdicts": {}}
        rr = RemoteRun(run["id"], token, address, worker["name"], place, control)
        self.remote[run["id"]] = rr
        self.link.post("submit", run["id"], token, payload, self._blobs(run["id"]), address,
                       {"GPU": 1} if gpus >= 1 else None, control)
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

    def shutdown(self) -> None:
        self.stopping = True
        if self.remote and self.state == "connected":
            for rr in self.remote.values():
                rr.control["stop"] = "interrupt"
                self.link.post("control", rr.run_id, dict(rr.control))
            deadline = time.monotonic() + STOP_GRACE + max((rr.grace for rr in self.remote.values()), default=0.0)
            # Each task checkpoints its run, sends it back and records it interrupted.
            while self.remote and self.state == "connected" and time.monotonic() < deadline:
                from multiprocessing.connection import wait

                self.handle(wait([self._wake_r], timeout=0.5))
        for rr in list(self.remote.values()):
            self._interrupt(rr, "interrupted: the engine stopped", requeue=False)
        self.link.close()
        with contextlib.suppress(FileNotFoundError):
            (self.ws.root / CLUSTER_STATUS_NAME).unlink()

    def _write_status(self) -> None:
        """cluster.json, for `engine status` and the TUI (runtime.placement.read_cluster_status)."""
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


def _describe_worker(w: dict[str, Any]) -> str:
    resources = ", ".join(f"{k}={v:g}" for k, v in sorted(w["resources"].items()))
    return f"{w['nthreads']} thread(s)" + (f", {resources}" if resources else "") + f"; takes {_places(w)} run(s) at once"
