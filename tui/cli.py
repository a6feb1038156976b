"""The `trialdeck` command line: the outer shell over the engine and the TUI.

One Typer sub-app per group. Only Typer and the light engine modules are
imported at the top, so `trialdeck --help` stays fast: torch, optuna and
textual are imported inside the commands that need them. Data goes to stdout,
diagnostics to stderr; `--json` prints JSON and nothing else. A known error is
one plain line and an exit code from engine.errors.ExitCode; a traceback only
with TRIALDECK_DEBUG=1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from engine.errors import BadInput, ExitCode, TrialdeckError
from tui.cli_common import HomeOpt, JsonOpt, SetOpt, _state, emit, err, handle_errors, roots, workspace

app = typer.Typer(
    name="trialdeck",
    help="Keyboard-driven experiment manager for PyTorch training runs.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
presets_app = typer.Typer(help="Browse, validate and compose presets.", no_args_is_help=True)
app.add_typer(presets_app, name="presets")

@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    home: HomeOpt = None,
) -> None:
    """trialdeck: compose presets, queue runs, watch them, browse tuning results.

    With no command, opens the TUI.
    """
    _state["home"] = home
    if ctx.invoked_subcommand is None:
        _open_tui(home)
    elif ctx.invoked_subcommand in ("run", "queue", "runs", "tune", "studies") and not any(a in sys.argv for a in ("-h", "--help")):
        _state["revive"] = True  # done by workspace(), once the subcommand's own --home is known


@app.command("tui")
@handle_errors
def tui_cmd(home: HomeOpt = None) -> None:
    """Open the terminal UI (the same as `trialdeck` with no command)."""
    _open_tui(home)


def _open_tui(home: Path | None) -> None:
    if not sys.stdout.isatty() and os.environ.get("TRIALDECK_FORCE_TUI") != "1":
        err("trialdeck: the TUI needs a terminal; use a subcommand (trialdeck --help) for scripts")
        raise typer.Exit(int(ExitCode.BAD_INPUT))
    # Deferred: textual is only needed when the screen opens.
    from tui.app import make_app

    make_app(workspace(home)).run()


# ---------------------------------------------------------------- presets


@presets_app.command("list")
@handle_errors
def presets_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """List presets from the workspace's presets/ and the built-in catalogue."""
    from engine.presets import list_presets
    from engine.presets.loader import read_toml

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


@presets_app.command("show")
@handle_errors
def presets_show(
    name: Annotated[str, typer.Argument(help="Preset name (seed/step-decay) or path to a .toml file.")],
    set_: SetOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a preset's fully resolved configuration."""
    from engine.presets import compose, find_preset
    from engine.presets.loader import apply_set, validate

    r = roots(home)
    composed = compose(name, r)
    apply_set(composed, set_ or [])
    spec = validate(composed)
    _, path = find_preset(name, r)
    if as_json:
        emit({"name": spec.preset, "path": str(path), "extends": composed.chain[:-1], "hash": spec.content_hash,
              "config": spec.config()})
        return
    from engine.presets.authoring import config_toml

    print(f"# {spec.preset}  ({path})  hash {spec.content_hash}")
    if spec.description:
        print(f"# {spec.description}")
    print(config_toml(spec.config()))


@presets_app.command("validate")
@handle_errors
def presets_validate(
    paths: Annotated[list[str], typer.Argument(help="Preset files or names to check.")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check preset files; prints one line per problem and exits 2 if any is invalid."""
    from engine.presets import resolve

    r = roots(home)
    results = []
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


@presets_app.command("new")
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
    from engine.presets import check_name
    from engine.presets.authoring import write_preset

    check_name(name)
    ws = workspace(home)
    path, spec = write_preset(ws.presets_dir, name, parents=from_, sets=set_ or [], description=description,
                              force=force, roots=roots(home))
    if as_json:
        emit({"name": name, "path": str(path), "hash": spec.content_hash, "config": spec.config()})
    else:
        print(f"saved {name} to {path}")


# ---------------------------------------------------------------- train


@app.command("train")
@handle_errors
def train_cmd(
    preset: Annotated[str, typer.Argument(help="Preset name or .toml path.")],
    set_: SetOpt = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a preset in the foreground, in this process (no engine), and print its record."""
    from engine.presets import resolve

    sets = list(set_ or [])
    if device:
        sets.append(f"train.device={json.dumps(device)}")
    ws = workspace(home)
    spec = resolve(preset, sets, roots(home))
    from engine.foreground import run_foreground  # deferred: imports torch

    progress = None
    if sys.stderr.isatty():
        from tui.progress import EpochProgress

        progress = EpochProgress(spec.train.epochs, spec.preset)
    try:
        record = run_foreground(ws, spec, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    if as_json:
        emit(record)
    else:
        _print_run_summary(record)
    if record["state"] not in ("completed", "early_stopped"):
        raise typer.Exit(int(ExitCode.JOB_FAILED))


def _print_run_summary(record: dict) -> None:
    hist = record.get("history") or []
    last = hist[-1] if hist else {}
    best = max((h["val_acc"] for h in hist), default=None)
    where = f"  on {record['device']}" if record.get("device") else ""
    print(f"run {record['id']}  {record['preset']}  {record['state']}{where}")
    if last:
        print(f"  epochs {last['epoch']}  val_loss {last['val_loss']:.4f}  val_acc {last['val_acc']:.4f}"
              f"  best val_acc {best:.4f}  lr {last['lr']:.3g}")
    for ev in record.get("events") or []:
        if ev["kind"] in ("early_stopped", "failed", "nan_loss", "pruned", "cancelled"):
            print(f"  {ev['kind']}: {ev['message']}")
    if record.get("error"):
        print(f"  error: {record['error']}")


from tui.cli_engine import register as _register_engine  # noqa: E402 - after the root app exists
from tui.cli_tune import register as _register_tune  # noqa: E402

_register_engine(app)
_register_tune(app)


def main() -> None:
    import importlib

    import typer.core

    # Recent Typer vendors click as typer._click; older releases use click itself.
    vendored = getattr(typer.core, "_click", None)
    click = importlib.import_module(f"{vendored.__name__ if vendored else 'click'}.exceptions")
    try:
        code = app(standalone_mode=False, prog_name="trialdeck")
    except click.UsageError as exc:  # a mistyped command or option: one line, like every other user mistake
        if type(exc).__name__ == "NoArgsIsHelpError":  # `trialdeck engine`: its help
            err(exc.format_message())
        else:
            where = exc.ctx.command_path if exc.ctx is not None else "trialdeck"
            err(f"trialdeck: {exc.format_message().rstrip('.')}; see `{where} --help`")
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        err(f"trialdeck: {exc.format_message()}")
        sys.exit(exc.exit_code)
    except click.Abort:
        err("trialdeck: aborted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
