"""`trialdeck worker --storage URL --study NAME`: join a shared study from another box.

This is Optuna's own distributed mode: every box asks the shared database for
trials and tells it the results; trialdeck adds no protocol of its own. The
worker trains in its own process (it *is* the worker), records each trial as
a run in its own workspace, and stops when the study has its trials.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import optuna

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.runtime.runners.recorder import RunRecorder
from trialdeck.engine.training.trainer import train
from trialdeck.engine.tuning import study as studies
from trialdeck.engine.tuning.reporter import TrialReporter
from trialdeck.engine.tuning.space import apply_params, sample
from trialdeck.engine.types import RunState
from trialdeck.engine.workspace import Workspace

DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def run_worker(ws: Workspace, url: str, name: str, *, max_trials: int | None = None,
               say: Callable[[str], None] = print) -> dict[str, int]:
    store = Store(ws)
    study, tune, meta = studies.load(name, url, seed_salt=f"{studies.host()}:{ws.root}")
    target = studies.target_trials(tune, meta.get("n_trials"))
    done = {"complete": 0, "pruned": 0, "fail": 0}
    ran = 0
    while max_trials is None or ran < max_trials:
        asked = len(study.get_trials(deepcopy=False, states=(*DONE, optuna.trial.TrialState.RUNNING)))
        if asked >= target:
            break
        trial = study.ask()
        trial.set_user_attr("workspace", f"{studies.host()}:{ws.root}")  # its host is the part before ':'
        params = sample(trial, tune)
        try:
            spec = apply_params(meta["config"], params, f"study {name} trial {trial.number}")
        except Exception as exc:  # noqa: BLE001 - a sampled combination the preset rejects
            studies.tell_failed(study, trial._trial_id, trial.number, f"invalid parameters: {exc}")
            say(f"trial {trial.number}: invalid parameters: {exc}")
            continue
        record = store.create_run(preset=meta["preset"], config=spec.config(), config_hash=spec.content_hash,
                                  study=name, trial=trial.number)
        trial.set_user_attr("run_id", f"{studies.host()}:{ws.root}:{record['id']}")
        store.update_run(record["id"], trial_id=trial._trial_id, params=params, remote=redact_url(url))
        store.transition(record["id"], RunState.RUNNING, worker=os.getpid(), foreground=True)
        recorder = RunRecorder(store, record["id"], ws.run_dir(record["id"]),
                               observer=TrialReporter(study, tune, trial._trial_id, spec.train.epochs))
        try:
            result = train(spec, recorder, run_dir=ws.run_dir(record["id"]), data_dir=ws.data_dir)
            final = recorder.finish(result)
        except KeyboardInterrupt:
            recorder.flush()
            store.transition(record["id"], RunState.INTERRUPTED, error="interrupted by the user (Ctrl-C)")
            studies.tell_failed(study, trial._trial_id, trial.number, "interrupted by the user (Ctrl-C)")
            raise
        finally:
            recorder.close()
        done[studies.tell_run(study, tune, trial._trial_id, trial.number, final)] += 1
        ran += 1
        say(f"trial {trial.number} {final['state']}" + (f" ({final['error']})" if final.get("error") else ""))
    studies.sync(store, study, tune, meta, url=url)
    return done


def redact_url(url: str) -> str:
    return studies.redact(url)
