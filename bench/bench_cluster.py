"""What placing runs on a Dask cluster costs per run, against this box's own warm workers.

The same 30 short runs (`seed/step-decay`, train.epochs=5, digits, CPU) are
queued at once (one `Store.create_runs` + `notify`) on two warm engines, each
with two places:

- local: an engine with `--cpu-slots 2` (two warm worker processes);
- Dask: an engine with `--cluster URL` on a `distributed.LocalCluster` of two
  worker processes, one thread each, started in this process (the scheduler
  on loopback). Every run's metrics, log, catalogue writes and checkpoint
  travel back through the scheduler as they would from another box.

Both engines are warmed first (each place trained a run, so torch and the
digits tensors are loaded). Figures: engine wall time per run = (last
`finished_at` - enqueue) / N; and the per-run overhead inside a run's own
window, median over runs of (finished_at - started_at) - the time its epochs
took (dispatch to the place, set-up, the final checkpoint and the final write,
for Dask also the task's submission and the streaming back).

    python bench/bench_cluster.py [--quick]
"""

from __future__ import annotations

import argparse
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
from bench.bench_engine import PRESET, _item, _stream, _wait_done, _wait_idle  # noqa: E402
from trialdeck.engine.catalogue.store import Store  # noqa: E402
from trialdeck.engine.presets import resolve  # noqa: E402
from trialdeck.engine.runtime.control.client import notify, start_engine, stop_engine  # noqa: E402
from trialdeck.engine.workspace import Workspace  # noqa: E402

OVERHEAD_TARGET = 0.25
"""Seconds a run may spend on its Dask place beyond its epochs: a few round trips through the
scheduler (submit, control, the last message). Against a 5-epoch digits run of ~60 ms the wall
ratio is large by construction; against a run of minutes it vanishes."""


def _batch(ws: Workspace, store: Store, n: int) -> dict[str, Any]:
    spec = resolve(PRESET, ["train.epochs=5"])
    t0 = time.time()
    records = store.create_runs([_item(spec)] * n)
    notify(ws)
    done = _wait_done(store, [r["id"] for r in records], timeout=120 + 10 * n)
    wall = max(r["finished_at"] for r in done) - t0
    overhead, setup = [], []
    for r in done:
        stream = _stream(ws, r["id"])
        start = next(m["t"] for m in stream if m.get("kind") == "start")
        overhead.append((r["finished_at"] - r["started_at"]) - sum(h["seconds"] for h in r["history"]))
        setup.append(start - r["started_at"])
    return {"runs": n, "wall_s": wall, "per_run_s": wall / n, "overhead_s": statistics.median(overhead),
            "setup_s": statistics.median(setup), "hosts": sorted({r.get("host") or r.get("slot") for r in done})}


def _engine(ws: Workspace, args: list[str], n: int) -> dict[str, Any]:
    store = Store(ws)
    try:
        with gpus_hidden():  # a CPU figure, on a GPU box too
            start_engine(ws, args=args)
        warm = store.create_runs([_item(resolve(PRESET, ["train.epochs=1"]))] * 2)  # one per place
        notify(ws)
        _wait_done(store, [r["id"] for r in warm], timeout=180)
        _wait_idle(ws)
        return _batch(ws, store, n)
    finally:
        stop_engine(ws)


def run(quick: bool = False) -> dict[str, Any]:
    # Deferred: Dask is an extra (trialdeck[cluster]); without it this section says so.
    from distributed import LocalCluster

    n = 6 if quick else 30
    saved_fault = os.environ.pop("TRIALDECK_INJECT_FAULT", None)  # engines and workers inherit our environment
    tmp = Path(tempfile.mkdtemp(prefix="trialdeck-bench-cluster-"))
    cluster = None
    try:
        local = _engine(Workspace.resolve(tmp / "local").ensure(), ["--cpu-slots", "2"], n)
        with gpus_hidden():
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, local_directory=str(tmp / "dask"))
        dask = _engine(Workspace.resolve(tmp / "dask-ws").ensure(), ["--cluster", cluster.scheduler_address], n)
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if saved_fault is not None:
            os.environ["TRIALDECK_INJECT_FAULT"] = saved_fault
    return {"preset": PRESET, "epochs": 5, "local": local, "dask": dask,
            "ratio": dask["per_run_s"] / local["per_run_s"], "overhead_target": OVERHEAD_TARGET}


def report(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, trialdeck, reference, target) rows for bench/run_all.py."""
    d, loc = r["dask"], r["local"]
    return [
        (f"wall time per run, {d['runs']} x {r['preset']} ({r['epochs']} epochs) queued at once, 2 places",
         f"{d['per_run_s'] * 1e3:.0f} ms on a 2-worker Dask LocalCluster",
         f"{loc['per_run_s'] * 1e3:.0f} ms on the local engine (2 CPU slots)",
         f"ratio {r['ratio']:.2f} (informational)"),
        ("per-run overhead: a run's time on its place minus its epochs (median)",
         f"{d['overhead_s'] * 1e3:.0f} ms", f"{loc['overhead_s'] * 1e3:.0f} ms",
         f"Dask <= {r['overhead_target'] * 1e3:.0f} ms"),
        ("started -> first 'start' record in the local metrics stream (median)",
         f"{d['setup_s'] * 1e3:.0f} ms", f"{loc['setup_s'] * 1e3:.0f} ms", "informational"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 runs instead of 30")
    args = parser.parse_args(argv)
    r = run(quick=args.quick)
    for row in report(r):
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
