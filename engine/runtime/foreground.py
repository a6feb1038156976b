"""`trialdeck train`: run one preset in this process, recorded in the catalogue like any run."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.presets.inputs import check_inputs
from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.runtime.recorder import RunRecorder
from trialdeck.engine.training.callbacks import TrainerCallback
from trialdeck.engine.training.trainer import train
from trialdeck.engine.types import RunState
from trialdeck.engine.workspace import Workspace


def run_foreground(ws: Workspace, spec: RunSpec, progress: TrainerCallback | None = None) -> Mapping[str, Any]:
    check_inputs(spec)  # as at enqueue: a missing .npz or model module is refused before a run is recorded
    store = Store(ws)
    record = store.create_run(preset=spec.preset, config=spec.config(), config_hash=spec.content_hash,
                              device=spec.train.device)
    run_id = record["id"]
    store.transition(run_id, RunState.RUNNING, worker=os.getpid(), foreground=True, workdir=os.getcwd())
    if spec.script is not None:  # the user's own program, here instead of in a worker (runtime.script)
        from trialdeck.engine.runtime.script import run_script

        final = run_script(store, ws, record, spec, spec.train.device, observer=progress)
        if final == RunState.INTERRUPTED.value:
            raise KeyboardInterrupt  # Ctrl-C: it stopped the script and recorded the run interrupted
        return store.get_run(run_id) or {}
    recorder = RunRecorder(store, run_id, ws.run_dir(run_id), observer=progress)
    try:
        result = train(spec, recorder, run_dir=ws.run_dir(run_id), data_dir=ws.data_dir)
        return recorder.finish(result)
    except KeyboardInterrupt:
        recorder.flush()
        store.transition(run_id, RunState.INTERRUPTED, error="interrupted by the user (Ctrl-C)")
        raise
    finally:
        recorder.close()
