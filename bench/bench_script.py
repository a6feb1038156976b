"""What a chatty script run costs the engine, and how soon a TensorBoard scalar reaches the catalogue.

A script run's stdout and stderr reach the run's log through pipes copied in
64 KB chunks, and the capture (engine/capture) scans those chunks for metrics
in the same threads (engine/runtime/runners/script.py). Measured on a temporary
workspace with one CPU slot, with bench/scripts/train.py (stdlib only) started
by the engine, the same epochs each time:

(a) chatty: `--chatty 10000 --chatty-metrics` (lines in bursts every 10 ms,
    about 80 bytes each, every one holding metrics the capture reads:
    `| epoch 3 | step 120 | loss 0.4321 | lr 5.00e-02 |`), capture on (the default);
(b) the same with `[script.capture] output = "off"`: the capture's reference;
(c) quiet: no output but its epoch lines.

Figures: the lines per second the chatty script actually got into the run's
log; the engine's and its worker's CPU (user + system, % of one core) over the
same window of epochs in each run, side by side, and what the capture adds
(a) - (b); what the TUI pays to show that log (`read_tail`, the run screen's
log tab) once it is large; and, for a program writing one TensorBoard scalar
at a time with torch's SummaryWriter (`[script.capture] tensorboard`), the
time from each `flush()` to the scalar's step in the catalogue's history
(median and max over 50 scalars; skipped without the tensorboard extra).

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
"""Engine + worker CPU, % of one core, while the chatty script runs; and what the capture adds to it."""
TB_TARGET = 2.0
"""Seconds from a TensorBoard writer's flush to the scalar in the catalogue."""
TB_PROGRAM = """
import json, sys, time
from torch.utils.tensorboard import SummaryWriter
writer = SummaryWriter(sys.argv[1])
flushed = []
for step in range(1, int(sys.argv[2]) + 1):
    writer.add_scalar("Loss/val", 1.0 / step, step)
    writer.flush()
    flushed.append(time.time())
    time.sleep(float(sys.argv[3]))
writer.close()
print(json.dumps(flushed))
"""
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


def _one(ws: Workspace, store: Store, epochs: int, sleep: float, chatty: int, capture: bool = True) -> dict[str, Any]:
    """Run the script once; the engine's and worker's CPU between its first and last epoch."""
    preset = ws.root / f"bench-{chatty}-{capture}.toml"
    preset.write_text(f'[script]\ncommand = ["{sys.executable}", "train.py", "--epochs", "{epochs}", '
                      f'"--sleep", "{sleep}", "--chatty", "{chatty}", "--chatty-metrics"]\nworkdir = "{SCRIPT_DIR}"\n'
                      + ("" if capture else '[script.capture]\noutput = "off"\n'))
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
            "log_bytes": log.stat().st_size, "window_bytes": bytes1 - bytes0, "log": str(log),
            "captured": [sorted(k for k in h if k != "epoch") for h in final.get("history") or []][-1:]}


def _tensorboard(ws: Workspace, store: Store, scalars: int, gap: float) -> dict[str, Any] | None:
    """A program writing one scalar every `gap` s and flushing it: from each flush to its step in
    the catalogue's history (the store read as a TUI or a script would, every 20 ms)."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return None
    program = ws.root / "tb_bench.py"
    program.write_text(TB_PROGRAM)
    preset = ws.root / "bench-tb.toml"
    preset.write_text(f'[script]\ncommand = ["{sys.executable}", "{program}", "{{run_dir}}/tb", "{scalars}", "{gap}"]\n'
                      f'workdir = "{ws.root}"\n[script.capture]\ntensorboard = "{{run_dir}}/tb"\n')
    (record,) = enqueue(store, [resolve(str(preset))])
    run_id = record["id"]
    notify(ws)
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 120 + scalars * gap * 4
    while time.monotonic() < deadline:
        run = store.get_run(run_id) or {}
        now = time.time()
        for entry in run.get("history") or ():
            seen.setdefault(int(entry["epoch"]), now)
        if run.get("state") in TERMINAL:
            break
        time.sleep(0.02)
    run = store.get_run(run_id) or {}
    if run.get("state") != "completed":
        raise RuntimeError(f"{run_id} {run.get('state')}: {run.get('error')}")
    log = (ws.runs_dir / run_id / "log.txt").read_text()
    flushed = json.loads(next(line for line in reversed(log.splitlines()) if line.startswith("[")))
    lags = sorted(seen[step] - at for step, at in enumerate(flushed, start=1) if step in seen)
    return {"scalars": len(flushed), "seen": len(lags), "median": lags[len(lags) // 2] if lags else None,
            "max": lags[-1] if lags else None}


def run(quick: bool = False) -> dict[str, Any]:
    epochs, sleep = (4, 0.5) if quick else (8, 1.0)
    root = Path(tempfile.mkdtemp(prefix="trialdeck-bench-script."))
    ws = Workspace(root).ensure()
    try:
        with gpus_hidden():
            start_engine(ws, args=["--cpu-slots", "1"])
            store = Store(ws)
            chatty = _one(ws, store, epochs, sleep, LINES_TARGET)
            uncaptured = _one(ws, store, epochs, sleep, LINES_TARGET, capture=False)
            quiet = _one(ws, store, epochs, sleep, 0)
            tensorboard = _tensorboard(ws, store, 10 if quick else 50, 0.25)
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
    return {"quick": quick, "epochs": epochs, "sleep": sleep, "chatty": chatty, "uncaptured": uncaptured,
            "quiet": quiet, "lines_per_second": chatty["lines"] / (epochs * sleep), "tail_ms": tail_ms,
            "tensorboard": tensorboard}


def report(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    chatty, off, quiet = r["chatty"], r["uncaptured"], r["quiet"]
    captured = ", ".join(chatty["captured"][0]) if chatty["captured"] else "-"
    rows = [
        ("lines per second the script got into the run's log", f"{r['lines_per_second']:,.0f}",
         f"{chatty['log_bytes'] / 1e6:.1f} MB log", f"about {LINES_TARGET:,} (what it printed)"),
        ("engine + worker CPU while the chatty script runs (% of one core)", f"{chatty['cpu_percent']:.1f}%",
         f"{quiet['cpu_percent']:.1f}% (same script, quiet)", f"<= {CPU_TARGET:g}%"),
        ("what the capture adds: the same chatty run, capture on minus output = \"off\" (% of one core)",
         f"{chatty['cpu_percent'] - off['cpu_percent']:+.1f}%",
         f"{off['cpu_percent']:.1f}% with the capture off; captured: {captured}",
         f"<= {CPU_TARGET:g}%"),
        ("TUI log tab: read the log's tail", f"{r['tail_ms']:.2f} ms", f"of a {chatty['log_bytes'] / 1e6:.1f} MB log",
         "bounded"),
    ]
    tb = r.get("tensorboard")
    if tb is None:
        rows.append(("TensorBoard scalar: writer's flush -> the catalogue", "skipped", "needs trialdeck[tensorboard]",
                     f"<= {TB_TARGET:g} s"))
    else:
        rows.append(("TensorBoard scalar: writer's flush -> the catalogue (median / max)",
                     f"{tb['median']:.2f} s / {tb['max']:.2f} s", f"over {tb['seen']} of {tb['scalars']} scalars",
                     f"<= {TB_TARGET:g} s"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = run(args.quick)
    for row in report(result):
        print(" | ".join(row))


if __name__ == "__main__":
    main()
