"""`trialdeck studies`: browse tuning studies (list, show, best, export) and stop them.

The TinyDB mirror is reconciled with the study's Optuna storage on `studies show`.
With `--storage URL` (any Optuna storage: an SQLAlchemy URL or a journal file's
path) they read any study in it, trialdeck's or not, without writing to it
(engine/tuning/storages.py)."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from trialdeck.engine.errors import BadInput, ExitCode
from trialdeck.engine.types import ACTIVE_STUDY_STATES, StudyState
from trialdeck.tui.cli.common import (
    HomeOpt,
    JsonOpt,
    StorageReadOpt,
    emit,
    err,
    handle_errors,
    workspace,
)

app = typer.Typer(help="Browse tuning studies: list, show, best, export, stop.", no_args_is_help=True)


def wait_study(ws, store, name: str, *, show: bool, timeout: float | None = None) -> Mapping[str, Any]:
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
                        + (f", best {doc['metric']} {best['value']:.4g} (trial {best['number']})" if best else "")
                        + (f", pareto front {len(doc['pareto'])} trials" if doc.get("pareto") else ""))
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


def study_view(doc: Mapping[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any]:
    view = {k: v for k, v in doc.items() if k != "storage_url"}
    view.setdefault("directions", [doc.get("direction") or "minimize"])
    view["trials"] = trials
    return view


def metrics_of(doc: Mapping[str, Any]) -> list[str]:
    """The study's objectives' names, in order (one: its metric)."""
    objectives = doc.get("objectives") or [{"metric": doc.get("metric") or "value"}]
    return [o["metric"] for o in objectives]


def values_text(doc: Mapping[str, Any], values: list[float | None] | None) -> str:
    if not values:
        return "-"
    return ", ".join(f"{m} {v:.4g}" if v is not None else f"{m} -" for m, v in zip(metrics_of(doc), values, strict=False))


def objectives_text(doc: Mapping[str, Any]) -> str:
    directions = doc.get("directions") or [doc.get("direction")]
    return ", ".join(f"{d} {m}" for m, d in zip(metrics_of(doc), directions, strict=False))


def front_of(doc: Mapping[str, Any], trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    on = set(doc.get("pareto") or ())
    return [t for t in trials if t["number"] in on]


def print_study(doc: Mapping[str, Any], trials: list[dict[str, Any]]) -> None:
    best = doc.get("best")
    made = f"preset {doc.get('preset')}  sampler {doc.get('sampler')}  pruner {doc.get('pruner')}" \
        if doc.get("preset") else "not made by trialdeck"
    print(f"study {doc['name']}  ({doc.get('state')})  {objectives_text(doc)}  {made}"
          + (f"  storage {doc['storage']}" if doc.get("foreign") else ""))
    counts = ", ".join(f"{v} {k}" for k, v in sorted((doc.get("counts") or {}).items()))
    print(f"  trials: {doc.get('n_done', 0)}/{doc.get('n_trials')} done ({counts})")
    if doc.get("create") and doc.get("state") in ACTIVE_STUDY_STATES:
        print("  waiting for the engine to create the study and ask its first trial")
    if best:
        print(f"  best: trial {best['number']} {doc.get('metric')} {best['value']:.4g} {json.dumps(best['params'])}")
    if doc.get("pareto") is not None:
        print(f"  pareto front: {len(doc['pareto'])} trials ({', '.join(f'#{n}' for n in doc['pareto'])})")
    if doc.get("importances"):
        print("  importances: " + ", ".join(f"{k} {v:.2f}" for k, v in doc["importances"].items()))
    multi = len(doc.get("directions") or ()) > 1
    for t in trials:
        if multi:
            value = " / ".join(f"{v:.4g}" if v is not None else "-" for v in t.get("values") or []) or "-"
        else:
            value = f"{t['value']:.4g}" if t.get("value") is not None else "-"
        why = t.get("fail_reason") or t.get("prune_reason")
        print(f"  #{t['number']:<4} {t['state']:<9} {value:>9}  {t.get('run_id') or '':<8} {json.dumps(t.get('params'))}"
              + (f"  ({why})" if why else ""))


def _sync_from_storage(ws, store, name: str, storage: str | None) -> Mapping[str, Any]:
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


def _from_storage(home, name: str, storage: str) -> tuple[Mapping[str, Any], list[dict[str, Any]]]:
    """A study of the storage named by --storage: a trialdeck study is mirrored into this
    workspace's catalogue as before (its trials merge with ours); any other study is read as
    it is, and nothing is written anywhere."""
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.tuning import storages

    url = storages.parse(storage)
    ws = workspace(home)
    store = Store(ws)
    own = store.get_study(name)
    if own is not None and own.get("storage_url") == url:
        return _sync_from_storage(ws, store, name, None), store.list_trials(name)
    doc, trials = storages.read_study(url, name)
    if not doc["foreign"] and not url.startswith("journal:"):
        return _sync_from_storage(ws, store, name, url), store.list_trials(name)
    return doc, trials


def _study_doc(home, name: str, storage: str | None, reconcile: bool) -> tuple[Mapping[str, Any], list[dict[str, Any]]]:
    from trialdeck.engine.catalogue.store import Store

    if storage is not None:
        return _from_storage(home, name, storage)
    ws = workspace(home)
    store = Store(ws)
    doc = _sync_from_storage(ws, store, name, storage) if reconcile else store.get_study(name)
    if doc is None:
        raise BadInput(f"no study {name!r} in {store.path}; see `trialdeck studies list` (or pass --storage URL)")
    return doc, store.list_trials(name)


@app.command("list")
@handle_errors
def studies_list(storage: StorageReadOpt = None, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """All studies in this workspace, or in the Optuna storage --storage names (anyone's)."""
    if storage is not None:
        from trialdeck.engine.tuning import storages

        docs = storages.list_studies(storages.parse(storage))
    else:
        from trialdeck.engine.catalogue.store import Store

        docs = [{k: v for k, v in d.items() if k != "storage_url"} for d in Store(workspace(home)).list_studies()]
    if as_json:
        emit(docs)
        return
    if not docs:
        print("no studies")
    for d in docs:
        best = d.get("best")
        summary = (f"best {d.get('metric')} {best['value']:.4g}" if best else
                   f"front {len(d['pareto'])} ({objectives_text(d)})" if d.get("pareto") is not None else "")
        print(f"{d['name']:<28} {d.get('state', ''):<10} {d.get('n_done', 0):>4}/{d.get('n_trials', '?'):<4} {summary}")


@app.command("show")
@handle_errors
def studies_show(
    name: Annotated[str, typer.Argument(help="Study name.")],
    storage: StorageReadOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A study with all its trials; reconciles TinyDB with the Optuna storage first."""
    doc, trials = _study_doc(home, name, storage, reconcile=True)
    if as_json:
        emit(study_view(doc, trials))
    else:
        print_study(doc, trials)


def _picked(doc: Mapping[str, Any], trials: list[dict[str, Any]], number: int | None) -> dict[str, Any] | None:
    """Trial `number` (with --trial), else the best trial (one objective); None when there is none."""
    if number is None:
        best = doc.get("best")
        return {**best, "values": [best["value"]]} if best else None
    trial = next((t for t in trials if t["number"] == number), None)
    if trial is None:
        raise BadInput(f"study {doc['name']} has no trial #{number}; see `trialdeck studies show {doc['name']}`")
    if trial["state"] != "complete":
        raise BadInput(f"trial #{number} of study {doc['name']} is {trial['state']}, not complete; pick a complete "
                       "trial (`studies best` lists the best)")
    return {k: trial.get(k) for k in ("number", "value", "values", "params", "run_id")}


@app.command("best")
@handle_errors
def studies_best(
    name: Annotated[str, typer.Argument(help="Study name.")],
    trial: Annotated[int | None, typer.Option(
        "--trial", help="Pick this trial (one of the Pareto front, for several objectives) instead of the best.",
        show_default=False)] = None,
    save_preset: Annotated[str | None, typer.Option(
        "--save-preset", help="Save the best trial's (or --trial N's) configuration (the study's, with its params) "
                              "as this preset in the workspace's presets/, ready to `trialdeck run`.",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="With --save-preset: overwrite a preset of that name.")] = False,
    storage: StorageReadOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The best trial (one objective) or the Pareto front (several); --save-preset NAME keeps one as a preset."""
    if force and save_preset is None:
        raise BadInput("--force: only with --save-preset NAME")
    doc, trials = _study_doc(home, name, storage, reconcile=storage is not None)
    multi = doc.get("pareto") is not None
    if multi and trial is None and save_preset is not None:
        front = doc["pareto"]
        if len(front) != 1:
            raise BadInput(f"study {name} has {len(front)} trials on its Pareto front "
                           f"({', '.join(f'#{n}' for n in front) or 'none yet'}); pick one with --trial N")
        trial = front[0]
    picked = _picked(doc, trials, trial) if (trial is not None or not multi) else None
    saved = None
    if save_preset is not None and picked is not None:
        saved = _save(home, doc, picked["number"], save_preset, force)
    elif save_preset is not None:
        err(f"trialdeck: study {name} has no complete trial yet; no preset saved")
    front = front_of(doc, trials) if multi else []
    if as_json:
        if multi and trial is None:
            emit({"name": doc["name"], "objectives": doc.get("objectives"), "directions": doc.get("directions"),
                  "pareto": [{k: t.get(k) for k in ("number", "values", "params", "run_id")} for t in front]})
        else:
            emit({**picked, "saved_preset": saved} if picked and saved else picked)
    elif multi and trial is None:
        print(f"pareto front of {name}: {len(front)} trials ({objectives_text(doc)})")
        for t in front:
            run = f"  run {t['run_id']}" if t.get("run_id") else ""
            print(f"trial {t['number']}  {values_text(doc, t.get('values'))}{run}  {json.dumps(t['params'])}")
    elif picked:
        shown = values_text(doc, picked.get("values"))
        run = f"  run {picked['run_id']}" if picked.get("run_id") else ""
        print(f"trial {picked['number']}  {shown}{run}  {json.dumps(picked['params'])}")
    else:
        print(f"study {name} has no complete trial yet")
    if saved and not as_json:
        print(f"saved preset {save_preset} to {saved['path']} (`trialdeck run {save_preset}` trains it; "
              f"add --set train.epochs=N to train it longer)")
    if not (picked or front):
        raise typer.Exit(int(ExitCode.JOB_FAILED))


def _save(home, doc: Mapping[str, Any], number: int, preset: str, force: bool) -> dict[str, Any]:
    """Save trial `number` of a trialdeck study of this workspace as preset `preset`."""
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.presets import check_name
    from trialdeck.engine.tuning.results import save_trial_preset

    if doc.get("foreign") or not doc.get("preset"):
        raise BadInput(f"study {doc['name']} was not made by trialdeck: it has no preset to apply trial #{number}'s "
                       "params to, so it cannot be saved as one")
    check_name(preset)
    ws = workspace(home)
    path, spec, _trial = save_trial_preset(Store(ws), ws.presets_dir, doc["name"], preset, number=number, force=force)
    return {"name": preset, "path": str(path), "hash": spec.content_hash}


@app.command("export")
@handle_errors
def studies_export(
    name: Annotated[str, typer.Argument(help="Study name.")],
    format_: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    storage: StorageReadOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a study's trials as CSV (one column per objective and per parameter) or JSON."""
    if as_json:
        format_ = "json"
    if format_ not in ("csv", "json"):
        raise BadInput(f"--format {format_!r}: allowed: csv, json")
    doc, trials = _study_doc(home, name, storage, reconcile=storage is not None)
    if format_ == "json":
        text = json.dumps(study_view(doc, trials), indent=2, default=str) + "\n"
    else:
        text = _csv(doc, trials)
    if output:
        from trialdeck.engine.workspace import atomic_write

        atomic_write(output, text.encode())
    else:
        sys.stdout.write(text)


def _csv(doc: Mapping[str, Any], trials: list[dict[str, Any]]) -> str:
    """One row per trial: number, state, the value (one objective) or a column per objective
    (named by its metric), the params, run and duration. Numbers as Python writes them
    (repr), so they read back exactly."""
    multi = doc.get("pareto") is not None
    value_columns = metrics_of(doc) if multi else ["value"]
    keys = sorted({k for t in trials for k in (t.get("params") or {})})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["number", "state", *value_columns, *keys, "run_id", "duration"])
    for t in trials:
        params = t.get("params") or {}
        values = (t.get("values") or [None] * len(value_columns)) if multi else [t.get("value")]
        writer.writerow([t["number"], t["state"], *values,
                         *[json.dumps(params[k]) if isinstance(params.get(k), list) else params.get(k, "") for k in keys],
                         t.get("run_id") or "", t.get("duration")])
    return buf.getvalue()


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
    final = wait_study(ws, store, name, show=False, timeout=30.0)
    if as_json:
        emit({"name": name, "state": final.get("state")})
    else:
        print(f"study {name} {final.get('state')}")
