"""`trialdeck runs export | import | archive | unarchive`: runs out of and into a workspace, and the archive.

Registered on the `runs` group (tui/cli/runs.py). `export` writes per-epoch histories (csv,
json), one run's weights (--model), or whole-run records (--format records: one JSON object per
line, what `runs import` reads; engine/catalogue/records.py holds the format). Long work shows
its progress on stderr when that is a terminal, and nothing when piped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from trialdeck.engine.errors import BadInput
from trialdeck.tui.cli.common import HomeOpt, JsonOpt, emit, err, find_run, handle_errors, open_store, parse_date, workspace
from trialdeck.tui.cli.runs import _distinct_runs, app

EXPORT_FORMATS = ("csv", "json", "records")


def _progress(what: str) -> Any:
    """A callback(done, total) printing `what: done of total` over itself on a terminal's stderr (or nothing)."""
    if not sys.stderr.isatty():
        return None

    def say(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{what}: {done:,} of {total:,}{end}")
        sys.stderr.flush()

    return say


@app.command("export")
@handle_errors
def runs_export(
    run_ids: Annotated[list[str] | None, typer.Argument(help="Run id(s).", show_default=False)] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="csv or json: per-epoch histories (default: from "
                                            "--output's suffix, else csv; json with --json); records: whole runs, "
                                            "one JSON object per line, for `runs import`.", show_default=False)] = None,
    every: Annotated[bool, typer.Option("--all", help="With --format records: every finished run (archived too).")] = False,
    since: Annotated[str | None, typer.Option("--since", help="With --format records: runs created on or after DATE "
                                              "(2025-01-31, or 2025-01-31T18:30).", show_default=False)] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="With --format records: runs with this tag "
                                                  "(repeatable: all of them).", show_default=False)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.",
                                                show_default=False)] = None,
    model: Annotated[Path | None, typer.Option("--model", help="Write the run's kept weights to PATH (a state_dict, "
                                               "torch.save) and its resolved config to PATH's stem + .toml beside it.",
                                               show_default=False)] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-epoch histories (one row per run and epoch) as CSV or JSON; whole runs as records (--format
    records, for `runs import` on this or another box); or, with --model, one run's trained weights.

    Load exported weights back with
    `from trialdeck.engine import load_model; model = load_model("PATH")`.
    """
    run_ids = run_ids or []
    store = open_store(home)
    selecting = every or since is not None or tag
    if fmt == "records":
        _export_records(store, run_ids, every, since, tag or [], output, as_json)
        return
    if selecting:
        raise BadInput("--all, --since and --tag select runs for --format records; csv and json take run ids")
    if not run_ids:
        raise BadInput("runs export needs run ids (trialdeck runs export r3 r7), or --format records with --all, "
                       "--since DATE or --tag T")
    records = _distinct_runs(store, run_ids)
    if model is not None:
        if len(records) != 1 or fmt is not None or output is not None:
            raise BadInput("--model takes one run and no --format or --output: trialdeck runs export r3 --model model.pt")
        from trialdeck.engine.training.export import export_model  # deferred: imports torch

        done = export_model(workspace(home), records[0], model)
        if as_json:
            emit(done)
        else:
            kept = f"kept epoch {done['kept_epoch']}" if done["kept_epoch"] is not None else \
                f"epoch {done['checkpoint_epoch']} (the run kept no epoch's weights: it is {records[0]['state']})"
            print(f"{done['id']}: weights of {kept} -> {done['weights']}\n  config -> {done['config']}")
        return
    fmt = _export_format(fmt, output, as_json)
    from trialdeck.engine.catalogue.compare import history_rows

    columns, rows = history_rows(records)
    if fmt == "json":
        import orjson

        data = orjson.dumps(rows, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    else:
        import csv
        import io

        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        data = text.getvalue().encode()
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    from trialdeck.engine.workspace import atomic_write

    _check_output(output)
    atomic_write(output, data)
    summary = {"output": str(output), "format": fmt, "runs": [r["id"] for r in records], "rows": len(rows)}
    if as_json:
        emit(summary)
    else:
        err(f"wrote {len(rows)} rows of {len(records)} run(s) to {output}")


def _export_format(fmt: str | None, output: Path | None, as_json: bool) -> str:
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise BadInput(f"--format {fmt!r}: allowed: {', '.join(EXPORT_FORMATS)}")
    if as_json and output is None:
        if fmt == "csv":
            raise BadInput("--json prints JSON on stdout; with --format csv, give --output FILE too")
        return "json"
    if fmt is None:
        return "json" if output is not None and output.suffix.lower() == ".json" else "csv"
    return fmt


def _check_output(output: Path) -> None:
    if not output.parent.is_dir():
        raise BadInput(f"--output {output}: folder {output.parent} does not exist")


def _export_records(store, run_ids: list[str], every: bool, since: str | None, tags: list[str],
                    output: Path | None, as_json: bool) -> None:
    """Whole runs as records: the named ones (each must have finished), or a selection of finished ones."""
    from trialdeck.engine.catalogue.records import export_lines
    from trialdeck.engine.catalogue.store import check_tags
    from trialdeck.engine.types import RunState

    if run_ids and (every or since is not None or tags):
        raise BadInput("give run ids or --all/--since/--tag, not both")
    if not run_ids and not (every or since is not None or tags):
        raise BadInput("--format records needs run ids, or --all, --since DATE or --tag T")
    if as_json and output is None:
        raise BadInput("--format records writes JSON lines on stdout; with --json, give --output FILE too")
    skipped = [0]
    if run_ids:
        runs: Iterable[dict] = _distinct_runs(store, run_ids)
        for run in runs:
            if not RunState(run["state"]).terminal:
                raise BadInput(f"{run['id']} is {run['state']}: records hold finished runs (wait for it, or cancel it)")
    else:
        wanted = check_tags(tags, "--tag")
        start = None if since is None else parse_date("--since", since)

        def finished() -> Iterator[dict]:
            for run in store.iter_runs(archived=None, since=start, tags=wanted):
                if RunState(run["state"]).terminal:
                    yield run
                else:
                    skipped[0] += 1

        runs = finished()
    count = _write_lines(export_lines(runs), output)
    if skipped[0]:
        err(f"trialdeck: left out {skipped[0]} unfinished run(s) (records hold finished runs)")
    if as_json:
        emit({"output": str(output), "format": "records", "runs": count})
    elif output is not None:
        err(f"wrote {count:,} run record(s) to {output}")


def _write_lines(lines: Iterable[bytes], output: Path | None) -> int:
    """Lines to stdout, or to a temp file beside `output` replaced at the end (never half-written)."""
    if output is None:
        out = sys.stdout.buffer
        count = 0
        for line in lines:
            out.write(line)
            count += 1
        out.flush()
        return count
    import os
    import secrets

    _check_output(output)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        count = 0
        with open(tmp, "wb") as f:
            for line in lines:
                f.write(line)
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return count


@app.command("import")
@handle_errors
def runs_import(
    file: Annotated[str, typer.Argument(help="A records file (`runs export --format records`), or - for stdin.")],
    again: Annotated[bool, typer.Option("--again", help="Import a file imported before once more (new runs again).")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add the finished runs of a records file under new ids (each keeps its old id as imported_from).

    Every line is checked first: a malformed line or an unfinished state stops the import with its
    line number, and nothing is added. Runs are then added in batches of up to 256, each committed
    whole: after a kill, the same command continues after the last committed batch.
    """
    from trialdeck.engine.catalogue.records import import_records

    ws = workspace(home)
    store = open_store(home)
    path, label, spooled = _import_source(file, ws)
    try:
        done = import_records(store, path, label=label, again=again, progress=_progress(f"importing {label}"))
    finally:
        if spooled:
            path.unlink(missing_ok=True)
    out = {"file": label, "records": done.records, "added": done.added, "skipped": done.skipped,
           "first": done.first, "last": done.last}
    if as_json:
        emit(out)
    elif done.added:
        again_note = f" ({done.skipped:,} were imported before)" if done.skipped else ""
        print(f"imported {done.added:,} run(s) from {label}: {done.first} to {done.last}{again_note}")
    elif done.records:
        print(f"{label} was imported before ({done.skipped:,} runs); --again imports it once more")
    else:
        print(f"{label} holds no records")


def _import_source(file: str, ws) -> tuple[Path, str, bool]:
    """The file to read (stdin is saved to a temp file in the workspace first: it is read twice)."""
    if file == "-":
        import os
        import secrets
        import shutil

        path = ws.root / f".import-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        with open(path, "wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        return path, "stdin", True
    path = Path(file)
    if not path.is_file():
        raise BadInput(f"{file}: no such file (give a records file from `runs export --format records`, or - for stdin)")
    return path, file, False


# ----------------------------------------------------------------------------- archive


def _numbers(store, run_ids: list[str]) -> list[int]:
    return [int(find_run(store, run_id)["id"][1:]) for run_id in run_ids]


@app.command("archive")
@handle_errors
def runs_archive(
    run_ids: Annotated[list[str] | None, typer.Argument(help="Finished run id(s).", show_default=False)] = None,
    before: Annotated[str | None, typer.Option("--before", help="Finished runs that ended before DATE (2025-01-31, "
                                               "or 2025-01-31T18:30).", show_default=False)] = None,
    study: Annotated[str | None, typer.Option("--study", help="Finished runs of this study.", show_default=False)] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Archive finished runs: out of `runs list` and the TUI's table, still shown by `runs show`,
    `runs list --archived` and the TUI's filter word `archived`; `runs unarchive` brings them back."""
    from trialdeck.engine.catalogue.records import archive
    from trialdeck.engine.types import RunState

    store = open_store(home)
    if not run_ids and before is None and study is None:
        raise BadInput("runs archive needs run ids, --before DATE or --study S")
    numbers = None
    if run_ids:
        records = [find_run(store, run_id) for run_id in run_ids]
        for record in records:
            if not RunState(record["state"]).terminal:
                raise BadInput(f"{record['id']} is {record['state']}: only finished runs are archived")
        numbers = [int(r["id"][1:]) for r in records]
    if study is not None and store.get_study(study) is None and not store.list_runs(studies=[study], omit=("config",
                                                                                                          "history")):
        raise BadInput(f"--study {study!r}: no such study in this workspace; see `trialdeck studies list`")
    done = archive(store, before=None if before is None else parse_date("--before", before), study=study,
                   numbers=numbers)
    if as_json:
        emit({"archived": done.changed, "skipped_active": done.skipped_active})
        return
    print(f"archived {len(done.changed):,} run(s)" + (f": {', '.join(done.changed)}" if len(done.changed) <= 10 else ""))
    if done.skipped_active:
        err(f"trialdeck: left {done.skipped_active} run(s) of studies still running where they are")


@app.command("unarchive")
@handle_errors
def runs_unarchive(
    run_ids: Annotated[list[str] | None, typer.Argument(help="Archived run id(s).", show_default=False)] = None,
    study: Annotated[str | None, typer.Option("--study", help="Every archived run of this study.",
                                              show_default=False)] = None,
    every: Annotated[bool, typer.Option("--all", help="Every archived run.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Bring archived runs back into `runs list` and the TUI's table."""
    from trialdeck.engine.catalogue.records import unarchive

    store = open_store(home)
    if not run_ids and study is None and not every:
        raise BadInput("runs unarchive needs run ids, --study S or --all")
    changed = unarchive(store, study=study, numbers=_numbers(store, run_ids) if run_ids else None, everything=every)
    if as_json:
        emit({"unarchived": changed})
    else:
        print(f"unarchived {len(changed):,} run(s)" + (f": {', '.join(changed)}" if len(changed) <= 10 else ""))
