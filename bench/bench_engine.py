"""What the engine costs on top of training: per-run overhead and queue-to-first-step latency.

Two figures, both on a temporary workspace with a warm engine (1 CPU slot,
its worker already imported torch and trained one run, so the digits tensors
are cached):

(a) throughput: N short runs (`seed/step-decay`, train.epochs=5) queued at
    once (one `Store.create_runs` + `notify`); engine wall time per run =
    (last `finished_at` - first enqueue) / N, against the plain trainer doing
    the same runs in this process (`trialdeck.engine.training.trainer.train(spec)` repeated N
    times after a warm-up, no callback, no run directory). Target: engine /
    plain <= 1.25.
(b) latency: on the warm, idle engine, one run enqueued (`Store.create_run` +
    `trialdeck.engine.runtime.control.client.notify`); time from just before the enqueue to the `t` of
    the first record in the run's metrics.jsonl (the "start" record the
    recorder writes at on_start, just before the first step). Median over M
    runs. Target: <= 0.3 s.

Where the engine's time goes is broken down from the run records and streams
themselves: dispatch (previous run's finished_at -> this run's started_at),
setup (started_at -> "start" record), training (start -> last epoch record),
finish (last epoch -> finished_at: final checkpoint and the final store write).

    python bench/bench_engine.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import gpus_hidden  # noqa: E402
from trialdeck.engine.catalogue.store import Store  # noqa: E402
from trialdeck.engine.presets import resolve  # noqa: E402
from trialdeck.engine.runtime.control.client import notify, start_engine, stop_engine  # noqa: E402
from trialdeck.engine.workspace import Workspace  # noqa: E402

PRESET = "seed/step-decay"
RATIO_TARGET = 1.25
LATENCY_TARGET = 0.3
TERMINAL = {"completed", "early_stopped", "pruned", "failed", "cancelled"}


def _item(spec) -> dict[str, Any]:
    return {"preset": spec.preset, "config": spec.config(), "config_hash": spec.content_hash}


def _wait_done(store: Store, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Until every run in `ids` is final. Polls lightly (the file's version token first):
    this process shares the two cores with the worker it is timing."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        version = store.version()
        if version != seen:
            seen = version
            if all(store.get_run(i)["state"] in TERMINAL for i in reversed(ids)):
                records = [store.get_run(i) for i in ids]
                bad = [(r["id"], r["state"], r.get("error")) for r in records if r["state"] != "completed"]
                if bad:
                    raise RuntimeError(f"runs did not complete: {bad}")
                return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs still not done after {timeout:g} s")
        time.sleep(0.02)


def _wait_idle(ws: Workspace, timeout: float = 30.0) -> None:
    """Until the engine has taken the last run's "done" (its log says so) and nothing runs."""
    store = Store(ws)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not store.list_runs("running") and not store.queued():
            time.sleep(0.1)  # the worker's "done" reaches the engine just after the final write
            return
        time.sleep(0.01)
    raise TimeoutError("the engine did not go idle")


def _stream(ws: Workspace, run_id: str) -> list[dict[str, Any]]:
    path = ws.runs_dir / run_id / "metrics.jsonl"
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _breakdown(ws: Workspace, records: list[dict[str, Any]]) -> dict[str, float]:
    """Medians (seconds) of each phase of a run inside the engine."""
    phases: dict[str, list[float]] = {"queue_to_dispatch_first": [], "dispatch": [], "setup": [], "train": [],
                                      "epoch_sum": [], "finish": []}
    records = sorted(records, key=lambda r: r["started_at"])
    for prev, rec in zip([None, *records[:-1]], records):
        stream = _stream(ws, rec["id"])
        start = next(m["t"] for m in stream if m.get("kind") == "start")
        last_epoch = [m["t"] for m in stream if m.get("kind") == "epoch"][-1]
        if prev is None:
            phases["queue_to_dispatch_first"].append(rec["started_at"] - rec["created_at"])
        else:
            phases["dispatch"].append(rec["started_at"] - prev["finished_at"])
        phases["setup"].append(start - rec["started_at"])
        phases["train"].append(last_epoch - start)
        phases["epoch_sum"].append(sum(h["seconds"] for h in rec["history"]))
        phases["finish"].append(rec["finished_at"] - last_epoch)
    return {k: statistics.median(v) for k, v in phases.items() if v}


def _throughput(ws: Workspace, store: Store, n: int) -> dict[str, Any]:
    spec = resolve(PRESET, ["train.epochs=5"])
    t0 = time.time()
    records = store.create_runs([_item(spec)] * n)
    notify(ws)
    done = _wait_done(store, [r["id"] for r in records], timeout=60 + 10 * n)
    wall = max(r["finished_at"] for r in done) - t0
    return {"runs": n, "engine_wall_s": wall, "engine_per_run_s": wall / n, "phases": _breakdown(ws, done)}


def _plain(n: int) -> dict[str, Any]:
    """The same runs in this process: `train(spec)` with no callback and no run directory."""
    # Deferred: the trainer imports torch, only needed for the in-process reference.
    from trialdeck.engine.training.trainer import train

    spec = resolve(PRESET, ["train.epochs=5"])
    walls, epoch_sums = [], []
    t0 = time.perf_counter()
    for _ in range(n):
        r0 = time.perf_counter()
        result = train(spec, device="cpu")
        walls.append(time.perf_counter() - r0)
        epoch_sums.append(sum(h.seconds for h in result.history))
        if result.state.value != "completed":
            raise RuntimeError(f"plain run ended {result.state.value}: {result.error}")
    total = time.perf_counter() - t0
    return {"plain_per_run_s": total / n, "plain_median_s": statistics.median(walls),
            "plain_epoch_sum_s": statistics.median(epoch_sums)}


def _latency(ws: Workspace, store: Store, m: int) -> dict[str, Any]:
    spec = resolve(PRESET, ["train.epochs=1"])
    item = _item(spec)
    samples = []
    for _ in range(m):
        _wait_idle(ws)
        t0 = time.time()
        run_id = store.create_run(**item)["id"]
        notify(ws)
        path = ws.runs_dir / run_id / "metrics.jsonl"
        deadline = time.monotonic() + 30
        first = None
        while first is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{run_id} wrote no metrics within 30 s")
            try:
                with open(path, "rb") as f:
                    line = f.readline()
                if line.endswith(b"\n"):
                    first = json.loads(line)
            except FileNotFoundError:
                pass
            time.sleep(0.001)
        samples.append(first["t"] - t0)
        _wait_done(store, [run_id], timeout=60)
    return {"latency_samples_s": samples, "latency_median_s": statistics.median(samples),
            "latency_max_s": max(samples)}


def run(quick: bool = False) -> dict[str, Any]:
    """Latency samples, then rounds of (engine batch, plain batch) back to back; returns the
    median round's figures and every round's ratio."""
    # Deferred: torch and the trainer are only needed once the benchmark runs.
    import torch

    from trialdeck.engine.training.trainer import train

    n, m, rounds = (6, 4, 1) if quick else (30, 10, 5)
    saved_fault = os.environ.pop("TRIALDECK_INJECT_FAULT", None)  # the engine inherits our environment
    tmp = Path(tempfile.mkdtemp(prefix="trialdeck-bench-engine-"))
    ws = Workspace.resolve(tmp / "ws").ensure()
    store = Store(ws)
    batches, plains = [], []
    try:
        with gpus_hidden():  # a CPU figure, on a GPU box too
            info = start_engine(ws, args=["--cpu-slots", "1"])
        # Warm both sides: the worker imports torch, loads digits and trains once; so does this process.
        first = store.create_run(**_item(resolve(PRESET, ["train.epochs=1"])))
        notify(ws)
        train(resolve(PRESET, ["train.epochs=5"]), device="cpu")
        _wait_done(store, [first["id"]], timeout=120)
        _wait_idle(ws)
        latency = _latency(ws, store, m)
        for _ in range(rounds):
            _wait_idle(ws)
            batches.append(_throughput(ws, store, n))
            plains.append(_plain(n))
    finally:
        stop_engine(ws)
        shutil.rmtree(tmp, ignore_errors=True)
        if saved_fault is not None:
            os.environ["TRIALDECK_INJECT_FAULT"] = saved_fault
    # Each engine batch is paired with the plain batch right after it; the round with the
    # median ratio is reported, so one burst of a neighbour's load moves neither side alone.
    ratios = [b["engine_per_run_s"] / p["plain_per_run_s"] for b, p in zip(batches, plains)]
    middle = sorted(range(rounds), key=lambda i: ratios[i])[rounds // 2]
    return {
        "preset": PRESET, "epochs": 5, "slots": info.get("slots"), "torch_threads": torch.get_num_threads(),
        "rounds": rounds, **batches[middle], **plains[middle], "ratio": ratios[middle], "round_ratios": ratios,
        "ratio_target": RATIO_TARGET, **latency, "latency_target": LATENCY_TARGET,
    }


def report(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, trialdeck, reference, target) rows for bench/run_all.py."""
    return [
        (f"per-run wall time, {r['runs']} x {r['preset']} (5 epochs) queued on a warm 1-slot engine",
         f"{r['engine_per_run_s'] * 1e3:.0f} ms", f"{r['plain_per_run_s'] * 1e3:.0f} ms in-process train()",
         f"ratio {r['ratio']:.2f} (<= {RATIO_TARGET})"),
        (f"queue-to-first-step latency, warm idle engine (median of {len(r['latency_samples_s'])})",
         f"{r['latency_median_s'] * 1e3:.0f} ms", f"max {r['latency_max_s'] * 1e3:.0f} ms",
         f"<= {LATENCY_TARGET * 1e3:.0f} ms"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 runs, 4 latency samples, one round: a few seconds")
    args = parser.parse_args(argv)
    r = run(quick=args.quick)
    ms = lambda seconds: f"{seconds * 1e3:>9.1f} ms"  # noqa: E731
    print(f"{r['preset']} x {r['runs']} runs of {r['epochs']} epochs; engine slots {r['slots']}; "
          f"{r['torch_threads']} torch threads in-process; median of {r['rounds']} paired round(s)")
    rows = [
        ("engine wall per run", r["engine_per_run_s"]),
        ("plain train() per run", r["plain_per_run_s"]),
        ("engine: first enqueue -> first start", r["phases"]["queue_to_dispatch_first"]),
        ("engine: finished -> next started (median)", r["phases"].get("dispatch", float("nan"))),
        ("engine: started -> 'start' record (median)", r["phases"]["setup"]),
        ("engine: 'start' -> last epoch (median)", r["phases"]["train"]),
        ("engine: sum of epoch seconds (median)", r["phases"]["epoch_sum"]),
        ("plain:  sum of epoch seconds (median)", r["plain_epoch_sum_s"]),
        ("engine: last epoch -> finished (median)", r["phases"]["finish"]),
        ("queue-to-first-step latency (median)", r["latency_median_s"]),
        ("queue-to-first-step latency (max)", r["latency_max_s"]),
    ]
    for name, seconds in rows:
        print(f"  {name:<44}{ms(seconds)}")
    print(f"engine / plain per run = {r['ratio']:.2f} (target <= {RATIO_TARGET}); "
          f"per round: {', '.join(f'{x:.2f}' for x in r['round_ratios'])}")
    print(f"queue-to-first-step = {r['latency_median_s']:.3f} s (target <= {LATENCY_TARGET})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
