"""`trialdeck runs`: list, show, logs and follow runs; resume or rerun them."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from trialdeck.engine.errors import BadInput
from trialdeck.tui.cli.common import (
    STATES,
    HomeOpt,
    JsonOpt,
    SetOpt,
    check_range,
    emit,
    err,
    exit_for,
    find_run,
    handle_errors,
    open_store,
    print_run_summary,
    workspace,
)
from trialdeck.tui.cli.run import follow_run

app = typer.Typer(help="Inspect runs: list, show, logs, follow; resume or rerun them.", no_args_is_help=True)


@app.command("list")
@handle_errors
def runs_list(
    status: Annotated[str | None, typer.Option("--status", help=f"Only runs in this state: {', '.join(STATES)}.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """All runs, oldest first."""
    if status is not None and status not in STATES:
        import difflib

        hint = difflib.get_close_matches(status, STATES, n=1)
        raise BadInput(f"--status {status!r} is not a run state; allowed: {', '.join(STATES)}"
                       + (f"; did you mean {hint[0]!r}?" if hint else ""))
    runs = open_store(home).list_runs(status)
    if as_json:
        emit(runs)
        return
    if not runs:
        print("no runs")
    from trialdeck.tui.live import kept_epoch

    for r in runs:
        hist = r.get("history") or []
        last = hist[-1] if hist else None
        kept = kept_epoch(r)
        entry = next((h for h in hist if h.get("epoch") == kept), None)
        metric = f"kept epoch {kept}: val_acc {entry['val_acc']:.4f}" if entry is not None else ""
        if last is not None and entry is not last:
            metric += ("  " if metric else "") + f"last: val_acc {last['val_acc']:.4f}"
        print(f"{r['id']:<7} {r['state']:<13} {r['preset']:<28} {len(hist):>4} ep  {metric}")


@app.command("show")
@handle_errors
def runs_show(run_id: Annotated[str, typer.Argument(help="Run id, e.g. r12.")], home: HomeOpt = None,
              as_json: JsonOpt = False) -> None:
    """A run's full record: config, history, events, error."""
    record = find_run(open_store(home), run_id)
    if as_json:
        emit(record)
        return
    print_run_summary(record)
    print_history(record)
    for ev in record.get("events") or []:
        print(f"  [{ev.get('epoch') or '-'}] {ev['kind']}: {ev['message']}")


def print_history(record: dict) -> None:
    """The per-epoch table, the kept epoch and the monitor's best marked."""
    from trialdeck.tui.live import kept_epoch

    hist = record.get("history") or []
    if not hist:
        return
    kept, best = kept_epoch(record), (record.get("summary") or {}).get("best_epoch")
    columns = (("epoch", 5, "d"), ("train_loss", 10, ".4f"), ("val_loss", 10, ".4f"), ("val_acc", 8, ".4f"),
               ("lr", 9, ".3g"), ("seconds", 8, ".2f"))
    print("  " + "  ".join(f"{name:>{width}}" for name, width, _ in columns))
    for h in hist:
        cells = [format(h[k], f">{w}{fmt}") if isinstance(h.get(k), (int, float)) else f"{'-':>{w}}"
                 for k, w, fmt in columns]
        marks = ", ".join(m for m, e in (("kept", kept), ("best", best)) if e is not None and e == h.get("epoch"))
        print(("  " + "  ".join(cells) + "  " + marks).rstrip())


@app.command("logs")
@handle_errors
def runs_logs(run_id: Annotated[str, typer.Argument(help="Run id.")], home: HomeOpt = None,
              as_json: JsonOpt = False) -> None:
    """Print the run's log file."""
    from trialdeck.engine.runtime.recorder import LOG_NAME

    ws = workspace(home)
    record = find_run(open_store(home), run_id)
    path = ws.run_dir(record["id"]) / LOG_NAME
    text = path.read_text(errors="replace") if path.exists() else ""
    if as_json:
        emit({"id": record["id"], "path": str(path), "log": text})
    elif text:
        sys.stdout.write(text)
    else:
        err(f"{record['id']} has no log yet (it is {record['state']})")


@app.command("follow")
@handle_errors
def runs_follow(run_id: Annotated[str, typer.Argument(help="Run id.")], home: HomeOpt = None,
                as_json: JsonOpt = False) -> None:
    """Live epochs, losses, lr and events of a run until it ends."""
    ws = workspace(home)
    record = find_run(open_store(home), run_id)
    final = follow_run(ws, record["id"], as_json)
    exit_for(final)


@app.command("resume")
@handle_errors
def runs_resume(run_ids: Annotated[list[str], typer.Argument(help="Failed, cancelled or interrupted run id(s).")],
                home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Queue failed, cancelled or interrupted runs again, from their last checkpoint."""
    from trialdeck.engine.runtime import control
    from trialdeck.engine.runtime.client import ensure_engine, notify

    ws = workspace(home)
    store = open_store(home)
    records = [find_run(store, run_id) for run_id in run_ids]
    for record in records:  # all or none
        control.check_resumable(record)
    out = []
    for run_id in dict.fromkeys(r["id"] for r in records):  # each once, however it was written
        record, how = control.resume(store, run_id)
        out.append({"id": record["id"], "state": record["state"], "how": how})
    ensure_engine(ws, say=err)
    notify(ws)
    if as_json:
        emit(out if len(out) > 1 else out[0])
    else:
        for r in out:
            print(f"{r['id']} queued; it {r['how']}")


@app.command("rerun")
@handle_errors
def runs_rerun(
    run_ids: Annotated[list[str], typer.Argument(help="Run id(s) whose configuration to train again.")],
    priority: Annotated[int | None, typer.Option("--priority", help="Higher runs first (default: the old run's).")] = None,
    set_: SetOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a new run with the same configuration as each given run (theirs stay as they are);
    --set changes it, e.g. --set train.epochs=50 to train a study's best trial longer."""
    from trialdeck.engine.runtime import control
    from trialdeck.engine.runtime.client import ensure_engine, notify

    ws = workspace(home)
    store = open_store(home)
    check_range("--priority", priority, -control.PRIORITY_LIMIT, control.PRIORITY_LIMIT)
    records = control.rerun(store, run_ids, priority=priority, sets=set_ or [])
    ensure_engine(ws, say=err)
    notify(ws)
    if as_json:
        emit(records if len(records) > 1 else records[0])
    else:
        changed = f" with {', '.join(set_)}" if set_ else ""
        for old, r in zip(run_ids, records, strict=True):
            print(f"queued {r['id']}  {r['preset']}  (the configuration of {old}{changed})")
