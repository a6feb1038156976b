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
from trialdeck.engine.runs.facts import StartedHere
from trialdeck.engine.runs.lifecycle import Lifecycle
from trialdeck.engine.runtime.runners.base import RunContext, watched_by
from trialdeck.engine.runtime.runners.choice import runner_for
from trialdeck.engine.tuning import study as studies
from trialdeck.engine.tuning.reporter import TrialReporter
from trialdeck.engine.tuning.space import apply_params, sample
from trialdeck.engine.workspace import Workspace

DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def run_worker(ws: Workspace, url: str, name: str, *, max_trials: int | None = None,
               say: Callable[[str], None] = print) -> dict[str, int]:
    store = Store(ws)
    lifecycle = Lifecycle(store)
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
        record = lifecycle.apply(StartedHere(record["id"], os.getpid())) or record
        reporter = TrialReporter(study, tune, trial._trial_id, spec.train.epochs)
        ctx = RunContext(store, ws, lifecycle, spec.train.device, extra=watched_by(reporter))
        try:
            runner_for(ctx, [record]).run(lambda *_: None)
        except KeyboardInterrupt:  # the runner recorded the run interrupted
            studies.tell_failed(study, trial._trial_id, trial.number, "interrupted by the user (Ctrl-C)")
            raise
        final = dict(store.get_run(record["id"]) or {})
        done[studies.tell_run(study, tune, trial._trial_id, trial.number, final)] += 1
        ran += 1
        say(f"trial {trial.number} {final['state']}" + (f" ({final['error']})" if final.get("error") else ""))
    studies.sync(store, study, tune, meta, url=url)
    return done


def redact_url(url: str) -> str:
    return studies.redact(url)
