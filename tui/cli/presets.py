"""`trialdeck presets`: browse, show, validate and compose presets."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trialdeck.engine.errors import BadInput, ExitCode, TrialdeckError
from trialdeck.tui.cli.common import (
    HomeOpt,
    JsonOpt,
    SetOpt,
    emit,
    err,
    handle_errors,
    roots,
    workspace,
)

app = typer.Typer(help="Browse, validate and compose presets.", no_args_is_help=True)


@app.command("list")
@handle_errors
def presets_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """List presets from the workspace's presets/ and the built-in catalogue."""
    from trialdeck.engine.presets import list_presets
    from trialdeck.engine.presets.loader import read_toml

    items = []
    for name, path in list_presets(roots(home)):
        try:
            raw = read_toml(path)
            description, tune = raw.get("description", ""), "tune" in raw
        except TrialdeckError as exc:
            description, tune = f"(invalid: {exc.message})", False
        items.append({"name": name, "group": name.split("/")[0] if "/" in name else "", "description": description,
                      "tune": tune, "path": str(path)})
    if as_json:
        emit(items)
        return
    width = max((len(i["name"]) for i in items), default=10)
    for i in items:
        mark = " [tune]" if i["tune"] else ""
        print(f"{i['name']:<{width}}  {i['description']}{mark}")


@app.command("show")
@handle_errors
def presets_show(
    name: Annotated[str, typer.Argument(help="Preset name (seed/step-decay) or path to a .toml file.")],
    set_: SetOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a preset's fully resolved configuration."""
    from trialdeck.engine.presets import compose, find_preset
    from trialdeck.engine.presets.loader import apply_set, validate

    r = roots(home)
    composed = compose(name, r)
    apply_set(composed, set_ or [])
    spec = validate(composed)
    _, path = find_preset(name, r)
    if as_json:
        emit({"name": spec.preset, "path": str(path), "extends": composed.chain[:-1], "hash": spec.content_hash,
              "config": spec.config()})
        return
    from trialdeck.engine.presets.authoring import config_toml

    print(f"# {spec.preset}  ({path})  hash {spec.content_hash}")
    if spec.description:
        print(f"# {spec.description}")
    print(config_toml(spec.config()))


@app.command("validate")
@handle_errors
def presets_validate(
    paths: Annotated[list[str], typer.Argument(help="Preset files or names to check.")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check preset files; prints one line per problem and exits 2 if any is invalid."""
    from trialdeck.engine.presets import resolve

    r = roots(home)
    results: list[dict[str, Any]] = []
    for p in paths:
        try:
            spec = resolve(p, [], r)
            results.append({"preset": p, "ok": True, "hash": spec.content_hash, "error": None})
        except BadInput as exc:
            problems = getattr(exc, "problems", [exc.message])
            results.append({"preset": p, "ok": False, "hash": None, "error": exc.message, "problems": problems})
    if as_json:
        emit(results)
    else:
        for item in results:
            if item["ok"]:
                print(f"ok  {item['preset']}")
            else:
                for line in item["problems"]:
                    err(line)
    if not all(i["ok"] for i in results):
        raise typer.Exit(int(ExitCode.BAD_INPUT))


@app.command("new")
@handle_errors
def presets_new(
    name: Annotated[str, typer.Argument(help="Name of the new preset, saved in the workspace's presets/ folder.")],
    from_: Annotated[list[str], typer.Option("--from", help="Parent preset(s), composed left to right.")],
    set_: SetOpt = None,
    description: Annotated[str, typer.Option("--description", "-d", help="One-line description.")] = "",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing preset of that name.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compose a new preset from parents and --set overrides, validate it, and save it."""
    from trialdeck.engine.presets import check_name
    from trialdeck.engine.presets.authoring import describe_overrides, overrides_of, write_preset

    check_name(name)
    ws = workspace(home)
    path, spec = write_preset(ws.presets_dir, name, parents=from_, sets=set_ or [], description=description,
                              force=force, roots=roots(home))
    # A later parent's own base may replace what an earlier parent chose (its model kind): say so.
    overrides = overrides_of(from_, roots(home))
    for line in describe_overrides(overrides):
        err(f"trialdeck: {line}")
    if as_json:
        emit({"name": name, "path": str(path), "hash": spec.content_hash, "config": spec.config(),
              "overrides": [{"parent": o.parent, "key": o.key, "old": o.old, "new": o.new, "from": o.earlier}
                            for o in overrides]})
    else:
        print(f"saved {name} to {path}")


@app.command("capture")
@handle_errors
def presets_capture(
    name: Annotated[str, typer.Argument(help="A script preset (name or .toml file) with, or without, [script.capture].")],
    log: Annotated[str, typer.Argument(help="A saved log (or a run id: its log), a CSV log, a TensorBoard event "
                                            "file or folder, or the W&B stand-in's lines.")],
    set_: SetOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What the preset's [script.capture] would record from a saved log: one row per step, its values."""

    from trialdeck.engine.capture.session import capture_file, capture_log
    from trialdeck.engine.presets import compose
    from trialdeck.engine.presets.loader import apply_set, validate

    composed = compose(name, roots(home))
    apply_set(composed, set_ or [])
    spec = validate(composed)
    if spec.script is None:
        raise BadInput(f"{name}: not a script preset; [script.capture] reads what a [script] program prints or logs")
    config = spec.script.capture
    path = _log_path(log, home)
    if path.is_dir() or path.suffix == ".csv" or "tfevents" in path.name or path.suffix == ".jsonl":
        if path.is_dir() or "tfevents" in path.name:
            from trialdeck.engine.capture.tboard import INSTALL, available

            if not available():
                raise BadInput(f"{log}: reading TensorBoard event files needs the tensorboard extra: {INSTALL}")
        rows = capture_file(config, path)
    else:
        try:
            text = path.read_text(errors="replace")
        except OSError as exc:
            raise BadInput(f"{log}: {exc.strerror or exc}") from None
        rows = capture_log(config, text)
    names = list(dict.fromkeys(k for row in rows for k in row if k not in ("step", "epoch")))
    if as_json:
        emit({"names": names, "steps": rows})
        return
    if not rows:
        err(f"trialdeck: nothing captured from {log} (with output = {config.output!r}); README \"Metrics from a program "
            "as it is\" says what the scanner takes, and [script.capture] patterns add your own")
        return
    _print_rows(names, rows)


def _log_path(log: str, home):
    """LOG as a path, or a run id's log file."""
    from pathlib import Path

    path = Path(log).expanduser()
    if path.exists():
        return path
    from trialdeck.engine.runs.folder import LOG_NAME
    from trialdeck.engine.workspace import RUN_ID_RE

    if RUN_ID_RE.fullmatch(log):
        run_log = workspace(home).runs_dir / log / LOG_NAME
        if run_log.exists():
            return run_log
    raise BadInput(f"{log}: no such file (nor a run with a log)")


def _print_rows(names: list[str], rows: list[dict]) -> None:
    from trialdeck.tui.live import value_text

    widths = {n: max(len(n), *(len(value_text(r.get(n))) for r in rows)) for n in names}
    print(f"{'step':>8} {'epoch':>6}  " + "  ".join(f"{n:>{widths[n]}}" for n in names))
    for row in rows:
        epoch = "-" if row.get("epoch") is None else value_text(row["epoch"])
        print(f"{value_text(row['step']):>8} {epoch:>6}  " + "  ".join(f"{value_text(row.get(n)):>{widths[n]}}"
                                                                          for n in names))
    err(f"{len(rows)} steps; names: {', '.join(names)}")
