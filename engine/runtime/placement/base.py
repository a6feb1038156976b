"""Placement: where the engine's queued runs train, behind one small interface.

The engine (runtime.daemon) owns the queue, the catalogue and the studies; a
placement backend owns the places runs train in. Two implement it:

- `LocalPlacement` (the default): one warm worker process per device slot of
  this box (runtime.worker), runs dispatched over pipes the moment a slot
  frees, ensembles packed by `membership.queue_groups`.
- `DaskPlacement` (runtime.dask_backend, when engine.toml has `cluster`): runs
  placed as tasks on a Dask distributed cluster, their results streamed back.

Contract, for both (tests/test_placement.py runs one suite against each):
- `dispatch` takes queued runs only while it has room, marks each running
  (with `slot`, `device`, and `host` on a cluster) and ends each in exactly one
  final state, told to the engine through `ended`.
- A cancel requested in the catalogue (`cancel_requested`) stops the run
  within seconds (`check_cancellations`); a run that does not stop is killed.
- `shutdown` interrupts what runs, keeping a checkpoint to resume from.
- Nothing blocks the engine's loop: the loop waits on `waitables()` and
  calls `handle` with whichever are ready.

The Dask backend's status file (`cluster.json`, read by `engine status` and
the TUI) is read here, without importing `distributed`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.workspace import Workspace

CANCEL_GRACE = 5.0
"""Seconds a run gets to stop cooperatively after a cancel before its worker is killed."""
STOP_GRACE = 30.0
"""Seconds running runs get to checkpoint when the engine stops."""
CLUSTER_STATUS_NAME = "cluster.json"
"""In the workspace, written by a Dask-placing engine: the cluster as it last saw it."""


class BasePlacement:
    """Where runs train (see the module docstring). `log` writes a line to engine.log;
    `ended(run_id, state)` tells the engine a run reached its final state under this backend."""

    kind = "base"

    def __init__(self, ws: Workspace, store: Store, log: Callable[[str], None],
                 ended: Callable[[str, str], None]) -> None:
        self.ws, self.store, self.log, self.ended = ws, store, log, ended
        self.stopping = False
        """Set by the engine when it stops: a dead worker is then not replaced."""

    def start(self) -> None:
        """Bring the places up (spawn workers, connect); must not block for long."""

    def slot_names(self) -> list[str]:
        """Names of the places runs train in, for engine.pid and the start line."""
        return []

    def capacity(self) -> int:
        """How many runs it can train at once now (a study asks this many trials ahead)."""
        return 1

    @property
    def ensemble_width(self) -> int:
        """Most trials one place trains as one ensemble (1: no ensembles)."""
        return 1

    def waitables(self) -> list[Any]:
        """Objects for `multiprocessing.connection.wait` that become ready when there is news."""
        return []

    def handle(self, ready: list[Any]) -> None:
        """Take in the news among `ready` (messages, finished runs, dead workers)."""

    def check_cancellations(self) -> None:
        """Pass on cancels the catalogue asks for; kill what does not stop in time."""

    def dispatch(self) -> None:
        """Start queued runs on free places."""

    def shutdown(self) -> None:
        """Interrupt what runs (each keeps its checkpoint) and stop the places."""


# ----------------------------------------------------------------------------- cluster status


def read_cluster_status(ws: Workspace) -> dict[str, Any] | None:
    """What a Dask-placing engine last wrote about its cluster (url, state, workers and their
    runs), or None when the engine places runs locally. Light: no `distributed` import."""
    try:
        data = json.loads((ws.root / CLUSTER_STATUS_NAME).read_text())
    except (FileNotFoundError, ValueError, OSError):
        return None
    return data if isinstance(data, dict) else None
