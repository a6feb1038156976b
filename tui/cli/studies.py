"""`trialdeck studies`: browse tuning studies (list, show, best, export) and stop them.

The TinyDB mirror is reconciled with the study's Optuna storage on `studies show`."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from trialdeck.engine.errors import BadInput, ExitCode
from trialdeck.engine.types import ACTIVE_STUDY_STATES, StudyState
from trialdeck.tui.cli.common import (
    HomeOpt,
    JsonOpt,
    StorageOpt,
    emit,
    err,
    handle_errors,
    workspace,
)

app = typer.Typer(help="Browse tuning studies: list, show, best, export, stop.", no_args_is_help=True)


def wait_study(ws, store, name: str, *, show: bool, timeout: float | None = None) -> dict[str, Any]:
    from trialdeck.engine.runtime.control.client import engine_info, ensure_engine

    deadline = None if timeout is None else time.monotonic() + timeout
    seen_events = time.time()
    last_check = time.monotonic()
    version = None
    doc = store.get_study(name)
    while True:
        current = store.version()
        if current != version:
            version = current
            doc = store.get_study(name)
            if show:
                best = doc.get("best")
                line = (f"\r\033[K{name}: {doc.get('n_done', 0)}/{doc.get('n_trials')} trials"
                        + (f", best {doc['metric']} {best['value']:.4g} (trial {best['number']})" if best else ""))
                for ev in store.events(since=seen_events):
                    if ev["kind"] == "pruned":
                        print(f"\r\033[K  {ev['run']}: {ev['message']}", file=sys.stderr)
                    seen_events = max(seen_events, ev.get("time", seen_events))
                print(line, end="", file=sys.stderr, flush=True)
            if doc.get("state") not in ACTIVE_STUDY_STATES:
                if show:
                    print(file=sys.stderr)
                return doc
        if time.monotonic() - last_check > 2.0:
            last_check = time.monotonic()
            if not engine_info(ws):
                ensure_engine(ws, say=err)
        if deadline is not None and time.monotonic() > deadline:
            return doc
        time.sleep(0.05)  # cheap: only a changed catalogue is read


def study_view(doc: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any]:
    view = {k: v for k, v in doc.items() if k != "storage_url"}
    view["trials"] = trials
    return view


def print_study(doc: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    best = doc.get("best")
    print(f"study {doc['name']}  ({doc.get('state')})  preset {doc.get('preset')}  {doc.get('direction')} "
          f"{doc.get('metric')}  sampler {doc.get('sampler')}  pruner {doc.get('pruner')}")
    counts = ", ".join(f"{v} {k}" for k, v in sorted((doc.get("counts") or {}).items()))
    print(f"  trials: {doc.get('n_done', 0)}/{doc.get('n_trials')} done ({counts})")
    if doc.get("create") and doc.get("state") in ACTIVE_STUDY_STATES:
        print("  waiting for the engine to create the study and ask its first trial")
    if best:
        print(f"  best: trial {best['number']} {doc.get('metric')} {best['value']:.4g} {json.dumps(best['params'])}")
    if doc.get("importances"):
        print("  importances: " + ", ".join(f"{k} {v:.2f}" for k, v in doc["importances"].items()))
    for t in trials:
        value = f"{t['value']:.4g}" if t.get("value") is not None else "-"
        why = t.get("fail_reason") or t.get("prune_reason")
        print(f"  #{t['number']:<4} {t['state']:<9} {value:>9}  {t.get('run_id') or '':<8} {json.dumps(t.get('params'))}"
              + (f"  ({why})" if why else ""))


def _sync_from_storage(ws, store, name: str, storage: str | None) -> dict[str, Any]:
    """Reconcile TinyDB with the study's Optuna storage (and merge other boxes' trials)."""
    from trialdeck.engine.tuning import study as studies

    doc = store.get_study(name)
    url = storage or (doc or {}).get("storage_url")
    if url is None:
        raise BadInput(f"no study {name!r} in {store.path}; see `trialdeck studies list` (or pass --storage URL)")
    url = studies.storage_url(ws, name, url) if not url.startswith("journal:") else url
    try:
        study, tune, meta = studies.load(name, url)
    except BadInput:
        if doc is not None and doc.get("create") and storage is None:
            return doc  # asked for, not created yet: the engine creates it at its next tick
        raise
    fields: dict[str, Any] = {}
    if doc is None:
        fields = {"state": StudyState.REMOTE.value, "n_trials": studies.target_trials(tune, meta.get("n_trials"))}
    return studies.sync(store, study, tune, meta, url=url, with_importances=True, fields=fields)


def _study_doc(home, name: str, storage: str | None, reconcile: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from trialdeck.engine.catalogue.store import Store

    ws = workspace(home)
    store = Store(ws)
    doc = _sync_from_storage(ws, store, name, storage) if reconcile else store.get_study(name)
    if doc is None:
        raise BadInput(f"no study {name!r} in {store.path}; see `trialdeck studies list`")
    return doc, store.list_trials(name)


@app.command("list")
@handle_errors
def studies_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """All studies in this workspace."""
    from trialdeck.engine.catalogue.store import Store

    docs = [{k: v for k, v in d.items() if k != "storage_url"} for d in Store(workspace(home)).list_studies()]
    if as_json:
        emit(docs)
        return
    if not docs:
        print("no studies")
    for d in docs:
        best = d.get("best")
        print(f"{d['name']:<28} {d.get('state', ''):<10} {d.get('n_done', 0):>4}/{d.get('n_trials', '?'):<4} "
              + (f"best {d.get('metric')} {best['value']:.4g}" if best else ""))


@app.command("show")
@handle_errors
def studies_show(
    name: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A study with all its trials; reconciles TinyDB with the Optuna storage first."""
    doc, trials = _study_doc(home, name, storage, reconcile=True)
    if as_json:
        emit(study_view(doc, trials))
    else:
        print_study(doc, trials)


@app.command("best")
@handle_errors
def studies_best(
    name: Annotated[str, typer.Argument(help="Study name.")],
    save_preset: Annotated[str | None, typer.Option(
        "--save-preset", help="Save the best trial's configuration (the study's, with its params) as this preset "
                              "in the workspace's presets/, ready to `trialdeck run`.", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="With --save-preset: overwrite a preset of that name.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The best trial: number, value, params and its run; --save-preset NAME keeps it as a preset."""
    if force and save_preset is None:
        raise BadInput("--force: only with --save-preset NAME")
    doc, _ = _study_doc(home, name, None, reconcile=False)
    best = doc.get("best")
    saved = None
    if save_preset is not None and not best:
        err(f"trialdeck: study {name} has no complete trial yet; no preset saved")
    elif save_preset is not None:
        from trialdeck.engine.catalogue.store import Store
        from trialdeck.engine.presets import check_name
        from trialdeck.engine.tuning.results import save_trial_preset

        check_name(save_preset)
        ws = workspace(home)
        path, spec, _trial = save_trial_preset(Store(ws), ws.presets_dir, name, save_preset, force=force)
        saved = {"name": save_preset, "path": str(path), "hash": spec.content_hash}
    if as_json:
        emit({**best, "saved_preset": saved} if best and saved else best)
    elif best:
        print(f"trial {best['number']}  {doc['metric']} {best['value']:.6g}  run {best.get('run_id')}  "
              f"{json.dumps(best['params'])}")
        if saved:
            print(f"saved preset {save_preset} to {saved['path']} (`trialdeck run {save_preset}` trains it; "
                  f"add --set train.epochs=N to train it longer)")
    else:
        print(f"study {name} has no complete trial yet")
    if not best:
        raise typer.Exit(int(ExitCode.JOB_FAILED))


@app.command("export")
@handle_errors
def studies_export(
    name: Annotated[str, typer.Argument(help="Study name.")],
    format_: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a study's trials as CSV (one column per parameter) or JSON."""
    if as_json:
        format_ = "json"
    if format_ not in ("csv", "json"):
        raise BadInput(f"--format {format_!r}: allowed: csv, json")
    doc, trials = _study_doc(home, name, None, reconcile=False)
    if format_ == "json":
        text = json.dumps(study_view(doc, trials), indent=2, default=str) + "\n"
    else:
        keys = sorted({k for t in trials for k in (t.get("params") or {})})
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["number", "state", "value", *keys, "run_id", "duration"])
        for t in trials:
            params = t.get("params") or {}
            writer.writerow([t["number"], t["state"], t.get("value"),
                             *[json.dumps(params[k]) if isinstance(params.get(k), list) else params.get(k, "") for k in keys],
                             t.get("run_id") or "", t.get("duration")])
        text = buf.getvalue()
    if output:
        from trialdeck.engine.workspace import atomic_write

        atomic_write(output, text.encode())
    else:
        sys.stdout.write(text)


@app.command("stop")
@handle_errors
def studies_stop(name: Annotated[str, typer.Argument(help="Study name.")], home: HomeOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Stop a running study: no new trials; its queued and running trials are cancelled."""
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.runtime.control.client import notify

    ws = workspace(home)
    store = Store(ws)
    doc = store.get_study(name)
    if doc is None:
        raise BadInput(f"no study {name!r} in {store.path}")
    if doc.get("state") not in ACTIVE_STUDY_STATES:
        raise BadInput(f"study {name} is {doc.get('state')}, not running")
    store.upsert_study(name, {"state": StudyState.STOPPING.value})
    notify(ws)
    doc = wait_study(ws, store, name, show=False, timeout=30.0)
    if as_json:
        emit({"name": name, "state": doc.get("state")})
    else:
        print(f"study {name} {doc.get('state')}")
