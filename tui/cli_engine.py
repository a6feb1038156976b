"""CLI groups that talk to the engine: `run`, `queue`, `runs`, `engine`.

Commands that need the engine start it themselves and say so on stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from engine.errors import BadInput, ExitCode
from tui.cli_common import HomeOpt, JsonOpt, SetOpt, emit, err, handle_errors, roots, workspace

queue_app = typer.Typer(help="Inspect and reorder the queue.", no_args_is_help=True)
runs_app = typer.Typer(help="Inspect runs: list, show, logs, follow; resume or rerun them.", no_args_is_help=True)
engine_app = typer.Typer(help="Start, stop and inspect the background engine.", no_args_is_help=True)

STATES = ("queued", "running", "completed", "early_stopped", "pruned", "failed", "cancelled", "interrupted")


def check_range(option: str, value: int | float | None, low: float, high: float) -> None:
    """Range checks done here, not by click, so a bad value is one plain line (exit 2)."""
    if value is not None and not low <= value <= high:
        raise BadInput(f"{option} {value}: allowed: {low:g} to {high:g}")


def _store(home: Path | None):
    from engine.store import Store

    return Store(workspace(home))


def _get_run(store, run_id: str) -> dict[str, Any]:
    from engine.control import get_run

    return get_run(store, run_id)


def _exit_for(record: dict[str, Any]) -> None:
    if record["state"] not in ("completed", "early_stopped", "pruned"):
        raise typer.Exit(int(ExitCode.JOB_FAILED))


# ---------------------------------------------------------------- run


def run_cmd(
    preset: Annotated[str, typer.Argument(help="Preset name or .toml path.")],
    set_: SetOpt = None,
    priority: Annotated[int, typer.Option("--priority", help="Higher runs first (-1000000 to 1000000).")] = 0,
    device: Annotated[Optional[str], typer.Option("--device", help="Pin to a device: cpu, cuda or cuda:N.")] = None,
    repeat: Annotated[int, typer.Option("--repeat", help="Queue this many copies (seeds seed, seed+1, ...), 1 to 10000.")] = 1,
    wait_: Annotated[bool, typer.Option("--wait", help="Wait for the run to end; print its record.")] = False,
    follow_: Annotated[bool, typer.Option("--follow", help="Show live progress until the run ends.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a preset as a run in the background engine."""
    from engine.client import ensure_engine, notify
    from engine.presets import resolve

    if wait_ and follow_:
        raise BadInput("--wait and --follow: choose one")
    check_range("--repeat", repeat, 1, 10_000)
    if device is not None and not (device in ("cpu", "cuda", "auto") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise BadInput(f"--device {device!r}: allowed: auto, cpu, cuda, cuda:N")
    ws = workspace(home)
    specs = []
    for k in range(repeat):
        extra = [f"train.seed={resolve(preset, set_ or [], roots(home)).train.seed + k}"] if repeat > 1 else []
        specs.append(resolve(preset, [*(set_ or []), *extra], roots(home)))
    store = _store(home)
    from engine import control

    records = control.enqueue(store, specs, priority=priority, device=device)
    ensure_engine(ws, say=err)
    notify(ws)
    ids = [r["id"] for r in records]
    if wait_ or follow_:
        if len(ids) > 1:
            raise BadInput("--wait/--follow take a single run; drop --repeat or follow each run")
        if follow_:
            _follow(ws, ids[0], as_json)
        else:
            from engine.client import wait_for_run

            if not as_json:
                err(f"queued {ids[0]}; waiting for it to end (Ctrl-C stops waiting, not the run)")
            with _waiting_on(ids[0]):
                record = wait_for_run(ws, ids[0], say=err)
            if as_json:
                emit(record)
            else:
                _summary(record)
        record = store.get_run(ids[0])
        _exit_for(record)
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
            f"(`trialdeck runs follow {run_id}`, or `trialdeck runs cancel {run_id}` to stop it)")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


def _summary(record: dict[str, Any]) -> None:
    from tui.cli import _print_run_summary

    _print_run_summary(record)


def _follow(ws, run_id: str, as_json: bool) -> dict[str, Any]:
    from engine.client import follow

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
        if kind == "start":
            epochs = None
            print(f"{run_id} running on {item.get('device')}: {item.get('params', 0):,} parameters, "
                  f"{item.get('train_samples')} train / {item.get('val_samples')} val samples", flush=True)
        elif kind == "epoch":
            if tty:
                print("\r\033[K", end="")
            print(f"epoch {item['epoch']}{'/' + str(epochs) if epochs else ''}  train_loss {item['train_loss']:.4f}  "
                  f"val_loss {item['val_loss']:.4f}  val_acc {item['val_acc']:.4f}  lr {item['lr']:.3g}  "
                  f"({item['seconds']:.2f}s)", flush=True)
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


# ---------------------------------------------------------------- queue


@queue_app.command("list")
@handle_errors
def queue_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Queued runs in dispatch order (priority, then enqueue time), and what runs now."""
    store = _store(home)
    queued = store.queued()
    running = store.list_runs("running", omit=("config", "history", "events"))
    rows = [{"id": r["id"], "state": r["state"], "preset": r["preset"], "priority": r.get("priority", 0),
             "device": r.get("device"), "slot": r.get("slot"), "position": None} for r in running]
    rows += [{"id": r["id"], "state": r["state"], "preset": r["preset"], "priority": r.get("priority", 0),
              "device": r.get("device"), "slot": None, "position": i + 1} for i, r in enumerate(queued)]
    if as_json:
        emit(rows)
        return
    if not rows:
        print("the queue is empty")
    for r in rows:
        where = r["slot"] or f"#{r['position']}"
        print(f"{r['id']:<7} {r['state']:<8} {where:<9} prio {r['priority']:<4} {r['preset']}")


@queue_app.command("cancel")
@handle_errors
def queue_cancel(
    run_ids: Annotated[list[str], typer.Argument(help="Run id(s), e.g. r12.")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel queued runs (removed from the queue) or running ones (stopped within a second)."""
    from engine import control
    from engine.client import notify

    ws = workspace(home)
    store = _store(home)
    out = []
    for run_id in run_ids:
        record, how = control.cancel(store, run_id, lambda: notify(ws))
        if record["state"] == "running":  # asked to stop: wait for the engine to do it
            record = _await_state(store, record["id"], timeout=10.0)
        out.append({"id": record["id"], "state": record["state"]})
    if as_json:
        emit(out if len(out) > 1 else out[0])
    else:
        for r in out:
            print(f"{r['id']} {r['state']}")


def _await_state(store, run_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.get_run(run_id)
        if record["state"] != "running":
            return record
        time.sleep(0.05)
    return store.get_run(run_id)


@queue_app.command("move")
@handle_errors
def queue_move(
    run_id: Annotated[str, typer.Argument(help="A queued run id.")],
    top: Annotated[bool, typer.Option("--top", help="Make it the next to run.")] = False,
    priority: Annotated[Optional[int], typer.Option("--priority", help="Set its priority instead.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Reorder the queue: --top, or --priority N."""
    store = _store(home)
    record = _get_run(store, run_id)
    if top == (priority is not None):
        raise BadInput("queue move: give exactly one of --top or --priority N")
    record = store.move_top(record["id"]) if top else store.set_priority(record["id"], priority)
    if as_json:
        emit({"id": record["id"], "priority": record["priority"]})
    else:
        print(f"{record['id']} priority {record['priority']}")


@queue_app.command("clear")
@handle_errors
def queue_clear(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel every queued run (running runs go on)."""
    n = _store(home).clear_queue()
    if as_json:
        emit({"cancelled": n})
    else:
        print(f"cancelled {n} queued run(s)")


# ---------------------------------------------------------------- runs


@runs_app.command("list")
@handle_errors
def runs_list(
    status: Annotated[Optional[str], typer.Option("--status", help=f"Only runs in this state: {', '.join(STATES)}.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """All runs, oldest first."""
    if status is not None and status not in STATES:
        import difflib

        hint = difflib.get_close_matches(status, STATES, n=1)
        raise BadInput(f"--status {status!r} is not a run state; allowed: {', '.join(STATES)}"
                       + (f"; did you mean {hint[0]!r}?" if hint else ""))
    runs = _store(home).list_runs(status)
    if as_json:
        emit(runs)
        return
    if not runs:
        print("no runs")
    for r in runs:
        hist = r.get("history") or []
        last = hist[-1] if hist else None
        metric = f"val_acc {last['val_acc']:.4f}" if last else ""
        print(f"{r['id']:<7} {r['state']:<13} {r['preset']:<28} {len(hist):>4} ep  {metric}")


@runs_app.command("show")
@handle_errors
def runs_show(run_id: Annotated[str, typer.Argument(help="Run id, e.g. r12.")], home: HomeOpt = None,
              as_json: JsonOpt = False) -> None:
    """A run's full record: config, history, events, error."""
    record = _get_run(_store(home), run_id)
    if as_json:
        emit(record)
        return
    _summary(record)
    for ev in record.get("events") or []:
        print(f"  [{ev.get('epoch') or '-'}] {ev['kind']}: {ev['message']}")


@runs_app.command("logs")
@handle_errors
def runs_logs(run_id: Annotated[str, typer.Argument(help="Run id.")], home: HomeOpt = None,
              as_json: JsonOpt = False) -> None:
    """Print the run's log file."""
    from engine.recorder import LOG_NAME

    ws = workspace(home)
    record = _get_run(_store(home), run_id)
    path = ws.run_dir(record["id"]) / LOG_NAME
    text = path.read_text(errors="replace") if path.exists() else ""
    if as_json:
        emit({"id": record["id"], "path": str(path), "log": text})
    elif text:
        sys.stdout.write(text)
    else:
        err(f"{record['id']} has no log yet (it is {record['state']})")


@runs_app.command("follow")
@handle_errors
def runs_follow(run_id: Annotated[str, typer.Argument(help="Run id.")], home: HomeOpt = None,
                as_json: JsonOpt = False) -> None:
    """Live epochs, losses, lr and events of a run until it ends."""
    ws = workspace(home)
    record = _get_run(_store(home), run_id)
    final = _follow(ws, record["id"], as_json)
    _exit_for(final)


@runs_app.command("resume")
@handle_errors
def runs_resume(run_ids: Annotated[list[str], typer.Argument(help="Failed, cancelled or interrupted run id(s).")],
                home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Queue failed, cancelled or interrupted runs again, from their last checkpoint."""
    from engine import control
    from engine.client import ensure_engine, notify

    ws = workspace(home)
    store = _store(home)
    records = [_get_run(store, run_id) for run_id in run_ids]
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


@runs_app.command("rerun")
@handle_errors
def runs_rerun(
    run_ids: Annotated[list[str], typer.Argument(help="Run id(s) whose configuration to train again.")],
    priority: Annotated[Optional[int], typer.Option("--priority", help="Higher runs first (default: the old run's).")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a new run with the same configuration as each given run (theirs stay as they are)."""
    from engine import control
    from engine.client import ensure_engine, notify

    ws = workspace(home)
    store = _store(home)
    check_range("--priority", priority, -control.PRIORITY_LIMIT, control.PRIORITY_LIMIT)
    records = control.rerun(store, run_ids, priority=priority)
    ensure_engine(ws, say=err)
    notify(ws)
    if as_json:
        emit(records if len(records) > 1 else records[0])
    else:
        for old, r in zip(run_ids, records, strict=True):
            print(f"queued {r['id']}  {r['preset']}  (the configuration of {old})")


# ---------------------------------------------------------------- engine


def _daemon_args(cpu_slots: int | None, slots_per_gpu: int | None, recovery: str | None) -> list[str]:
    """Validated engine options as `python -m engine.daemon` arguments."""
    from engine.daemon import RECOVERY_POLICIES

    if recovery is not None and recovery not in RECOVERY_POLICIES:
        raise BadInput(f"--recovery {recovery!r}: allowed: {', '.join(RECOVERY_POLICIES)}")
    check_range("--cpu-slots", cpu_slots, 1, 64)
    check_range("--slots-per-gpu", slots_per_gpu, 1, 64)
    args: list[str] = []
    for flag, value in (("--cpu-slots", cpu_slots), ("--slots-per-gpu", slots_per_gpu), ("--recovery", recovery)):
        if value is not None:
            args += [flag, str(value)]
    return args


@engine_app.command("start")
@handle_errors
def engine_start(
    cpu_slots: Annotated[Optional[int], typer.Option("--cpu-slots", help="CPU slots when there is no GPU (1 to 64).")] = None,
    slots_per_gpu: Annotated[Optional[int], typer.Option("--slots-per-gpu", help="Runs per GPU (1 to 64; default: automatic, by measured memory).")] = None,
    recovery: Annotated[Optional[str], typer.Option("--recovery", help="resume | requeue | leave")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start the engine in the background (detached: it survives logout and SSH drops)."""
    from engine.client import engine_info, start_engine

    args = _daemon_args(cpu_slots, slots_per_gpu, recovery)
    ws = workspace(home)
    running = engine_info(ws)
    info = running or start_engine(ws, say=None if as_json else err, args=args)
    if as_json:
        emit({"pid": info["pid"], "already_running": bool(running), "log": str(ws.engine_log)})
    elif running:
        print(f"the engine already runs (pid {info['pid']})")


@engine_app.command("stop")
@handle_errors
def engine_stop(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Stop the engine gracefully: running runs checkpoint and become interrupted, and stay so
    until `trialdeck engine start` (or a command that queues new work) resumes them."""
    from engine.client import stop_engine

    ws = workspace(home)
    info = stop_engine(ws, hold=True)
    interrupted = len(_store(home).list_runs("interrupted", omit=("config", "history", "events")))
    if as_json:
        emit({"stopped": bool(info), "pid": info["pid"] if info else None, "interrupted": interrupted})
    elif not info:
        print("no engine was running")
    else:
        print(f"engine {info['pid']} stopped" + (f"; {interrupted} interrupted run(s) resume at `trialdeck engine start`"
                                                 if interrupted else ""))


@engine_app.command("status")
@handle_errors
def engine_status(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Whether the engine runs, its pid, uptime, slots, running and queued counts."""
    from engine.client import status

    info = status(workspace(home))
    if as_json:
        emit(info)
        return
    if info["running"]:
        print(f"engine running: pid {info['pid']}, up {info['uptime']:.0f} s, slots {', '.join(info['slots'])}")
    else:
        print("engine not running" + ("; held stopped by `trialdeck engine stop` until `trialdeck engine start`"
                                      if info.get("held") else ""))
    interrupted = info["runs"].get("interrupted", 0)
    print(f"runs: {info['runs_running']} running, {info['runs_queued']} queued"
          + (f", {interrupted} interrupted (resumed when the engine starts)" if interrupted else ""))
    for a in info["active"]:
        print(f"  {a['id']} {a['preset']} on {a['slot'] or a['device']}")


@engine_app.command("run")
@handle_errors
def engine_run(
    cpu_slots: Annotated[Optional[int], typer.Option("--cpu-slots", help="CPU slots (1 to 64).")] = None,
    slots_per_gpu: Annotated[Optional[int], typer.Option("--slots-per-gpu", help="Runs per GPU (1 to 64; default: automatic, by measured memory).")] = None,
    recovery: Annotated[Optional[str], typer.Option("--recovery", help="resume | requeue | leave")] = None,
    home: HomeOpt = None,
) -> None:
    """Run the engine in the foreground (for debugging); Ctrl-C stops it gracefully."""
    from engine.daemon import main as daemon_main

    args = _daemon_args(cpu_slots, slots_per_gpu, recovery)
    args = ["--home", str(workspace(home).root), *args]
    code = daemon_main(args)
    if code:
        raise typer.Exit(code)


@engine_app.command("install-service")
@handle_errors
def engine_install_service(
    home: HomeOpt = None,
    unit_dir: Annotated[Optional[Path], typer.Option("--unit-dir", help="Where to write the unit (default: ~/.config/systemd/user).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a systemd user service that keeps the engine alive across logouts and reboots."""
    import shlex

    import engine as engine_pkg
    from engine.workspace import atomic_write

    ws = workspace(home)
    folder = unit_dir or Path.home() / ".config" / "systemd" / "user"
    folder.mkdir(parents=True, exist_ok=True)
    name = "trialdeck.service" if ws.root == Path.home() / ".trialdeck" else f"trialdeck-{ws.root.name}.service"
    path = folder / name
    command = " ".join(shlex.quote(part) for part in (sys.executable, "-m", "engine.daemon", "--home", str(ws.root)))
    unit = (
        "[Unit]\n"
        f"Description=trialdeck engine for {ws.root}\n\n"
        "[Service]\n"
        # The code this CLI runs, whether installed or a checkout (as `engine start` does).
        f'Environment="PYTHONPATH={Path(engine_pkg.__file__).resolve().parents[1]}"\n'
        f"ExecStart={command}\n"
        "Restart=on-failure\n"
        "KillMode=mixed\n"
        "TimeoutStopSec=60\n\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )
    atomic_write(path, unit.encode())
    steps = [
        "systemctl --user daemon-reload",
        f"systemctl --user enable --now {name}",
        "loginctl enable-linger $USER   # keep user services running after logout",
    ]
    if as_json:
        emit({"unit": str(path), "next": steps})
    else:
        print(f"wrote {path}; to start it now and at every boot:")
        for step in steps:
            print(f"  {step}")


def register(app: typer.Typer) -> None:
    app.command("run")(handle_errors(run_cmd))
    app.add_typer(queue_app, name="queue")
    app.add_typer(runs_app, name="runs")
    app.add_typer(engine_app, name="engine")



