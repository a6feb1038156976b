"""`trialdeck engine`: start, stop, inspect the background engine, or run it in the foreground."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from trialdeck.engine.errors import BadInput
from trialdeck.tui.cli.common import (
    HomeOpt,
    JsonOpt,
    check_range,
    emit,
    err,
    handle_errors,
    open_store,
    workspace,
)

app = typer.Typer(help="Start, stop and inspect the background engine.", no_args_is_help=True)


def _daemon_args(cpu_slots: int | None, slots_per_gpu: int | None, recovery: str | None,
                 cluster: str | None = None) -> list[str]:
    """Validated engine options as `python -m trialdeck.engine.runtime.daemon` arguments."""
    from trialdeck.engine.runtime.config import RECOVERY_POLICIES, check_cluster_url

    if recovery is not None and recovery not in RECOVERY_POLICIES:
        raise BadInput(f"--recovery {recovery!r}: allowed: {', '.join(RECOVERY_POLICIES)}")
    check_range("--cpu-slots", cpu_slots, 1, 64)
    check_range("--slots-per-gpu", slots_per_gpu, 1, 64)
    if cluster is not None:
        check_cluster_url(cluster, "--cluster")
    args: list[str] = []
    for flag, value in (("--cpu-slots", cpu_slots), ("--slots-per-gpu", slots_per_gpu), ("--recovery", recovery),
                        ("--cluster", cluster)):
        if value is not None:
            args += [flag, str(value)]
    return args


SLOTS_PER_GPU_HELP = "Runs per GPU (1 to 64; default: automatic, by measured memory)."
CLUSTER_HELP = ("Place runs on the Dask cluster whose scheduler is at this address (tcp://HOST:8786) instead of "
                "this box's slots; default: `cluster` in engine.toml.")


@app.command("start")
@handle_errors
def engine_start(
    cpu_slots: Annotated[int | None, typer.Option("--cpu-slots", help="CPU slots when there is no GPU (1 to 64).")] = None,
    slots_per_gpu: Annotated[int | None, typer.Option("--slots-per-gpu", help=SLOTS_PER_GPU_HELP)] = None,
    recovery: Annotated[str | None, typer.Option("--recovery", help="resume | requeue | leave")] = None,
    cluster: Annotated[str | None, typer.Option("--cluster", help=CLUSTER_HELP)] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start the engine in the background (detached: it survives logout and SSH drops)."""
    from trialdeck.engine.runtime.control.client import engine_info, start_engine

    args = _daemon_args(cpu_slots, slots_per_gpu, recovery, cluster)
    ws = workspace(home)
    running = engine_info(ws)
    if running and cluster is not None and running.get("cluster") != cluster:
        where = f"on the cluster at {running['cluster']}" if running.get("cluster") else "on this box's own slots"
        raise BadInput(f"--cluster {cluster}: the engine already runs (pid {running['pid']}), placing runs {where}; "
                       "`trialdeck engine stop` first, then start it with --cluster")
    info = running or start_engine(ws, say=None if as_json else err, args=args)
    if as_json:
        emit({"pid": info["pid"], "already_running": bool(running), "log": str(ws.engine_log),
              "cluster": info.get("cluster")})
    elif running:
        print(f"the engine already runs (pid {info['pid']})")


@app.command("stop")
@handle_errors
def engine_stop(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Stop the engine gracefully: running runs checkpoint and become interrupted, and stay so
    until `trialdeck engine start` (or a command that queues new work) resumes them."""
    from trialdeck.engine.runtime.control.client import stop_engine

    ws = workspace(home)
    info = stop_engine(ws, hold=True)
    interrupted = len(open_store(home).list_runs("interrupted", omit=("config", "history", "events")))
    if as_json:
        emit({"stopped": bool(info), "pid": info["pid"] if info else None, "interrupted": interrupted})
    elif not info:
        print("no engine was running")
    else:
        print(f"engine {info['pid']} stopped" + (f"; {interrupted} interrupted run(s) resume at `trialdeck engine start`"
                                                 if interrupted else ""))


@app.command("status")
@handle_errors
def engine_status(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Whether the engine runs, its pid, uptime, slots, the devices runs may ask for, running and
    queued counts; torch's version and CUDA build, the NVIDIA driver's, and a warning when they do not fit."""
    from trialdeck.engine.runtime.control.client import status

    info = status(workspace(home))
    if as_json:
        emit(info)
        return
    if info["running"] and info.get("cluster"):
        print(f"engine running: pid {info['pid']}, up {info['uptime']:.0f} s, placing runs on a Dask cluster")
        for line in cluster_lines(info["cluster"], time.time()):
            print(line)
    elif info["running"]:
        print(f"engine running: pid {info['pid']}, up {info['uptime']:.0f} s, slots {', '.join(info['slots'])}")
    else:
        print("engine not running" + ("; held stopped by `trialdeck engine stop` until `trialdeck engine start`"
                                      if info.get("held") else ""))
    if info.get("devices"):
        print(f"devices runs may ask for: {', '.join(info['devices'])}"
              + (" (and whatever a worker that joins offers)" if info.get("growing") else ""))
    interrupted = info["runs"].get("interrupted", 0)
    print(f"runs: {info['runs_running']} running, {info['runs_queued']} queued"
          + (f", {interrupted} interrupted (resumed when the engine starts)" if interrupted else ""))
    for a in info["active"]:
        where = f"Dask worker {a['host']} ({a['device']})" if a.get("host") else a["slot"] or a["device"]
        print(f"  {a['id']} {a['preset']} on {where}")
    torch = f"torch {info['torch_version'] or '(not installed)'}" + (
        f" (CUDA {info['torch_cuda']} build)" if info["torch_cuda"] else " (CPU build)" if info["torch_version"] else "")
    driver = (f"NVIDIA driver {info['driver_version']} (CUDA up to {info['driver_cuda']}), {info['gpus']} GPU(s)"
              if info["driver_version"] else "no NVIDIA driver")
    print(f"{torch}; {driver}")
    if info["cuda_warning"]:
        err(f"trialdeck: warning: {info['cuda_warning']}")


def cluster_lines(cluster: dict[str, Any], now: float) -> list[str]:
    """`engine status` about a Dask cluster: its state, then each worker, its resources and its runs."""
    url, state = cluster.get("url"), cluster.get("state")
    since = time.strftime("%H:%M:%S", time.localtime(cluster.get("since") or now))
    retry = f"; retrying every {cluster.get('retry_seconds', 3):g} s"
    if state == "connected":
        workers = cluster.get("workers") or []
        lines = [f"cluster {url}: connected since {since}, {len(workers)} worker(s), {cluster.get('places', 0)} place(s)"]
        for w in workers:
            resources = ", ".join(f"{k}={v:g}" for k, v in sorted((w.get("resources") or {}).items()))
            runs = ", ".join(w.get("runs") or []) or "idle"
            lines.append(f"  {w['name']} ({w['address']}): {w['nthreads']} thread(s)"
                         + (f", {resources}" if resources else "") + f"; {runs}")
        return lines
    if state == "connecting":
        return [f"cluster {url}: connecting"]
    what = "lost" if state == "lost" else "unreachable"
    lines = [f"cluster {url}: {what} since {since} ({cluster.get('error')}){retry}"]
    if cluster.get("interrupted"):
        lines.append(f"  interrupted when it went away (requeued once it is back): {', '.join(cluster['interrupted'])}")
    return lines


@app.command("run")
@handle_errors
def engine_run(
    cpu_slots: Annotated[int | None, typer.Option("--cpu-slots", help="CPU slots (1 to 64).")] = None,
    slots_per_gpu: Annotated[int | None, typer.Option("--slots-per-gpu", help=SLOTS_PER_GPU_HELP)] = None,
    recovery: Annotated[str | None, typer.Option("--recovery", help="resume | requeue | leave")] = None,
    cluster: Annotated[str | None, typer.Option("--cluster", help=CLUSTER_HELP)] = None,
    home: HomeOpt = None,
) -> None:
    """Run the engine in the foreground (for debugging); Ctrl-C stops it gracefully."""
    from trialdeck.engine.runtime.daemon import main as daemon_main

    args = _daemon_args(cpu_slots, slots_per_gpu, recovery, cluster)
    args = ["--home", str(workspace(home).root), *args]
    code = daemon_main(args)
    if code:
        raise typer.Exit(code)


@app.command("install-service")
@handle_errors
def engine_install_service(
    home: HomeOpt = None,
    unit_dir: Annotated[Path | None,
                        typer.Option("--unit-dir", help="Where to write the unit (default: ~/.config/systemd/user).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a systemd user service that keeps the engine alive across logouts and reboots."""
    import shlex

    from trialdeck.engine.workspace import atomic_write

    ws = workspace(home)
    folder = unit_dir or Path.home() / ".config" / "systemd" / "user"
    folder.mkdir(parents=True, exist_ok=True)
    name = "trialdeck.service" if ws.root == Path.home() / ".trialdeck" else f"trialdeck-{ws.root.name}.service"
    path = folder / name
    argv = (sys.executable, "-m", "trialdeck.engine.runtime.daemon", "--home", str(ws.root))
    command = " ".join(shlex.quote(part) for part in argv)
    unit = (
        "[Unit]\n"
        f"Description=trialdeck engine for {ws.root}\n\n"
        "[Service]\n"
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
