"""The `trialdeck` command line: the outer shell over the engine and the TUI.

One Typer sub-app per group. Only Typer and the light engine modules are
imported at the top, so `trialdeck --help` stays fast: torch, optuna and
textual are imported inside the commands that need them. Data goes to stdout,
diagnostics to stderr; `--json` prints JSON and nothing else. A known error is
one plain line and an exit code from trialdeck.engine.errors.ExitCode; a traceback only
with TRIALDECK_DEBUG=1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from trialdeck.engine.errors import ExitCode
from trialdeck.tui.cli import data, engine, presets, queue, run, runs, studies, tune
from trialdeck.tui.cli.common import HomeOpt, _state, err, handle_errors, workspace

app = typer.Typer(
    name="trialdeck",
    help="Keyboard-driven experiment manager for PyTorch training runs.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
    elif ctx.invoked_subcommand in ("queue", "runs", "studies") and not any(a in sys.argv for a in ("-h", "--help")):
        # Reading commands bring a dead engine back when work waits for it (done by workspace(),
        # once the subcommand's own --home is known). `run` and `tune` start it themselves once
        # their input is valid: a refused command starts nothing.
        _state["revive"] = True


@app.command("tui")
@handle_errors
def tui_cmd(
    home: HomeOpt = None,
    storage: Annotated[list[str] | None, typer.Option(
        "--storage", help="Also show the studies of this Optuna storage, trialdeck's or not, read-only: sqlite:///PATH, "
                          "postgresql://..., mysql://..., or a journal file's path (repeatable).",
        show_default=False)] = None,
) -> None:
    """Open the terminal UI (the same as `trialdeck` with no command)."""
    _open_tui(home, storage or [])


def _open_tui(home: Path | None, storages: list[str] | None = None) -> None:
    if not sys.stdout.isatty() and os.environ.get("TRIALDECK_FORCE_TUI") != "1":
        err("trialdeck: the TUI needs a terminal; use a subcommand (trialdeck --help) for scripts")
        raise typer.Exit(int(ExitCode.BAD_INPUT))
    urls = []
    if storages:
        # Deferred: Optuna loads only when a storage is named. Each opens now, so one that cannot is
        # one line before the screen takes the terminal.
        from trialdeck.engine.tuning import storages as optuna_storages

        for text in storages:
            url = optuna_storages.parse(text)
            optuna_storages.study_names(url)
            urls.append(url)
    # Deferred: textual is only needed when the screen opens.
    from trialdeck.tui.app import make_app

    make_app(workspace(home), storages=urls).run()


app.add_typer(presets.app, name="presets")
run.register(app)
app.add_typer(queue.app, name="queue")
app.add_typer(runs.app, name="runs")
app.add_typer(engine.app, name="engine")
tune.register(app)
app.add_typer(studies.app, name="studies")
app.add_typer(data.app, name="data")


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

