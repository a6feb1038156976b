"""`trialdeck runs`: list, show, logs and follow runs; resume or rerun them; compare, tag, note and export them."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from trialdeck.engine.errors import BadInput
from trialdeck.tui.cli.common import (
    STATES,
    HomeOpt,
    JsonOpt,
    SetOpt,
    check_range,
    emit,
    emit_stream,
    err,
    exit_for,
    find_run,
    handle_errors,
    metric_text,
    open_store,
    print_run_summary,
    workspace,
)
from trialdeck.tui.cli.run import follow_run

app = typer.Typer(help="Inspect runs: list, show, logs, follow; resume or rerun them; compare, tag, note and export them.",
                  no_args_is_help=True)


@app.command("list")
@handle_errors
def runs_list(
    status: Annotated[str | None, typer.Option("--status", help=f"Only runs in this state: {', '.join(STATES)}.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only runs with this tag (repeatable: all of them).",
                                                  show_default=False)] = None,
    archived: Annotated[bool, typer.Option("--archived", help="Only archived runs (`runs archive`).")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """All runs (archived ones with --archived), by run number: one line each, or with --json a
    JSON list of whole records, one per line, written as they are read."""
    from trialdeck.engine.catalogue.store import check_tags

    wanted = check_tags(tag or [], "--tag")
    if status is not None and status not in STATES:
        import difflib

        hint = difflib.get_close_matches(status, STATES, n=1)
        raise BadInput(f"--status {status!r} is not a run state; allowed: {', '.join(STATES)}"
                       + (f"; did you mean {hint[0]!r}?" if hint else ""))
    runs = open_store(home).iter_runs(status, tags=wanted, archived=archived)
    if as_json:
        emit_stream(runs)
        return
    from trialdeck.engine.types import kept_epoch

    shown = 0
    for r in runs:
        shown += 1
        hist = r.get("history") or []
        last = hist[-1] if hist else None
        kept = kept_epoch(r)
        entry = next((h for h in hist if h.get("epoch") == kept), None)
        metric = f"kept epoch {kept}: {metric_text(entry)}" if entry is not None else ""
        if last is not None and entry is not last:  # (a script's epochs may lack val_acc: metric_text picks)
            metric += ("  " if metric else "") + f"last: {metric_text(last)}"
        tags = "  #" + " #".join(r["tags"]) if r.get("tags") else ""
        print(f"{r['id']:<7} {r['state']:<13} {r['preset']:<28} {len(hist):>4} ep  {metric}{tags}")
    if not shown:
        print("no archived runs" if archived else "no runs")


@app.command("show")
@handle_errors
def runs_show(run_id: Annotated[str, typer.Argument(help="Run id, e.g. r12.")], home: HomeOpt = None,
              as_json: JsonOpt = False) -> None:
    """A run's full record: config, history, events, error, tags, note and its checkpoint file."""
    record = find_run(open_store(home), run_id)
    checkpoint = workspace(home).checkpoint_path(record["id"])
    record["checkpoint"] = str(checkpoint) if checkpoint.exists() else None
    if as_json:
        emit(record)
        return
    print_run_summary(record)
    if record.get("tags"):
        print(f"  tags: {', '.join(record['tags'])}")
    if record.get("note"):
        print(f"  note: {record['note']}")
    if record.get("archived"):
        print(f"  archived: listed by `runs list --archived`; `trialdeck runs unarchive {record['id']}` brings it back")
    if record.get("imported_from"):
        print(f"  imported from {record['imported_from']}" + (f" (study {record['imported_study']})"
                                                              if record.get("imported_study") else ""))
    if record["checkpoint"]:
        print(f"  checkpoint: {record['checkpoint']}  (`trialdeck runs export {record['id']} --model PATH` writes its weights)")
    print_history(record)
    for ev in record.get("events") or []:
        print(f"  [{ev.get('epoch') or '-'}] {ev['kind']}: {ev['message']}")


def print_history(record: dict) -> None:
    """The per-epoch table, the kept epoch and the monitor's best marked."""
    from trialdeck.engine.types import kept_epoch
    from trialdeck.tui.live import value_text

    hist = record.get("history") or []
    if not hist:
        return
    kept, best = kept_epoch(record), (record.get("summary") or {}).get("best_epoch")
    columns: tuple[tuple[str, int, str], ...] = (
        ("epoch", 5, "d"), ("train_loss", 10, ".4f"), ("val_loss", 10, ".4f"),
        ("val_mae", 8, ".4f") if any("val_mae" in h for h in hist) else ("val_acc", 8, ".4f"),  # a regression's
        ("lr", 9, ".3g"), ("seconds", 8, ".2f"))
    if (record.get("config") or {}).get("script"):  # a script's history holds the names it reported
        keys = dict.fromkeys(k for h in hist for k in h if k != "epoch")
        columns = (("epoch", 5, "d"), *((k, max(10, len(k)), ".4f") for k in keys))
    script = bool((record.get("config") or {}).get("script"))
    print("  " + "  ".join(f"{name:>{width}}" for name, width, _ in columns))
    for h in hist:
        cells = [f"{value_text(h.get(k)):>{w}}" if script and k != "epoch"  # a script's values, whatever their scale
                 else format(h[k], f">{w}{fmt}") if isinstance(h.get(k), (int, float))
                 else f"{'-' if h.get(k) is None else str(h[k])[:w]:>{w}}" for k, w, fmt in columns]
        marks = ", ".join(m for m, e in (("kept", kept), ("best", best)) if e is not None and e == h.get("epoch"))
        print(("  " + "  ".join(cells) + "  " + marks).rstrip())


@app.command("logs")
@handle_errors
def runs_logs(run_id: Annotated[str, typer.Argument(help="Run id.")],
              follow: Annotated[bool, typer.Option("--follow", "-f", help="Then print what is appended until the "
                                                   "run ends (a script run's own output too); Ctrl-C stops.")] = False,
              home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Print the run's log file."""
    from trialdeck.engine.runs.folder import LOG_NAME

    ws = workspace(home)
    store = open_store(home)
    record = find_run(store, run_id)
    path = ws.run_dir(record["id"]) / LOG_NAME
    if follow:
        if as_json:
            raise BadInput("--json prints the log once; drop --follow (or --json)")
        _follow_log(store, record["id"], path)
        return
    text = path.read_text(errors="replace") if path.exists() else ""
    if as_json:
        emit({"id": record["id"], "path": str(path), "log": text})
    elif text:
        sys.stdout.write(text)
    else:
        err(f"{record['id']} has no log yet (it is {record['state']})")


def _follow_log(store, run_id: str, path) -> None:
    """`runs logs -f`: the log so far, then what is appended, in 64 KB reads (a script may
    print thousands of lines a second), until the run ends as `runs follow` says it does
    (reviving a dead engine on the way, as `runs follow` does)."""
    from trialdeck.engine.runtime.control.client import follow_ended, revive_for

    offset, checked, ended = 0, 0.0, False
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                while chunk := f.read(1 << 16):
                    sys.stdout.buffer.write(chunk)
                    offset += len(chunk)
            sys.stdout.flush()
        except FileNotFoundError:  # queued: no log yet
            pass
        if ended:
            return
        if time.monotonic() - checked >= 1.0:  # the catalogue now and then, the file often
            checked = time.monotonic()
            record = store.get_run(run_id)
            ended = record is None or follow_ended(store.workspace, record)
            if ended:
                continue  # one last read: what was written before it ended
            revive_for(store.workspace, record)
        time.sleep(0.2)


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
    from trialdeck.engine.runtime.control import actions as control
    from trialdeck.engine.runtime.control.client import ensure_engine, notify

    ws = workspace(home)
    store = open_store(home)
    records = [find_run(store, run_id) for run_id in run_ids]
    for record in records:  # all or none
        control.check_resumable(record)
    out = []
    for run_id in dict.fromkeys(r["id"] for r in records):  # each once, however it was written
        queued, how = control.resume(store, run_id)
        out.append({"id": queued["id"], "state": queued["state"], "how": how})
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
    from trialdeck.engine.runtime.control import actions as control
    from trialdeck.engine.runtime.control.client import ensure_engine, notify

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


# ----------------------------------------------------------------------------- compare, tags, notes, export


def _distinct_runs(store, run_ids: list[str]) -> list[dict]:
    """Each run once, in the order first given (r3 and 3 are one run)."""
    records: dict[str, dict] = {}
    for run_id in run_ids:
        record = find_run(store, run_id)
        records.setdefault(record["id"], record)
    return list(records.values())


def _cell(value: Any) -> str:
    from trialdeck.tui.live import cell

    return cell(value, 36)


@app.command("compare")
@handle_errors
def runs_compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids, e.g. r3 r7 r12.")],
    metric: Annotated[str | None, typer.Option("--metric", help="The metric whose best value to show "
                                               "(default: each run's monitor, else val_loss).")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Runs side by side: each run's summary and only the config keys that differ."""
    from trialdeck.engine.catalogue import compare

    records = _distinct_runs(open_store(home), run_ids)
    if len(records) < 2:
        raise BadInput(f"runs compare needs two or more different runs, got {', '.join(r['id'] for r in records)}")
    if metric is not None:
        known = compare.metric_names(records)
        if metric not in known:
            raise BadInput(f"--metric {metric!r}: allowed: {', '.join(known) or 'none (no epoch recorded yet)'}")
    out = compare.comparison(records, metric)
    if as_json:
        emit(out)
        return
    from trialdeck.tui.live import fmt_seconds

    runs = out["runs"]

    def each(fn) -> list[str]:
        return [fn(r["summary"], r) for r in runs]

    rows = [
        ("preset", each(lambda s, r: r["preset"] or "-")),
        ("state", each(lambda s, r: r["state"])),
        (f"best {metric}" if metric else "best", each(lambda s, r: _cell(s["best"]) + ("" if metric else f" {s['metric']}"))),
        ("at epoch", each(lambda s, r: _cell(s["best_epoch"]))),
        ("kept epoch", each(lambda s, r: _cell(s["kept_epoch"]))),
        ("epochs", each(lambda s, r: str(s["epochs"]))),
        ("time", each(lambda s, r: fmt_seconds(s["seconds"]) or "-")),
    ]
    if any(r["tags"] for r in runs):
        rows.append(("tags", each(lambda s, r: ", ".join(r["tags"]) or "-")))
    differing = [(key, [_cell(v) for v in values]) for key, values in out["differs"].items()]
    ids = [r["id"] for r in runs]
    label_w = max(len(k) for k, _ in rows + differing + [("", [])])
    widths = [max(len(i), *(len(cells[n]) for _, cells in rows + differing)) for n, i in enumerate(ids)]

    def line(label: str, cells: list[str]) -> str:
        return ("  ".join([f"{label:<{label_w}}", *(f"{c:<{w}}" for c, w in zip(cells, widths))])).rstrip()

    print(line("", ids))
    for label, cells in rows:
        print(line(label, cells))
    print(f"config keys that differ: {len(differing)}" if differing else "the configs are the same")
    for key, cells in differing:
        print(line(key, cells))


@app.command("tag")
@handle_errors
def runs_tag(run_id: Annotated[str, typer.Argument(help="Run id.")],
             tags: Annotated[list[str], typer.Argument(help="One or more tags (no spaces or commas).")],
             home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Tag a run, to find it again with `runs list --tag` (or `/` in the TUI)."""
    store = open_store(home)
    record = store.tag_run(find_run(store, run_id)["id"], add=tags)
    _print_tags(record, as_json)


@app.command("untag")
@handle_errors
def runs_untag(run_id: Annotated[str, typer.Argument(help="Run id.")],
               tags: Annotated[list[str], typer.Argument(help="Tags to remove.")],
               home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Remove tags from a run (a tag it does not have is said so, not an error)."""
    from trialdeck.engine.catalogue.store import check_tags

    store = open_store(home)
    before = find_run(store, run_id)
    missing = [t for t in check_tags(tags) if t not in (before.get("tags") or ())]
    record = store.tag_run(before["id"], remove=tags)
    if missing and not as_json:
        err(f"trialdeck: {record['id']} had no tag {', '.join(map(repr, missing))}")
    _print_tags(record, as_json)


def _print_tags(record: dict, as_json: bool) -> None:
    if as_json:
        emit({"id": record["id"], "tags": record.get("tags") or []})
    else:
        print(f"{record['id']} tags: {', '.join(record.get('tags') or []) or '(none)'}")


@app.command("note")
@handle_errors
def runs_note(run_id: Annotated[str, typer.Argument(help="Run id.")],
              text: Annotated[list[str], typer.Argument(help="The note (the words are joined by spaces); \"\" removes it.")],
              home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Attach a note to a run (replacing its note); `runs show` and the TUI show it."""
    store = open_store(home)
    record = store.set_note(find_run(store, run_id)["id"], " ".join(text))
    if as_json:
        emit({"id": record["id"], "note": record.get("note")})
    else:
        print(f"{record['id']} note: {record['note']}" if record.get("note") else f"{record['id']}: note removed")


# `runs export`, `runs import`, `runs archive` and `runs unarchive` live in tui/cli/records.py.
from trialdeck.tui.cli import records as _records  # noqa: E402,F401  (registers them on `app`)
