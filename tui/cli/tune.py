"""`trialdeck tune` (create or resume a study; the engine runs its trials) and `trialdeck worker`
(join a shared study from another box)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from trialdeck.engine.errors import ExitCode
from trialdeck.engine.types import ACTIVE_STUDY_STATES, StudyState
from trialdeck.tui.cli.common import (
    HomeOpt,
    JsonOpt,
    SetOpt,
    StorageOpt,
    check_range,
    emit,
    err,
    handle_errors,
    roots,
    workspace,
)
from trialdeck.tui.cli.studies import print_study, study_view, wait_study


def tune_cmd(
    preset: Annotated[str, typer.Argument(help="A preset with a [tune] block.")],
    set_: SetOpt = None,
    trials: Annotated[int | None,
                      typer.Option("--trials", help="Total trials (default: tune.trials), 1 to 1000000.")] = None,
    timeout: Annotated[float | None,
                       typer.Option("--timeout", help="Ask no new trial after this many seconds (at least 1).")] = None,
    study_name: Annotated[str | None, typer.Option("--study", help="Study name (default: from the preset name).")] = None,
    storage: StorageOpt = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag the study; its trial runs carry its tags (repeatable).",
                                                  show_default=False)] = None,
    wait_: Annotated[bool, typer.Option("--wait", help="Wait for the study to finish; show progress.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create or resume an Optuna study from a preset; the engine runs its trials."""
    from trialdeck.engine.catalogue.store import check_tags

    tags = check_tags(tag or [], "--tag")
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.presets import resolve
    from trialdeck.engine.runtime.control.actions import start_study
    from trialdeck.engine.runtime.control.client import ensure_engine, notify

    check_range("--trials", trials, 1, 1_000_000)
    check_range("--timeout", timeout, 1, 10 * 365 * 86400)
    ws = workspace(home)
    spec = resolve(preset, set_ or [], roots(home))
    store = Store(ws)

    def engine() -> None:
        ensure_engine(ws, say=err)
        notify(ws)

    # The one way a study starts (the TUI's too): validate, record it as wanted, wake the engine,
    # which creates (or resumes) the Optuna study on its next tick (trialdeck.engine.tuning.launch).
    started = start_study(store, spec, trials=trials, timeout=timeout, name=study_name, storage=storage, tags=tags,
                          engine=engine)
    name, target = started.name, started.target
    _warn_space_overrides(spec, set_ or [])
    if started.was in ACTIVE_STUDY_STATES and not as_json:
        err(f"trialdeck: study {name} is already running; following it")
    if not wait_:
        doc: Mapping[str, Any] = store.get_study(name) or started.doc
        if as_json:
            emit(study_view(doc, []))
        else:
            print(f"study {name}: {doc['n_done']}/{target} trials done; running in the engine "
                  f"(`trialdeck studies show {name}` to browse)")
        return
    try:
        doc = wait_study(ws, store, name, show=sys.stderr.isatty() and not as_json)
    except KeyboardInterrupt:
        err(f"trialdeck: stopping study {name}: cancelling its queued and running trials")
        store.upsert_study(name, {"state": StudyState.STOPPING.value})
        notify(ws)
        wait_study(ws, store, name, show=False, timeout=60.0)
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    trials_ = store.list_trials(name)
    if as_json:
        emit(study_view(doc, trials_))
    else:
        print_study(doc, trials_)
    if doc.get("state") == StudyState.FAILED:
        err(f"trialdeck: study {name} failed: {doc.get('error')}")
        raise typer.Exit(int(ExitCode.JOB_FAILED))
    if not (doc.get("best") or doc.get("pareto")):  # no complete trial
        raise typer.Exit(int(ExitCode.JOB_FAILED))


def _warn_space_overrides(spec, sets: list[str]) -> None:
    """A `--set` on a key the search space samples is overwritten by every trial: say so."""
    from trialdeck.engine.presets.loader import parse_set

    space = set(spec.tune.space) if spec.tune is not None else set()
    for item in sets:
        key = ".".join(parse_set(item)[0])  # already parsed once by resolve(): valid here
        if key in space or any(s.startswith(key + ".") for s in space):
            err(f"trialdeck: --set {key}: [tune.space] samples it, so each trial's own value is used")


def worker_cmd(
    storage: Annotated[str, typer.Option("--storage", help="The shared Optuna storage URL (postgresql://...).")],
    study: Annotated[str, typer.Option("--study", help="The study to join.")],
    trials: Annotated[int | None, typer.Option("--trials", help="Run at most this many trials here (at least 1).")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Join a shared study from this box: ask, train here, tell, until the study has its trials."""
    from trialdeck.engine.runtime.control.study_worker import run_worker
    from trialdeck.engine.tuning import study as studies

    check_range("--trials", trials, 1, 1_000_000)
    ws = workspace(home)
    studies.check_study_name(study)
    url = studies.storage_url(ws, study, storage)
    done = run_worker(ws, url, study, max_trials=trials, say=(lambda line: err(line)) if not as_json else (lambda line: None))
    if as_json:
        emit({"study": study, **done})
    else:
        print(f"worker done: {done['complete']} complete, {done['pruned']} pruned, {done['fail']} failed")


def register(app: typer.Typer) -> None:
    app.command("tune")(handle_errors(tune_cmd))
    app.command("worker")(handle_errors(worker_cmd))
