"""Shared pieces of the CLI: options, output helpers, the error-to-exit-code wrapper, and what
several command groups use (the store, a run by id, a run's summary)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from trialdeck.engine.errors import BadInput, ExitCode, TrialdeckError, exit_code_for
from trialdeck.engine.types import RunState, finite

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Workspace folder (default: $TRIALDECK_HOME, else ~/.trialdeck).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout and nothing else.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a preset key with a TOML value: --set train.epochs=5 (repeatable).",
                 show_default=False),
]

_state: dict[str, Any] = {"home": None}


def err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def emit(data: Any) -> None:
    """JSON on stdout. orjson: `runs list --json` over 10,000 runs must stay well under a second."""
    import orjson

    sys.stdout.buffer.write(orjson.dumps(data, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
                                         | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY))
    sys.stdout.flush()


def emit_stream(items: Iterable[Any]) -> None:
    """A JSON list on stdout written as `items` come (one item per line), so a list of 100,000 runs
    never sits in memory whole; `[]` when empty."""
    import orjson

    out = sys.stdout.buffer
    sep = b"[\n"
    for item in items:
        out.write(sep)
        out.write(orjson.dumps(item, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY))
        sep = b",\n"
    out.write(b"[]\n" if sep == b"[\n" else b"\n]\n")
    out.flush()


def parse_date(option: str, text: str) -> float:
    """`2025-01-31` (midnight, local time) or `2025-01-31T18:30` as seconds since 1970; BadInput otherwise."""
    import datetime

    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(f"{option} {text!r}: allowed: a date like 2025-01-31, or a time like 2025-01-31T18:30") from None
    return when.timestamp() if when.tzinfo else when.astimezone().timestamp()


def handle_errors(fn: Callable) -> Callable:
    """Map known errors to one line and an exit code; hide tracebacks unless debugging."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except TrialdeckError as exc:
            if os.environ.get("TRIALDECK_DEBUG") == "1":
                raise
            err(f"trialdeck: {exc.message}")
            raise typer.Exit(int(exc.code)) from None
        except KeyboardInterrupt:
            err("trialdeck: interrupted")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except BrokenPipeError:
            # The reader went away (`| head`): end quietly, like other Unix tools.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None
        except Exception as exc:  # noqa: BLE001 - a bug: say so plainly, traceback on request
            if os.environ.get("TRIALDECK_DEBUG") == "1":
                raise
            err(f"trialdeck: internal error: {type(exc).__name__}: {exc} (rerun with TRIALDECK_DEBUG=1 for the traceback)")
            raise typer.Exit(int(exit_code_for(exc))) from None

    return wrapper


def workspace(home: Path | None):
    from trialdeck.engine.workspace import Workspace

    ws = Workspace.resolve(home or _state["home"]).ensure()
    if _state.pop("revive", False):
        revive_engine(ws)
    return ws


def revive_engine(ws) -> None:
    """If runs are waiting or were cut off, or a study still wants trials, and no engine is alive
    (a crash, a reboot), bring one back so nothing stays stuck, and say so on stderr. Not after
    `trialdeck engine stop` (until `engine start`, or a command that queues work), nor with
    TRIALDECK_NO_AUTOSTART=1 (for scripts that only read a workspace)."""
    if os.environ.get("TRIALDECK_NO_AUTOSTART") == "1":
        return
    try:
        from trialdeck.engine.catalogue.store import Store
        from trialdeck.engine.runtime.control.client import engine_info, start_engine, wants_engine

        if not ws.catalog_path.exists() or ws.held_path.exists() or engine_info(ws):
            return
        if wants_engine(Store(ws)):
            start_engine(ws, say=err)
    except TrialdeckError:
        pass  # the command itself meets the same problem and reports it, once


def roots(home: Path | None):
    from trialdeck.engine.presets import preset_roots

    return preset_roots(workspace(home).presets_dir)


STATES = tuple(s.value for s in RunState)


def check_range(option: str, value: int | float | None, low: float, high: float) -> None:
    """Range checks done here, not by click, so a bad value is one plain line (exit 2)."""
    if value is not None and not low <= value <= high:
        raise BadInput(f"{option} {value}: allowed: {low:g} to {high:g}")


def open_store(home: Path | None):
    from trialdeck.engine.catalogue.store import Store

    return Store(workspace(home))


def find_run(store, run_id: str) -> dict[str, Any]:
    from trialdeck.engine.runtime.control.actions import get_run

    return dict(get_run(store, run_id))  # a copy the command may add to (`checkpoint`)


def exit_for(record: dict[str, Any]) -> None:
    """Exit 1 unless the run ended with a usable result (RunState.ok: pruned is one)."""
    if not RunState(record["state"]).ok:
        raise typer.Exit(int(ExitCode.JOB_FAILED))


def print_run_summary(record: Mapping[str, Any]) -> None:
    """The run's state, which epoch's weights it kept (and that epoch's metrics), the monitor's
    best and the last epoch, each labelled; then the events that ended it (a failure once)."""
    from trialdeck.tui.live import host_text, outcome

    hist = record.get("history") or []
    place = host_text(record) or record.get("device")
    where = f"  on {place}" if place else ""
    print(f"run {record['id']}  {record['preset']}  {record['state']}{where}")
    script = (record.get("config") or {}).get("script") or {}
    if script.get("program"):
        print(f"  program {script['program']}  (found for `{script['command'][0]}` on the PATH it was queued from)")
    if hist:
        lr = hist[-1].get("lr")  # a script run's history holds what its script reported
        print(f"  epochs {hist[-1]['epoch']}" + (f"  lr {lr:.3g}" if finite(lr) else ""))
        print("  " + " | ".join(outcome(record)))
    for ev in record.get("events") or []:
        if ev["kind"] == "failed" and record.get("error") and ev["message"] == record["error"]:
            continue  # said once, as the error below
        if ev["kind"] in ("early_stopped", "failed", "nan_loss", "pruned", "cancelled", "metric_missing"):
            print(f"  {ev['kind']}: {ev['message']}")
    if record.get("error"):
        print(f"  error: {record['error']}")


StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="Optuna storage URL shared across boxes (postgresql://...); default: the workspace journal."),
]
StorageReadOpt = Annotated[
    str | None,
    typer.Option("--storage", help="Read any Optuna storage, trialdeck's or not, without writing to it: sqlite:///PATH, "
                                   "postgresql://..., mysql://..., or a journal file's path.", show_default=False),
]


def _value_text(value: Any) -> str:
    from trialdeck.tui.live import value_text  # deferred: every command imports this module

    return value_text(value)


def epoch_line(entry: dict[str, Any], epochs: int | None = None) -> str:
    """One epoch as `runs follow` prints it: its metrics in the order recorded, whatever they are
    (a built-in run's train_loss, val_loss, val_acc, lr; a script's own), then its seconds."""
    parts = [f"epoch {entry.get('epoch')}{'/' + str(epochs) if epochs else ''}"]
    for key, value in entry.items():
        if key in ("t", "kind", "epoch", "seconds") or value is None:
            continue
        if finite(value) and isinstance(value, float):
            parts.append(f"{key} {value:.3g}" if key == "lr" else f"{key} {_value_text(value)}")
        elif not isinstance(value, (dict, list)):
            parts.append(f"{key} {value}")
    if finite(entry.get("seconds")):
        parts.append(f"({entry['seconds']:.2f}s)")
    return "  ".join(parts)


def metric_text(entry: dict[str, Any] | None) -> str:
    """An epoch's headline metric: val_acc (a regression's val_mae), else val_loss, else its first
    number ("" if none)."""
    if not entry:
        return ""
    keys = ["val_acc", "val_mae", "val_loss", *(k for k in entry if k not in ("epoch", "t", "kind", "seconds", "lr"))]
    key = next((k for k in keys if finite(entry.get(k))), None)
    return f"{key} {entry[key]:.4f}" if key else ""
