"""Run every benchmark side by side in one process tree, print a table of ratios, write BENCHMARKS.md.

Each benchmark module exposes `run(quick) -> dict` (or `run(quick, device)`)
and `report(result) -> rows`, where a row is (figure, trialdeck, reference,
target). Every figure is measured against its plain reference in the same
run, so the ratios hold on a shared, noisy machine. GPU rows appear only when
CUDA is available; they are never estimated.

    python bench/run_all.py            # full, writes BENCHMARKS.md
    python bench/run_all.py --quick    # seconds; what CI runs so the suite never rots
    python bench/run_all.py --gpu-only --output GPU.md   # the CUDA sections alone
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (module, label, needs_cuda, extra kwargs)
SECTIONS = [
    ("bench.bench_trainer", "trainer vs plain loop (digits MLP, CPU)", False, {"device": "cpu"}),
    ("bench.bench_trainer", "trainer vs plain loop (MNIST-shaped synthetic CNN, GPU)", True, {"device": "cuda"}),
    ("bench.bench_augment", "batched augmentation vs torchvision v2 per-sample (CPU)", False, {"device": "cpu"}),
    ("bench.bench_augment", "batched augmentation vs torchvision v2 per-sample (GPU)", True, {"device": "cuda"}),
    ("bench.bench_store", "store and CLI start-up", False, {}),
    ("bench.bench_engine", "engine per-run overhead and queue-to-first-step latency", False, {}),
    ("bench.bench_tune", "`trialdeck tune` vs a plain in-process Optuna loop", False, {}),
    ("bench.bench_tui", "TUI under streaming runs", False, {}),
    ("bench.bench_ensemble", "ensemble trials vs one at a time (digits MLP, CPU)", False, {"device": "cpu"}),
    ("bench.bench_ensemble", "ensemble trials vs one at a time (digits MLP, GPU)", True, {"device": "cuda"}),
    ("bench.bench_packing", "trials per hour through the engine: one at a time, packed, ensembled (CPU)", False,
     {"device": "cpu"}),
    ("bench.bench_packing", "trials per hour through the engine: one at a time, packed, ensembled (GPU)", True,
     {"device": "cuda"}),
    ("bench.bench_script", "engine CPU while a script run prints 10,000 lines a second (captured), "
                           "and TensorBoard scalars to the catalogue", False, {}),
    ("bench.bench_cluster", "per-run overhead on a 2-worker Dask LocalCluster vs the local engine (CPU)", False, {}),
    ("bench.bench_stream", "data past the device budget: streaming path vs a plain DataLoader loop (CPU)", False,
     {"device": "cpu"}),
    ("bench.bench_scale", "a year of sweeps: 100,000 finished runs, and 50 studies of 1,000 trials, vs an empty workspace",
     False, {}),
    ("bench.bench_stream", "data past the device budget: streaming path vs a plain DataLoader loop (GPU)", True,
     {"device": "cuda"}),
    ("bench.bench_studies", "any Optuna study at scale, and pruning by dominance", False, {}),
]


def machine() -> dict[str, str]:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


Rows = list[tuple[str, str, str, str]]


def run_all(quick: bool, gpu_only: bool = False) -> tuple[dict[str, str], list[tuple[str, Rows, float]]]:
    import torch

    info = machine()
    results = []
    for module_name, label, needs_cuda, kwargs in SECTIONS:
        if needs_cuda and not torch.cuda.is_available() or gpu_only and not needs_cuda:
            continue
        module = importlib.import_module(module_name)
        start = time.perf_counter()
        print(f"== {label} ...", file=sys.stderr, flush=True)
        try:
            result = module.run(quick, **kwargs)
            rows = module.report(result)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            rows = [(label, "error", f"{type(exc).__name__}: {exc}", "")]
        results.append((label, rows, time.perf_counter() - start))
    return info, results


def render(info: dict[str, str], results, quick: bool) -> str:
    lines = [
        "# trialdeck benchmarks",
        "",
        "Produced by `python bench/run_all.py`" + (" --quick (small sizes: not the figures to quote)" if quick else "")
        + ". Every figure is measured next to its reference in the same run.",
        "",
        "| machine | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in info.items()],
        "",
    ]
    for label, rows, seconds in results:
        lines += [f"## {label}", "", "| figure | trialdeck | reference | target |", "| --- | --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        lines += ["", f"({seconds:.0f} s)", ""]
    if info["gpu"] == "none":
        lines += ["GPU figures (synthetic CNN trainer ratio, GPU augmentation, trials per hour one at a time vs "
                  "packed vs ensembled, the streaming data path with pinned memory) need a CUDA GPU and were not "
                  "measured on this machine.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run all trialdeck benchmarks.")
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds each; no targets enforced")
    parser.add_argument("--output", type=Path, default=None, help="where to write the report (default: BENCHMARKS.md, "
                                                                       "or nowhere with --quick)")
    parser.add_argument("--gpu-only", action="store_true", help="only the sections that need CUDA (a device "
                                                                     "session with little time); see --output")
    args = parser.parse_args()
    info, results = run_all(args.quick, args.gpu_only)
    text = render(info, results, args.quick)
    print(text)
    output = args.output or (None if args.quick or args.gpu_only else ROOT / "BENCHMARKS.md")
    if output is not None:
        output.write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    if any(b == "error" for _, rows, _ in results for _, b, _, _ in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
