"""A year of sweeps: the CLI, the engine and the TUI on 100,000 finished runs, and on 50 studies of
1,000 trials, next to an empty workspace.

Set-up, once per bench run: five workspaces. `big` gets N finished runs of 20 epochs each through
`trialdeck runs import` of a records file this script writes (the build's time and the import's
peak memory are reported); `small` gets 1,000 the same way (the TUI's scrolling reference: an
empty table has nothing to scroll); `empty` gets nothing. `studies` is a tuning-heavy year: 50
ended studies of 1,000 trials (50,000 trial runs of 20 epochs), and `one` holds one of those
studies alone (bench/scale_studies.py builds both). `empty`, `big` and `studies` each have their
own engine (1 CPU slot, GPUs hidden), warmed by one run. Then, for each in turn, on the same machine:

- CLI calls, real processes, median of 5 wall times (the two workspaces alternated call by call,
  both engines up, so a busy moment of the shared box slows both), and each process's peak resident memory
  (from wait4): `runs show` (a run in the middle of the numbers for big), `queue list`,
  `runs list --status running`, `engine status --json`, and
  `run seed/step-decay --set train.epochs=1 --wait` (queue one run and wait for it; also less the
  run's own training time, from its record, which is what a busy CPU makes noisy).
- The engine: its peak resident memory (VmHWM), its CPU while idle for a few seconds (its own loop),
  and the time from a run's enqueue to its start.
- `studies list` and `studies show sweep-00` (one study of 1,000 trials, reconciled with its Optuna
  journal first), `studies` next to `one`, median of 5 and peak resident memory.
- The TUI, in a child process run headless (`App.run(headless=True)`; as bench_tui.py measures):
  first paint with the runs table filled, counted from the process's start; its peak resident
  memory; key to repaint for `pagedown`, `down` and `end` in the runs table (small vs big); and,
  for information, a `/` filter over every run (the time until the table shows its matches).

Targets (the issue's): each figure within 1.5x and 0.5 s of the empty workspace's; at most 300 MB
resident for the engine, a CLI call and the TUI; TUI first paint within 1 s; key to repaint within
100 ms.

Usage: python bench/bench_scale.py [--quick] [--runs N] [--studies N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import gpus_hidden  # noqa: E402
from bench.scale_studies import build_in_child, studies_figures  # noqa: E402

RUNS = 100_000
SMALL = 1_000
STUDIES, TRIALS = 50, 1_000
EPOCHS = 20
RATIO_TARGET, EXTRA_TARGET, MEMORY_TARGET_MB = 1.5, 0.5, 300
PAINT_TARGET_S, KEY_TARGET_MS = 1.0, 100.0
TRIALDECK = [sys.executable, "-c", "from trialdeck.tui.cli import main; main()"]
QUIET = {"TRIALDECK_NO_AUTOSTART": "1"}


# ----------------------------------------------------------------------------- building workspaces


def write_records(path: Path, n: int, epochs: int = EPOCHS) -> None:
    """N records as `runs export --format records` writes them: 20-epoch histories, a full-size config."""
    import orjson

    from trialdeck.engine.presets import resolve

    config = resolve("seed/step-decay", []).config()
    states = ("completed", "completed", "completed", "early_stopped", "failed", "pruned")
    with open(path, "wb") as f:
        for i in range(n):
            k = 0.05 + 0.001 * (i % 200)
            history = [{"epoch": e, "train_loss": round(2.3 * 2.718 ** (-k * e) + 0.05, 5),
                        "val_loss": round(2.3 * 2.718 ** (-k * e) + 0.1, 5),
                        "val_acc": round(1 - 0.9 * 2.718 ** (-k * e), 5), "lr": 0.1 * 0.5 ** ((e + 1) // 10),
                        "seconds": 1.2} for e in range(1, epochs + 1)]
            start = 1.7e9 + 60 * i
            f.write(orjson.dumps({
                "id": f"r{i + 1}", "preset": "seed/step-decay", "state": states[i % len(states)],
                "config": {**config, "optimizer": {**config["optimizer"], "lr": 0.001 * (1 + i % 50)}},
                "history": history, "summary": {"best_epoch": epochs, "monitor": "val_loss"},
                "tags": ["sweep"] if i % 10 == 0 else [], "note": None,
                "created_at": start, "started_at": start + 1, "finished_at": start + 1 + 1.2 * epochs,
            }, option=orjson.OPT_APPEND_NEWLINE))


def cli(home: Path, *args: str) -> tuple[float, float]:
    """A trialdeck command as a user runs it, output discarded: (wall seconds, its peak resident MB,
    from wait4)."""
    log = home.parent / f"{home.name}.stderr"
    start = time.perf_counter()
    pid = os.posix_spawn(sys.executable, [*TRIALDECK, *args, "--home", str(home)], {**os.environ, **QUIET},
                         file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                                       (os.POSIX_SPAWN_OPEN, 2, str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)])
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"trialdeck {' '.join(args)} exited {os.waitstatus_to_exitcode(status)}: "
                           f"{log.read_text()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def build(root: Path, n: int, name: str) -> dict[str, Any]:
    """A workspace of n imported runs (0: empty): how long the records took to write and to import."""
    home = root / name
    out: dict[str, Any] = {"home": str(home), "runs": n}
    if n:
        records = root / f"{name}.jsonl"
        t = time.perf_counter()
        write_records(records, n)
        out["write_s"] = time.perf_counter() - t
        out["records_mb"] = records.stat().st_size / 1e6
        out["import_s"], out["import_rss_mb"] = cli(home, "runs", "import", str(records))
        records.unlink()
        out["segments_mb"] = sum(p.stat().st_size for p in (home / "segments").iterdir()) / 1e6
    else:
        cli(home, "queue", "list")
    out["catalog_kb"] = (home / "catalog.json").stat().st_size / 1e3 if (home / "catalog.json").exists() else 0.0
    return out


# ----------------------------------------------------------------------------- the engine


def _proc(pid: int, field: str) -> float:
    """VmHWM / VmRSS in MB from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _newest(home: Path) -> dict[str, Any]:
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.workspace import Workspace

    runs = Store(Workspace(home)).working(omit=("config", "history", "events")).runs
    return max(runs, key=lambda r: int(r["id"][1:]))


def engine_and_cli_figures(homes: dict[str, Path], shows: dict[str, str], repeats: int,
                           idle_s: float) -> dict[str, dict[str, Any]]:
    """Both workspaces' engines up at once, and every call alternated between them (the box is
    shared: a busy moment then slows both, not one)."""
    from trialdeck.engine.runtime.control.client import engine_info, stop_engine
    from trialdeck.engine.workspace import Workspace

    out: dict[str, dict[str, Any]] = {name: {} for name in homes}
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {name: {} for name in homes}
    pids = {}
    try:
        for name, home in homes.items():
            cli(home, "engine", "start", "--json")
            pids[name] = engine_info(Workspace(home))["pid"]
            cli(home, "run", "seed/step-decay", "--set", "train.epochs=1", "--wait")  # warm: the worker has torch
        overhead: dict[str, list[float]] = {name: [] for name in homes}
        starts: dict[str, list[float]] = {name: [] for name in homes}
        calls = {"runs_show": ("runs", "show"), "queue_list": ("queue", "list"),
                 "runs_list_running": ("runs", "list", "--status", "running"), "engine_status": ("engine", "status", "--json")}
        for _ in range(repeats):
            for name, home in homes.items():
                wall, rss = cli(home, "run", "seed/step-decay", "--set", "train.epochs=1", "--wait")
                samples[name].setdefault("run_wait", []).append((wall, rss))
                run = _newest(home)
                overhead[name].append(wall - (run["finished_at"] - run["started_at"]))
                starts[name].append(run["started_at"] - run["created_at"])
                for key, args in calls.items():
                    args = (*args, shows[name]) if key == "runs_show" else args
                    samples[name].setdefault(key, []).append(cli(home, *args))
        cpu0, t0 = {name: _cpu(pid) for name, pid in pids.items()}, time.monotonic()
        time.sleep(idle_s)
        for name, pid in pids.items():
            figures = out[name]
            for key, got in samples[name].items():
                figures[f"{key}_s"] = statistics.median(s[0] for s in got)
                figures[f"{key}_rss_mb"] = max(s[1] for s in got)
            figures["run_wait_overhead_s"] = statistics.median(overhead[name])
            figures["queue_to_start_s"] = statistics.median(starts[name])
            figures["idle_cpu_ms_per_s"] = 1000 * (_cpu(pid) - cpu0[name]) / (time.monotonic() - t0)
            figures["engine_rss_mb"] = _proc(pid, "VmHWM")
    finally:
        for home in homes.values():
            stop_engine(Workspace(home))
    return out


# ----------------------------------------------------------------------------- the TUI (child process)


def tui_child(home: str, started: float, scroll: bool) -> dict[str, Any]:
    import asyncio

    from textual import events

    from trialdeck.engine.workspace import Workspace
    from trialdeck.tui.app import make_app
    from trialdeck.tui.runs_view import Query

    app = make_app(Workspace(Path(home)), start_engine=False, interval=0.5)
    paints: list[tuple[float, str, int, str | None]] = []
    display = app._display

    def spy(screen, renderable) -> None:  # the app's one door to the terminal
        display(screen, renderable)
        if renderable is not None:
            found = screen.query("#runs-table")
            table = found.first() if found else None
            rows = table.row_count if table is not None else 0
            paints.append((time.time(), type(screen).__name__, rows if app.catalog is not None else -1,
                           table.current_key if table is not None else None))

    app._display = spy  # type: ignore[method-assign]
    out: dict[str, Any] = {}

    async def press(key: str) -> float:
        """Milliseconds from a key to the first repaint whose cursor is on another run (the key's effect)."""
        before = app.screen.query_one("#runs-table").current_key
        t0 = time.time()
        event = events.Key(key, key if len(key) == 1 else None)
        event.set_sender(app)
        app._driver.send_message(event)
        while True:
            await asyncio.sleep(0.0005)
            hits = [t for t, s, _, cursor in paints if t > t0 and s == "RunsScreen" and cursor != before]
            if hits:
                return (hits[0] - t0) * 1000
            if time.time() - t0 > 5:
                return float("inf")

    async def auto_pilot(pilot) -> None:
        while not any(rows >= 0 and s == "RunsScreen" for _, s, rows, _ in paints):
            await asyncio.sleep(0.005)
        first = next(t for t, s, rows, _ in paints if rows >= 0 and s == "RunsScreen")
        out["first_paint_s"] = first - started
        out["rows"] = app.screen.query_one("#runs-table").row_count
        if scroll:
            await asyncio.sleep(0.5)
            out["pagedown_ms"] = [await press("pagedown") for _ in range(10)]
            out["down_ms"] = [await press("down") for _ in range(10)]
            out["end_ms"] = await press("end")
            out["end_row"] = app.screen.query_one("#runs-table").current_key
            await press("home")
            screen, wanted = app.screen, Query.of("r777")  # what typing `/r777` asks for
            t0 = time.time()
            screen._ask(wanted)
            while screen._query != wanted and time.time() - t0 < 60:
                await asyncio.sleep(0.002)
            out["filter_s"] = time.time() - t0
            out["filter_rows"] = screen.query_one("#runs-table").row_count
        out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        app.exit()

    app.run(headless=True, size=(120, 40), auto_pilot=auto_pilot)
    return out


def tui_figures(home: Path, scroll: bool) -> dict[str, Any]:
    started = time.time()
    proc = subprocess.run([sys.executable, __file__, "--tui-child", str(home), repr(started), "1" if scroll else "0"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, **QUIET})
    if proc.returncode != 0:
        raise RuntimeError(f"TUI child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver


def run(quick: bool = False, runs: int | None = None, studies: int | None = None) -> dict[str, Any]:
    """The figures (bench/run_all.py calls this); `quick`: 2,000 runs, 3 studies of 400 trials and one
    sample per call (CI: it must not rot)."""
    n = runs or (2_000 if quick else RUNS)
    n_studies, trials = studies or (3 if quick else STUDIES), 400 if quick else TRIALS
    repeats = 1 if quick else 5
    out: dict[str, Any] = {"runs": n}
    with tempfile.TemporaryDirectory(prefix="trialdeck-bench-scale-") as tmp, gpus_hidden():
        root = Path(tmp)
        t = time.perf_counter()
        out["build"] = {"empty": build(root, 0, "empty"), "small": build(root, SMALL, "small"), "big": build(root, n, "big"),
                        "studies": build_in_child(root, "studies", n_studies, trials),
                        "one": build_in_child(root, "one", 1, trials)}
        out["build_s"] = time.perf_counter() - t
        homes = {"empty": root / "empty", "big": root / "big", "studies": root / "studies"}
        out.update(engine_and_cli_figures(homes, {"empty": "r1", "big": f"r{n // 2}",
                                                  "studies": f"r{n_studies * trials // 2}"}, repeats,
                                          idle_s=2.0 if quick else 5.0))
        tuning = studies_figures({"one": root / "one", "studies": homes["studies"]}, repeats, cli)
        out["one"] = tuning["one"]
        out["studies"].update(tuning["studies"])
        for name in ("empty", "big", "studies") * 2:  # twice each, alternated: the first paint is noisy here
            tui = tui_figures(homes[name], scroll=False)
            best = out[name].get("tui")
            if best is None or tui["first_paint_s"] < best["first_paint_s"]:
                out[name]["tui"] = tui
        out["small"] = {"tui": tui_figures(root / "small", scroll=True)}
        out["big"]["tui_scroll"] = tui_figures(homes["big"], scroll=True)
    return out


def _judge(big: float, empty: float) -> str:
    # Within 1.5x and 0.5 s; a difference under 50 ms is noise on a shared box whatever the ratio.
    ok = big <= RATIO_TARGET * empty and big - empty <= EXTRA_TARGET or big <= empty + 0.05
    return f"{big / empty:.2f}x, {big - empty:+.2f} s" + ("" if ok else " (missed)")


def report(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    n, big, empty = r["runs"], r["big"], r["empty"]
    b = r["build"]["big"]
    rows = [(f"build: {n:,} records of {EPOCHS} epochs written, then `runs import`",
             f"{b['write_s']:.0f} s + {b['import_s']:.0f} s", f"{b['records_mb']:.0f} MB of records -> "
             f"{b['segments_mb']:.0f} MB of segments; catalog.json {b['catalog_kb']:.0f} KB; import peak "
             f"{b['import_rss_mb']:.0f} MB", "reasonable")]
    target = f"<= {RATIO_TARGET}x and +{EXTRA_TARGET} s"
    for key, label in (("run_wait", "`run seed/step-decay --set train.epochs=1 --wait`"),
                       ("runs_show", "`runs show RUN`"), ("queue_list", "`queue list`"),
                       ("runs_list_running", "`runs list --status running`"), ("engine_status", "`engine status`")):
        rows.append((f"{label}: wall (median), {n:,} runs vs empty", f"{big[key + '_s']:.2f} s",
                     f"{empty[key + '_s']:.2f} s ({_judge(big[key + '_s'], empty[key + '_s'])})", target))
        if key == "run_wait":
            rows.append((f"{label}: wall less the run's own training (median)", f"{big['run_wait_overhead_s']:.2f} s",
                         f"{empty['run_wait_overhead_s']:.2f} s "
                         f"({_judge(big['run_wait_overhead_s'], empty['run_wait_overhead_s'])})", target))
        rows.append((f"{label}: peak resident", f"{big[key + '_rss_mb']:.0f} MB", f"{empty[key + '_rss_mb']:.0f} MB",
                     f"<= {MEMORY_TARGET_MB} MB"))
    rows += [
        (f"engine: queue to start (median), {n:,} runs vs empty", f"{big['queue_to_start_s']:.2f} s",
         f"{empty['queue_to_start_s']:.2f} s ({_judge(big['queue_to_start_s'], empty['queue_to_start_s'])})", target),
        ("engine: CPU while idle (its own loop)", f"{big['idle_cpu_ms_per_s']:.1f} ms/s",
         f"{empty['idle_cpu_ms_per_s']:.1f} ms/s", "same as empty"),
        ("engine: peak resident (the daemon)", f"{big['engine_rss_mb']:.0f} MB", f"{empty['engine_rss_mb']:.0f} MB",
         f"<= {MEMORY_TARGET_MB} MB"),
        (f"TUI: first paint, from process start ({big['tui']['rows']:,} rows; best of 2)",
         f"{big['tui']['first_paint_s']:.2f} s", f"{empty['tui']['first_paint_s']:.2f} s empty", f"<= {PAINT_TARGET_S:.0f} s"),
        ("TUI: peak resident, first screen (after scrolling to the end and a filter over every run)",
         f"{big['tui']['rss_mb']:.0f} MB ({big['tui_scroll']['rss_mb']:.0f} MB)", f"{empty['tui']['rss_mb']:.0f} MB empty",
         f"<= {MEMORY_TARGET_MB} MB"),
    ]
    rows += studies_report(r)
    scroll, small = big["tui_scroll"], r["small"]["tui"]
    for key, label in (("pagedown_ms", "pagedown"), ("down_ms", "down")):
        rows.append((f"TUI: key to repaint, {label} (median / max of {len(scroll[key])})",
                     f"{statistics.median(scroll[key]):.0f} / {max(scroll[key]):.0f} ms",
                     f"{statistics.median(small[key]):.0f} / {max(small[key]):.0f} ms at {SMALL:,} runs",
                     f"<= {KEY_TARGET_MS:.0f} ms"))
    rows.append(("TUI: key to repaint, end (to the oldest run)", f"{scroll['end_ms']:.0f} ms ({scroll['end_row']})",
                 f"{small['end_ms']:.0f} ms at {SMALL:,} runs", f"<= {KEY_TARGET_MS:.0f} ms"))
    rows.append(("TUI: `/r777` over every run until its rows show (first filter: every index read)",
                 f"{scroll['filter_s']:.2f} s ({scroll['filter_rows']} rows)",
                 f"{small['filter_s']:.2f} s at {SMALL:,} runs ({small['filter_rows']} rows)", "information"))
    return rows


def studies_report(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The rows of the tuning-heavy workspace: `studies` next to `empty`, or to `one` for the studies commands."""
    b, st, one, empty = r["build"]["studies"], r["studies"], r["one"], r["empty"]
    year = f"{b['studies']} studies x {b['trials']:,} trials"
    target = f"<= {RATIO_TARGET}x and +{EXTRA_TARGET} s"
    rows = [(f"build: {year} ({b['studies'] * b['trials']:,} trial runs of {EPOCHS} epochs, sealed; each study mirrored "
             "by `studies.sync`, one with a real Optuna journal)", f"{b['build_s']:.0f} s",
             f"{b['segments_mb']:.0f} MB of segments and {b['trial_files']} trial files; catalog.json "
             f"{b['catalog_kb']:.0f} KB", "reasonable")]
    for key, label, ref, ref_name in (
            ("studies_list", "`studies list`", one, "one study alone"),
            ("studies_show", f"`studies show sweep-00` ({b['trials']:,} trials, reconciled with its journal)", one,
             "one study alone"),
            ("run_wait", "`run seed/step-decay --set train.epochs=1 --wait`", empty, "empty"),
            ("run_wait_overhead", "`run ... --wait` less the run's own training", empty, "empty"),
            ("queue_list", "`queue list`", empty, "empty")):
        rows.append((f"{label}: wall (median), {year} vs {ref_name}", f"{st[key + '_s']:.2f} s",
                     f"{ref[key + '_s']:.2f} s ({_judge(st[key + '_s'], ref[key + '_s'])})", target))
        if key + "_rss_mb" in st:
            rows.append((f"{label}: peak resident, {year}", f"{st[key + '_rss_mb']:.0f} MB",
                         f"{ref[key + '_rss_mb']:.0f} MB {ref_name}", f"<= {MEMORY_TARGET_MB} MB"))
    rows += [
        (f"engine: peak resident (the daemon), {year}", f"{st['engine_rss_mb']:.0f} MB",
         f"{empty['engine_rss_mb']:.0f} MB empty", f"<= {MEMORY_TARGET_MB} MB"),
        ("engine: CPU while idle (its own loop), " + year, f"{st['idle_cpu_ms_per_s']:.1f} ms/s",
         f"{empty['idle_cpu_ms_per_s']:.1f} ms/s empty", "same as empty"),
        (f"TUI: first paint, from process start ({st['tui']['rows']:,} rows; best of 2), {year}",
         f"{st['tui']['first_paint_s']:.2f} s", f"{empty['tui']['first_paint_s']:.2f} s empty", f"<= {PAINT_TARGET_S:.0f} s"),
        (f"TUI: peak resident, first screen, {year}", f"{st['tui']['rss_mb']:.0f} MB",
         f"{empty['tui']['rss_mb']:.0f} MB empty", f"<= {MEMORY_TARGET_MB} MB"),
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 runs, one sample per call")
    parser.add_argument("--runs", type=int, default=None, help=f"runs in the big workspace (default {RUNS:,})")
    parser.add_argument("--studies", type=int, default=None,
                        help=f"studies of {TRIALS:,} trials in the tuning workspace (default {STUDIES})")
    parser.add_argument("--tui-child", nargs=3, metavar=("HOME", "STARTED", "SCROLL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tui_child:
        home, started, scroll = args.tui_child
        print(json.dumps(tui_child(home, float(started), scroll == "1")))
        return
    result = run(args.quick, args.runs, args.studies)
    for figure, value, reference, target in report(result):
        print(f"{figure:<72} {value:>16}   {reference}   (target {target})")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
