"""`trialdeck train`: run one preset in this process, recorded in the catalogue like any run.

The run is created and started here (StartedHere: its `worker` is this process),
then trained by the runner its configuration picks, with no engine: Ctrl-C
records it interrupted (resumed later with `trialdeck runs resume`), and the
KeyboardInterrupt goes on up to the command line.
"""

from __future__ import annotations

import os
from typing import Any

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.presets.inputs import check_inputs
from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.runs.facts import StartedHere
from trialdeck.engine.runs.lifecycle import Lifecycle
from trialdeck.engine.runtime.runners.base import RunContext, watched_by
from trialdeck.engine.runtime.runners.choice import runner_for
from trialdeck.engine.training.callbacks import TrainerCallback
from trialdeck.engine.types import RunState
from trialdeck.engine.workspace import Workspace


def run_foreground(ws: Workspace, spec: RunSpec, progress: TrainerCallback | None = None) -> dict[str, Any]:
    check_inputs(spec)  # as at enqueue: a missing .npz or model module is refused before a run is recorded
    store = Store(ws)
    lifecycle = Lifecycle(store)
    record = store.create_run(preset=spec.preset, config=spec.config(), config_hash=spec.content_hash,
                              device=spec.train.device)
    run_id = record["id"]
    record = lifecycle.apply(StartedHere(run_id, os.getpid(), {"workdir": os.getcwd()})) or record
    ctx = RunContext(store, ws, lifecycle, spec.train.device, extra=watched_by(progress))
    states: list[RunState] = []
    runner_for(ctx, [record]).run(lambda _, state: states.append(state))
    if states == [RunState.INTERRUPTED] and spec.script is not None:
        raise KeyboardInterrupt  # Ctrl-C: it stopped the script and recorded the run interrupted
    return dict(store.get_run(run_id) or {})
