"""`trialdeck train` and `trialdeck run`: train a preset here, or queue it in the engine (and wait or follow)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from trialdeck.engine.errors import BadInput, ExitCode
from trialdeck.tui.cli.common import (
    HomeOpt,
    JsonOpt,
    SetOpt,
    emit,
    epoch_line,
    err,
    exit_for,
    handle_errors,
    open_store,
    print_run_summary,
    roots,
    workspace,
)


def train_cmd(
    preset: Annotated[str, typer.Argument(help="Preset name or .toml path.")],
    set_: SetOpt = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a preset in the foreground, in this process (no engine), and print its record."""
    from trialdeck.engine.presets import resolve

    sets = list(set_ or [])
    if device:
        sets.append(f"train.device={json.dumps(device)}")
    ws = workspace(home)
    spec = resolve(preset, sets, roots(home))
    from trialdeck.engine.runtime.control.foreground import (
        run_foreground,  # deferred: imports torch
    )

    progress = None
    if sys.stderr.isatty() and spec.script is None:  # a script prints its own progress (to its log)
        from trialdeck.tui.progress import EpochProgress

        progress = EpochProgress(spec.train.epochs, spec.preset)
    try:
        record = run_foreground(ws, spec, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    if as_json:
        emit(record)
    else:
        print_run_summary(record)
    exit_for(record)


def run_cmd(
    ctx: typer.Context,
    preset: Annotated[str | None, typer.Argument(help="Preset name or .toml path (none with --script).",
                                                 show_default=False)] = None,
    script: Annotated[str | None, typer.Option(
        "--script", metavar="FILE", show_default=False,
        help="Queue your own training program FILE as a one-off script run, its arguments after `--` "
             "(`run --script train.py -- --lr 0.1`). A .py file runs with trialdeck's own Python "
             "(sys.executable), unless it is executable and starts with #!, which then runs itself, "
             "as does any other executable file. It runs in this folder; params and early stopping come "
             "from --set (params.X, early_stopping.*).")] = None,
    set_: SetOpt = None,
    priority: Annotated[int, typer.Option("--priority", help="Higher runs first (-1000000 to 1000000).")] = 0,
    device: Annotated[str | None, typer.Option("--device", help="Pin to a device: cpu, cuda or cuda:N.")] = None,
    repeat: Annotated[int, typer.Option("--repeat", help="Queue this many copies (seeds seed, seed+1, ...), 1 to 1000.")] = 1,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag the run (repeatable); find it with `runs list --tag`.",
                                                  show_default=False)] = None,
    wait_: Annotated[bool, typer.Option("--wait", help="Wait for the run to end; print its record.")] = False,
    follow_: Annotated[bool, typer.Option("--follow", help="Show live progress until the run ends.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a preset (or, with --script, your own training program) as a run in the background engine."""
    from trialdeck.engine.presets import resolve
    from trialdeck.engine.runtime.control.client import ensure_engine, notify

    # In click's words, as without ignore_unknown_options (which lets a script's options through).
    if script is None and ctx.args:
        extra = ctx.args[0]
        what = f"No such option: {extra}" if extra.startswith("-") else f"Got unexpected extra argument ({extra})"
        raise BadInput(f"{what}; see `trialdeck run --help` (a script's own arguments go after --script FILE --)")
    if script is None and preset is None:
        raise BadInput("Missing argument 'preset'; see `trialdeck run --help` (or --script FILE -- ARGS)")

    if wait_ and follow_:
        raise BadInput("--wait and --follow: choose one")
    from trialdeck.engine.runtime.control import actions as control

    control.check_repeat(repeat, "--repeat")
    from trialdeck.engine.catalogue.store import check_tags

    tags = check_tags(tag or [], "--tag")  # before anything is queued
    if device is not None and not (device in ("cpu", "cuda", "auto") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise BadInput(f"--device {device!r}: allowed: auto, cpu, cuda, cuda:N")
    ws = workspace(home)
    if script is not None:  # everything after `--` (click hands the first to PRESET) is the script's
        from trialdeck.engine.presets.loader import resolve_script

        args = [*([preset] if preset is not None else []), *ctx.args]
        specs = [resolve_script(script, args, set_ or [])] * repeat  # copies: a script has no seed of ours
    else:
        assert preset is not None
        specs = [resolve(preset, set_ or [], roots(home))]
        seed = specs[0].train.seed
        specs += [resolve(preset, [*(set_ or []), f"train.seed={seed + k}"], roots(home)) for k in range(1, repeat)]
    store = open_store(home)
    records = control.enqueue(store, specs, priority=priority, device=device, tags=tags)
    ensure_engine(ws, say=err)
    notify(ws)
    ids = [r["id"] for r in records]
    if wait_ or follow_:
        if len(ids) > 1:
            raise BadInput("--wait/--follow take a single run; drop --repeat or follow each run")
        if follow_:
            follow_run(ws, ids[0], as_json)
        else:
            from trialdeck.engine.runtime.control.client import wait_for_run

            if not as_json:
                err(f"queued {ids[0]}; waiting for it to end (Ctrl-C stops waiting, not the run)")
            with _waiting_on(ids[0]):
                record = wait_for_run(ws, ids[0], say=err)
            if as_json:
                emit(record)
            else:
                print_run_summary(record)
        record = store.get_run(ids[0])
        exit_for(record)
        return
    if as_json:
        emit(records if repeat > 1 else records[0])
    else:
        for r in records:
            print(f"queued {r['id']}  {r['preset']}")


@contextlib.contextmanager
def _waiting_on(run_id: str) -> Iterator[None]:
    """Ctrl-C while waiting on a run stops the waiting; the run goes on in the engine."""
    try:
        yield
    except KeyboardInterrupt:
        err(f"trialdeck: stopped waiting; {run_id} goes on in the engine "
            f"(`trialdeck runs follow {run_id}`, or `trialdeck queue cancel {run_id}` to stop it)")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


def follow_run(ws, run_id: str, as_json: bool) -> dict[str, Any]:
    from trialdeck.engine.runtime.control.client import follow

    with _waiting_on(run_id):
        return _follow_lines(run_id, as_json, follow(ws, run_id))


def _follow_lines(run_id: str, as_json: bool, items: Iterator[dict[str, Any]]) -> dict[str, Any]:
    tty = sys.stdout.isatty() and not as_json
    epochs = None
    final = None
    for item in items:
        kind = item.get("kind")
        if as_json:
            if kind != "final":
                print(json.dumps(item), flush=True)
            else:
                final = item["record"]
                print(json.dumps({"kind": "final", "state": final["state"], "id": final["id"]}), flush=True)
            continue
        if kind == "start" and "command" in item:  # a script run (runtime.runners.script)
            epochs = None
            again = f", resuming after epoch {item.get('start_epoch')}" if item.get("resumed") else ""
            print(f"{run_id} running on {item.get('device')}: {' '.join(item['command'])}{again}", flush=True)
        elif kind == "start" and "rewound" in item:  # a script went back: its epochs from there come again
            print(f"  (epochs from {item['rewound']} on are recorded again)", flush=True)
        elif kind == "start":
            epochs = None
            print(f"{run_id} running on {item.get('device')}: {item.get('params') or 0:,} parameters, "
                  f"{item.get('train_samples')} train / {item.get('val_samples')} val samples", flush=True)
        elif kind == "epoch":
            if tty:
                print("\r\033[K", end="")
            print(epoch_line(item, epochs), flush=True)
        elif kind == "event":
            ev = item["event"]
            if tty:
                print("\r\033[K", end="")
            print(f"  {ev['kind']}: {ev['message']}", flush=True)
        elif kind == "final":
            final = item["record"]
            print(f"{run_id} {final['state']}" + (f": {final['error']}" if final.get("error") else ""), flush=True)
        elif "step" in item and tty:
            print(f"\r\033[Kepoch {item['epoch']} step {item['step']} loss {item['loss']:.4f}", end="", flush=True)
    return final or {}


def register(app: typer.Typer) -> None:
    app.command("train")(handle_errors(train_cmd))
    # Script arguments after `--` reach run_cmd as ctx.args (and, the first, as PRESET).
    app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        handle_errors(run_cmd))
