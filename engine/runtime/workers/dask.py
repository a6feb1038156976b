"""What runs on a Dask worker: one trialdeck run, mirrored back to the engine that placed it.

The engine (placement.dask) submits `run_task(payload, blobs)` pinned to one
Dask worker. Invariants:

- No shared filesystem: the payload carries the run's record (config,
  workdir, attempt) and `blobs` the files a resume needs (the checkpoint, a
  script's reported lines and own files), written into a run folder under the
  worker's local directory. Datasets go to the worker user's own trialdeck
  data folder ($TRIALDECK_HOME/data, else ~/.trialdeck/data).
- Same runners as a local worker (runners.choice.runner_for), with the
  catalogue mirrored and the run's end sent to the engine's lifecycle, and, for
  a trial, a callback that asks the engine's pruner (workers.dask_transport).
- Warm: torch, the trainer and the dataset cache stay imported in the worker
  process between tasks (`_warm`, also run by `dask worker --preload`).
- Everything the run writes comes back while it runs, and the engine steers
  it, as workers.dask_transport describes; the run folder goes when the task
  ends (everything in it went back to the engine).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trialdeck.engine.runs.folder import LOG_NAME
from trialdeck.engine.runtime.workers.dask_transport import (
    MirrorStore,
    Outbox,
    OutboxChannel,
    PrunerVerdict,
    RemoteFacts,
    TaskSteering,
    control_name,
    queue_name,
    script_files,
)
from trialdeck.engine.runtime.workers.messages import StoppedBecause
from trialdeck.engine.types import RunState
from trialdeck.engine.workspace import Workspace, atomic_write, make_private_dir, private_open

__all__ = ["control_name", "dask_setup", "missing_workdir", "queue_name", "run_task", "script_files"]

# ----------------------------------------------------------------------------- the worker process


_WARM: dict[str, Any] = {}


def _warm() -> dict[str, Any]:
    """Import torch and the trainer once per worker process (the warm state kept between tasks)."""
    if not _WARM:
        # Imported here: the one-time cost a warm worker pays once, not per run.
        from trialdeck.engine.runtime.runners.choice import runner_for
        from trialdeck.engine.training.trainer import train

        _WARM.update(runner_for=runner_for, train=train)
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
    """`dask worker URL --preload trialdeck.engine.runtime.workers.dask`: warm up at the worker's
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


# ----------------------------------------------------------------------------- the task


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
    outbox = Outbox(run_id, token, run_dir)
    steering = TaskSteering(tag, token, run_id, outbox, get_client())
    steering.read_control()
    if steering.stale:
        steering.queue.close()
        shutil.rmtree(ws.root, ignore_errors=True)
        return {"stale": True}
    record = payload["record"]
    store = MirrorStore(record, outbox)
    steering.start()
    try:
        _train(warm, store, ws, record, payload["device"], steering, outbox, where, worker.address)
        return {}
    finally:
        steering.halt()
        steering.ship(final=True, done=True)
        steering.queue.close()
        shutil.rmtree(ws.root, ignore_errors=True)  # everything it wrote went back to the engine


def _train(warm: dict[str, Any], store: MirrorStore, ws: Workspace, record: dict[str, Any], device: str,
           steering: TaskSteering, outbox: Outbox, where: str, address: str) -> None:
    """The run itself, with the runner its configuration picks, ending through the engine's lifecycle."""
    import torch  # loaded by _warm: the worker's share of the cores

    from trialdeck.engine.runtime.runners.base import RunContext

    run_id = record["id"]
    with open(private_open(ws.run_dir(run_id) / LOG_NAME), "a", encoding="utf-8") as log:
        log.write(f"{time.strftime('%H:%M:%S')} on Dask worker {where} ({address}), pid {os.getpid()}\n")
    trial = record.get("study") is not None
    ctx = RunContext(store, ws, RemoteFacts(store), device, stop=steering, channel=OutboxChannel(outbox),
                     threads=torch.get_num_threads(), extra=lambda rec: PrunerVerdict(steering) if trial else None)
    why = missing_workdir(record, where)
    if why is not None:
        ctx.fail(run_id, why)
        return
    states: list[RunState] = []
    warm["runner_for"](ctx, [record]).run(lambda _, state: states.append(state))
    if steering.why and states == [RunState.INTERRUPTED]:
        outbox.note(StoppedBecause(run_id, steering.why))
