"""What a chatty script run costs the engine: its CPU while a script prints 10,000 lines a second.

A script run's stdout is the run's log file itself and its stderr is copied in
64 KB chunks (engine/runtime/script.py): nothing is parsed per line, so the
engine's CPU should not depend on how much the script prints. Measured on a
temporary workspace with one CPU slot, with bench/scripts/train.py (stdlib
only) started by the engine twice, the same epochs each time:

(a) chatty: `--chatty 10000` (lines in bursts every 10 ms, about 100 bytes each);
(b) quiet: no output but its epoch lines (the reference).

Figures: the lines per second the chatty script actually got into the run's
log; the engine's and its worker's CPU (user + system, % of one core) over the
same window of epochs in each run, side by side; and what the TUI pays to show
that log (`read_tail`, the run screen's log tab) once it is large.

    python bench/bench_script.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from bench import gpus_hidden  # noqa: E402
from trialdeck.engine.catalogue.store import Store  # noqa: E402
from trialdeck.engine.presets.loader import resolve  # noqa: E402
from trialdeck.engine.runtime.control.actions import enqueue  # noqa: E402
from trialdeck.engine.runtime.control.client import notify, start_engine, stop_engine  # noqa: E402
from trialdeck.engine.workspace import Workspace  # noqa: E402

SCRIPT_DIR = Path(__file__).resolve().parent / "scripts"
LINES_TARGET = 10_000
CPU_TARGET = 5.0
"""Engine + worker CPU, % of one core, while the chatty script runs."""
TERMINAL = {"completed", "early_stopped", "pruned", "failed", "cancelled"}


def _wait(predicate, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def _one(ws: Workspace, store: Store, epochs: int, sleep: float, chatty: int) -> dict[str, Any]:
    """Run the script once; the engine's and worker's CPU between its first and last epoch."""
    preset = ws.root / f"bench-{chatty}.toml"
    preset.write_text(f'[script]\ncommand = ["{sys.executable}", "train.py", "--epochs", "{epochs}", '
                      f'"--sleep", "{sleep}", "--chatty", "{chatty}"]\nworkdir = "{SCRIPT_DIR}"\n')
    spec = resolve(str(preset))
    (record,) = enqueue(store, [spec])
    run_id = record["id"]
    notify(ws)
    reported = ws.runs_dir / run_id / "reported.jsonl"

    def epochs_seen() -> int:
        return len(reported.read_bytes().splitlines()) if reported.exists() else 0

    _wait(lambda: epochs_seen() >= 1, 120, f"{run_id}'s first epoch")
    engine = json.loads(ws.pid_path.read_text())["pid"]
    worker = store.get_run(run_id)["worker"]
    log = ws.runs_dir / run_id / "log.txt"
    cpu0, t0, bytes0 = _cpu([engine, worker]), time.monotonic(), log.stat().st_size
    _wait(lambda: epochs_seen() >= epochs - 1, 60 + epochs * sleep * 4, f"{run_id}'s epoch {epochs - 1}")
    cpu1, t1, bytes1 = _cpu([engine, worker]), time.monotonic(), log.stat().st_size
    _wait(lambda: store.get_run(run_id)["state"] in TERMINAL, 60, f"{run_id} to end")
    final = store.get_run(run_id)
    if final["state"] != "completed":
        raise RuntimeError(f"{run_id} {final['state']}: {final.get('error')}")
    lines = sum(1 for line in log.read_bytes().splitlines() if b"a chatty line" in line)
    return {"seconds": t1 - t0, "cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0), "lines": lines,
            "log_bytes": log.stat().st_size, "window_bytes": bytes1 - bytes0, "log": str(log)}


def run(quick: bool = False) -> dict[str, Any]:
    epochs, sleep = (4, 0.5) if quick else (8, 1.0)
    root = Path(tempfile.mkdtemp(prefix="trialdeck-bench-script."))
    ws = Workspace(root).ensure()
    try:
        with gpus_hidden():
            start_engine(ws, args=["--cpu-slots", "1"])
            store = Store(ws)
            chatty = _one(ws, store, epochs, sleep, LINES_TARGET)
            quiet = _one(ws, store, epochs, sleep, 0)
        # What the TUI's log tab reads of that log (a bounded tail, however large the file).
        from trialdeck.tui.screens.run_detail import read_tail

        start = time.perf_counter()
        for _ in range(20):
            read_tail(chatty["log"])
        tail_ms = (time.perf_counter() - start) / 20 * 1000
    finally:
        stop_engine(ws)
        shutil.rmtree(root, ignore_errors=True)
    # The script prints for `sleep` seconds an epoch (the rest is its start and its arithmetic).
    return {"quick": quick, "epochs": epochs, "sleep": sleep, "chatty": chatty, "quiet": quiet,
            "lines_per_second": chatty["lines"] / (epochs * sleep), "tail_ms": tail_ms}


def report(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    chatty, quiet = r["chatty"], r["quiet"]
    return [
        ("lines per second the script got into the run's log", f"{r['lines_per_second']:,.0f}",
         f"{chatty['log_bytes'] / 1e6:.1f} MB log", f"about {LINES_TARGET:,} (what it printed)"),
        ("engine + worker CPU while the chatty script runs (% of one core)", f"{chatty['cpu_percent']:.1f}%",
         f"{quiet['cpu_percent']:.1f}% (same script, quiet)", f"<= {CPU_TARGET:g}%"),
        ("TUI log tab: read the log's tail", f"{r['tail_ms']:.2f} ms", f"of a {chatty['log_bytes'] / 1e6:.1f} MB log",
         "bounded"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = run(args.quick)
    for row in report(result):
        print(" | ".join(row))


if __name__ == "__main__":
    main()
