"""Store and CLI start-up costs: enqueue 1,000 runs; `runs list --json` and `Store.list_runs` over
10,000 (fresh, cached, without configs) and one enqueue at that size; reads and writes after
another process's write with 2,000 runs; `trialdeck --help`.

Each figure is printed next to a plain reference measured in the same run:
enqueueing against a bare `json.dump` of the same records to one file per
call (what a hand-rolled queue file costs), `runs list` against reading and
printing the catalogue with the standard json module, a long-lived Store's
`get_run` / `transition` right after another Store wrote (it re-reads only the
lines that changed) against the same call on a fresh Store (a whole parse, and
for the write a whole encode: what each such call cost before the incremental
reader), and `--help` against `python -c pass` (the interpreter's own start-up).

Run: python bench/bench_store.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.presets import resolve
from trialdeck.engine.workspace import Workspace


def _median_wall(argv: list[str], repeats: int, env: dict[str, str] | None = None) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _after_foreign_writes(root: Path, n_runs: int, repeats: int, config: dict, digest: str, preset: str) -> dict:
    """get_run and transition right after another Store's write: a long-lived Store vs a fresh one."""
    ws = Workspace(root).ensure()
    other = Store(ws)  # stands for another process: its own cache, its own writes
    history = [{"epoch": e, "train_loss": 2.0 / (e + 1), "val_loss": 1.5 / (e + 1), "val_acc": 0.82, "lr": 0.1,
                "seconds": 0.0139} for e in range(20)]
    item = {"preset": preset, "config": config, "config_hash": digest}
    other.create_runs([{**item, "extra": {"history": history, "summary": {"best_val_loss": 0.2}}}] * n_runs)
    spare = [r["id"] for r in other.create_runs([item] * (2 * repeats))]
    size_mb = os.path.getsize(ws.catalog_path) / 1e6
    warm = Store(ws)
    warm.get_run("r1")
    warm.get_run("r1")  # past its first read, as the engine and its workers are
    times: dict[str, list[float]] = {"get": [], "get_ref": [], "transition": [], "transition_ref": []}

    def timed(name: str, call) -> None:
        other.update_run("r1", note=len(times[name]))  # the other process writes first, every time
        t = time.perf_counter()
        call()
        times[name].append(time.perf_counter() - t)

    for i in range(repeats):
        run_id = f"r{1 + i}"
        timed("get", partial(warm.get_run, run_id))
        timed("get_ref", lambda: Store(ws).get_run(run_id))  # noqa: B023 - called before the loop moves on
        timed("transition", partial(warm.transition, spare[2 * i], "running"))
        timed("transition_ref", lambda: Store(ws).transition(spare[2 * i + 1], "running"))  # noqa: B023 - likewise
    return {"catalog_runs": n_runs, "catalog_mb": size_mb,
            **{f"after_write_{k}_seconds": statistics.median(v) for k, v in times.items()}}


def run(quick: bool = False) -> dict:
    n_enqueue = 100 if quick else 1000
    n_list = 1000 if quick else 10_000
    spec = resolve("seed/step-decay")
    config, digest = spec.config(), spec.content_hash
    tmp = Path(tempfile.mkdtemp(prefix="trialdeck-bench-store-"))
    try:
        ws = Workspace(tmp / "ws").ensure()
        store = Store(ws)
        t = time.perf_counter()
        for _ in range(n_enqueue):
            store.create_run(preset=spec.preset, config=config, config_hash=digest)
        enqueue = time.perf_counter() - t

        # Reference: the same records appended to a list and rewritten with json.dump each call.
        ref_path = tmp / "plain.json"
        records: list[dict] = []
        t = time.perf_counter()
        for i in range(n_enqueue):
            records.append({"id": i, "preset": spec.preset, "config": config, "state": "queued"})
            with open(ref_path, "w") as fh:
                json.dump(records, fh)
        enqueue_ref = time.perf_counter() - t

        batch = [{"preset": spec.preset, "config": config, "config_hash": digest}] * 1000
        for _ in range((n_list - n_enqueue) // 1000):
            store.create_runs(batch)
        # In-process reads of the whole catalogue: a fresh Store parses the file, a Store that
        # read it before and sees it unchanged reuses its parse, and a runs table asks without configs.
        t = time.perf_counter()
        listed = len(Store(ws).list_runs())
        list_cold = time.perf_counter() - t
        t = time.perf_counter()
        store.list_runs()
        list_cached = time.perf_counter() - t
        t = time.perf_counter()
        store.list_runs(omit=("config",))
        list_table = time.perf_counter() - t
        t = time.perf_counter()
        store.create_run(preset=spec.preset, config=config, config_hash=digest)
        enqueue_at_scale = time.perf_counter() - t
        # Only reading: the queued runs must not start an engine that would try to train them.
        env = {**os.environ, "TRIALDECK_HOME": str(ws.root), "TRIALDECK_NO_AUTOSTART": "1"}
        trialdeck = [sys.executable, "-m", "trialdeck.tui.cli"]
        runs_list = _median_wall([*trialdeck, "runs", "list", "--json"], 3, env)
        list_ref = _median_wall([sys.executable, "-c",
                                 f"import json,sys; json.dump(json.load(open({str(ws.catalog_path)!r})), sys.stdout)"], 3)
        help_time = _median_wall([*trialdeck, "--help"], 7)
        python_start = _median_wall([sys.executable, "-c", "pass"], 7)
        after_writes = _after_foreign_writes(tmp / "catalog", 500 if quick else 2000, 3 if quick else 9, config, digest,
                                             spec.preset)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "enqueue_runs": n_enqueue,
        "enqueue_seconds": enqueue,
        "enqueue_reference_seconds": enqueue_ref,
        "list_runs": n_list,
        "runs_list_json_seconds": runs_list,
        "runs_list_reference_seconds": list_ref,
        "listed_runs": listed,
        "list_cold_seconds": list_cold,
        "list_cached_seconds": list_cached,
        "list_table_seconds": list_table,
        "enqueue_at_scale_seconds": enqueue_at_scale,
        "help_seconds": help_time,
        "python_startup_seconds": python_start,
        **after_writes,
    }


def report(r: dict) -> list[tuple[str, str, str, str]]:
    """(figure, trialdeck, reference, target) rows for run_all's table."""
    return [
        (f"enqueue {r['enqueue_runs']:,} runs (one call each)", f"{r['enqueue_seconds']:.2f} s",
         f"{r['enqueue_reference_seconds']:.2f} s json.dump per call", "<= 5 s for 1,000"),
        (f"`runs list --json` over {r['list_runs']:,} runs", f"{r['runs_list_json_seconds']:.2f} s",
         f"{r['runs_list_reference_seconds']:.2f} s json load+dump", "<= 1 s for 10,000"),
        (f"`Store.list_runs` of {r['listed_runs']:,} runs: cached parse, without configs",
         f"{r['list_cached_seconds']:.3f} s, {r['list_table_seconds']:.3f} s",
         f"{r['list_cold_seconds']:.2f} s fresh Store (whole parse)", "cached <= 0.1 s"),
        (f"one enqueue at {r['listed_runs']:,} runs", f"{r['enqueue_at_scale_seconds'] * 1e3:.0f} ms",
         f"{r['enqueue_seconds'] / r['enqueue_runs'] * 1e3:.0f} ms per enqueue on a small catalogue", "<= 100 ms"),
        _after_write_row(r, "get", "`get_run`", "whole parse (fresh Store)", 0.2),
        _after_write_row(r, "transition", "`transition`", "whole parse + encode (fresh Store)", 0.5),
        ("`trialdeck --help`", f"{r['help_seconds']:.3f} s", f"{r['python_startup_seconds']:.3f} s `python -c pass`",
         "<= 0.20 s"),
    ]


def _after_write_row(r: dict, key: str, call: str, reference: str, limit: float) -> tuple[str, str, str, str]:
    ours, ref = r[f"after_write_{key}_seconds"], r[f"after_write_{key}_ref_seconds"]
    return (f"{call} after another process's write, {r['catalog_runs']:,} runs of 20 epochs ({r['catalog_mb']:.1f} MB)",
            f"{ours * 1e3:.1f} ms", f"{ref * 1e3:.1f} ms {reference}", f"ratio {ours / ref:.2f} (<= {limit})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    r = run(parser.parse_args().quick)
    for row in report(r):
        print(f"{row[0]:<44} {row[1]:>9}   ref {row[2]:<32} target {row[3]}")


if __name__ == "__main__":
    main()
