"""CLI for tuning: `tune`, `studies list|show|best|export|stop`, and `worker`.

Studies run in the engine (each trial is a queued run); these commands start
or resume them and browse the TinyDB mirror, reconciling it with the Optuna
storage on `studies show`.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from engine.errors import BadInput, ExitCode
from tui.cli_engine import check_range
from tui.cli_common import HomeOpt, JsonOpt, SetOpt, emit, err, handle_errors, roots, workspace

studies_app = typer.Typer(help="Browse tuning studies: list, show, best, export, stop.", no_args_is_help=True)

StorageOpt = Annotated[
    Optional[str],
    typer.Option("--storage", help="Optuna storage URL shared across boxes (postgresql://...); default: the workspace journal."),
]


def tune_cmd(
    preset: Annotated[str, typer.Argument(help="A preset with a [tune] block.")],
    set_: SetOpt = None,
    trials: Annotated[Optional[int], typer.Option("--trials", help="Total trials (default: tune.trials), 1 to 1000000.")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Ask no new trial after this many seconds (at least 1).")] = None,
    study_name: Annotated[Optional[str], typer.Option("--study", help="Study name (default: from the preset name).")] = None,
    storage: StorageOpt = None,
    wait_: Annotated[bool, typer.Option("--wait", help="Wait for the study to finish; show progress.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create or resume an Optuna study from a preset; the engine runs its trials."""
    from engine.client import ensure_engine, notify
    from engine.presets import resolve
    from engine.store import Store
    from engine.tuning import launch

    check_range("--trials", trials, 1, 1_000_000)
    check_range("--timeout", timeout, 1, 10 * 365 * 86400)
    ws = workspace(home)
    spec = resolve(preset, set_ or [], roots(home))
    if spec.tune is None:
        raise BadInput(f"preset {spec.preset!r} has no [tune] block; add one, or queue a single run with `trialdeck run`")
    name = launch.check_study_name(study_name) if study_name else launch.default_study_name(spec.preset)
    url = launch.storage_url(ws, name, storage)
    store = Store(ws)
    existing = store.get_study(name)
    _refuse_changed_resume(name, existing, spec)
    _warn_space_overrides(spec, set_ or [])
    if existing and existing.get("state") in ("running", "stopping"):
        if not as_json:
            err(f"trialdeck: study {name} is already running; following it")
    target = launch.target_trials(spec.tune, trials)
    timeout = timeout if timeout is not None else spec.tune.timeout
    if storage is not None:
        # A shared database: open it here, so a bad URL or a server that is down is reported now.
        from engine.tuning import study as studies

        studies.create_or_load(name, url, preset=spec.preset, config=spec.config(), tune=spec.tune)
    # The engine creates (or resumes) the Optuna study on its next tick; see engine.tuning.launch.
    launch.request(store, name, url, spec, target, timeout)
    ensure_engine(ws, say=err)
    notify(ws)
    if not wait_:
        doc = store.get_study(name)
        if as_json:
            emit(_study_view(doc, []))
        else:
            print(f"study {name}: {doc['n_done']}/{target} trials done; running in the engine "
                  f"(`trialdeck studies show {name}` to browse)")
        return
    try:
        doc = _wait_study(ws, store, name, show=sys.stderr.isatty() and not as_json)
    except KeyboardInterrupt:
        err(f"trialdeck: stopping study {name}: cancelling its queued and running trials")
        store.upsert_study(name, {"state": "stopping"})
        notify(ws)
        _wait_study(ws, store, name, show=False, timeout=60.0)
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    trials_ = store.list_trials(name)
    if as_json:
        emit(_study_view(doc, trials_))
    else:
        _print_study(doc, trials_)
    if doc.get("state") == "failed":
        err(f"trialdeck: study {name} failed: {doc.get('error')}")
        raise typer.Exit(int(ExitCode.JOB_FAILED))
    if not doc.get("best"):
        raise typer.Exit(int(ExitCode.JOB_FAILED))


def _refuse_changed_resume(name: str, existing: dict[str, Any] | None, spec) -> None:
    """Resuming a study keeps the config it was created with; refuse a request that differs,
    rather than ignore the difference."""
    from engine.tuning import launch  # light: no Optuna

    if not existing:
        return
    before = existing.get("config") or (existing.get("create") or {}).get("config")
    if not before:  # a study mirrored by an older version: nothing to compare with
        return
    changes = launch.config_changes(before, spec.config())
    if changes:
        shown = ", ".join(f"{key}={old!r} (asked {new!r})" for key, old, new in changes[:3])
        more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
        raise BadInput(f"study {name!r} exists with {shown}{more}; resuming it keeps its own settings: "
                       f"drop those --set, or start another study with --study NAME")


def _warn_space_overrides(spec, sets: list[str]) -> None:
    """A `--set` on a key the search space samples is overwritten by every trial: say so."""
    from engine.presets.loader import parse_set

    space = set(spec.tune.space) if spec.tune is not None else set()
    for item in sets:
        key = ".".join(parse_set(item)[0])  # already parsed once by resolve(): valid here
        if key in space or any(s.startswith(key + ".") for s in space):
            err(f"trialdeck: --set {key}: [tune.space] samples it, so each trial's own value is used")


def _wait_study(ws, store, name: str, *, show: bool, timeout: float | None = None) -> dict[str, Any]:
    from engine.client import engine_info, ensure_engine

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
            if doc.get("state") not in ("running", "stopping"):
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


def _study_view(doc: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any]:
    view = {k: v for k, v in doc.items() if k != "storage_url"}
    view["trials"] = trials
    return view


def _print_study(doc: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    best = doc.get("best")
    print(f"study {doc['name']}  ({doc.get('state')})  preset {doc.get('preset')}  {doc.get('direction')} "
          f"{doc.get('metric')}  sampler {doc.get('sampler')}  pruner {doc.get('pruner')}")
    counts = ", ".join(f"{v} {k}" for k, v in sorted((doc.get("counts") or {}).items()))
    print(f"  trials: {doc.get('n_done', 0)}/{doc.get('n_trials')} done ({counts})")
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
    from engine.tuning import study as studies

    doc = store.get_study(name)
    url = storage or (doc or {}).get("storage_url")
    if url is None:
        raise BadInput(f"no study {name!r} in {store.path}; see `trialdeck studies list` (or pass --storage URL)")
    url = studies.storage_url(ws, name, url) if not url.startswith("journal:") else url
    study, tune, meta = studies.load(name, url)
    fields: dict[str, Any] = {}
    if doc is None:
        fields = {"state": "remote", "n_trials": studies.target_trials(tune, meta.get("n_trials"))}
    return studies.sync(store, study, tune, meta, url=url, with_importances=True, fields=fields)


def _study_doc(home, name: str, storage: str | None, reconcile: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from engine.store import Store

    ws = workspace(home)
    store = Store(ws)
    doc = _sync_from_storage(ws, store, name, storage) if reconcile else store.get_study(name)
    if doc is None:
        raise BadInput(f"no study {name!r} in {store.path}; see `trialdeck studies list`")
    return doc, store.list_trials(name)


@studies_app.command("list")
@handle_errors
def studies_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """All studies in this workspace."""
    from engine.store import Store

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


@studies_app.command("show")
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
        emit(_study_view(doc, trials))
    else:
        _print_study(doc, trials)


@studies_app.command("best")
@handle_errors
def studies_best(name: Annotated[str, typer.Argument(help="Study name.")], home: HomeOpt = None,
                 as_json: JsonOpt = False) -> None:
    """The best trial: number, value, params and its run."""
    doc, _ = _study_doc(home, name, None, reconcile=False)
    best = doc.get("best")
    if as_json:
        emit(best)
    elif best:
        print(f"trial {best['number']}  {doc['metric']} {best['value']:.6g}  run {best.get('run_id')}  {json.dumps(best['params'])}")
    else:
        print(f"study {name} has no complete trial yet")
    if not best:
        raise typer.Exit(int(ExitCode.JOB_FAILED))


@studies_app.command("export")
@handle_errors
def studies_export(
    name: Annotated[str, typer.Argument(help="Study name.")],
    format_: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
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
        text = json.dumps(_study_view(doc, trials), indent=2, default=str) + "\n"
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
        from engine.workspace import atomic_write

        atomic_write(output, text.encode())
    else:
        sys.stdout.write(text)


@studies_app.command("stop")
@handle_errors
def studies_stop(name: Annotated[str, typer.Argument(help="Study name.")], home: HomeOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Stop a running study: no new trials; its queued and running trials are cancelled."""
    from engine.client import notify
    from engine.store import Store

    ws = workspace(home)
    store = Store(ws)
    doc = store.get_study(name)
    if doc is None:
        raise BadInput(f"no study {name!r} in {store.path}")
    if doc.get("state") not in ("running", "stopping"):
        raise BadInput(f"study {name} is {doc.get('state')}, not running")
    store.upsert_study(name, {"state": "stopping"})
    notify(ws)
    doc = _wait_study(ws, store, name, show=False, timeout=30.0)
    if as_json:
        emit({"name": name, "state": doc.get("state")})
    else:
        print(f"study {name} {doc.get('state')}")


def worker_cmd(
    storage: Annotated[str, typer.Option("--storage", help="The shared Optuna storage URL (postgresql://...).")],
    study: Annotated[str, typer.Option("--study", help="The study to join.")],
    trials: Annotated[Optional[int], typer.Option("--trials", help="Run at most this many trials here (at least 1).")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Join a shared study from this box: ask, train here, tell, until the study has its trials."""
    from engine.tuning import study as studies
    from engine.tuning.remote import run_worker

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
    app.add_typer(studies_app, name="studies")
    app.command("worker")(handle_errors(worker_cmd))
