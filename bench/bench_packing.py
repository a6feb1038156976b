"""Trials per hour through the engine: one at a time vs packed vs ensembled.

The same random study (learning rate, L2 and seed sampled; pruner off; fixed
sampler seed, so every mode trains the very same trials) runs three times, each
on a fresh workspace with a warm engine (one warm-up run first), timed from
`trialdeck tune --wait` to its exit:

- one at a time: one slot per device, `tune.ensemble = false`;
- packed: the automatic slot count on a GPU (several runs share it, placed
  by measured memory), 2 slots on a CPU; `tune.ensemble = false`;
- ensembled: one slot, `tune.ensemble = true` (each worker trains up to 32
  trials on a GPU, 16 on a CPU, as one vmapped model).

Sizes: digits (`base/digits-mlp`, 8x8 images) everywhere; on a GPU also an
MNIST-size one (`base/mnist-mlp` on 60,000 synthetic 1x28x28 images, since the
box has no network). Each mode's trial values are compared with one at a time:
packing must change no result; ensembles only by float rounding.

    python bench/bench_packing.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_tune import _cli  # noqa: E402

TARGET = 8.0
"""Best of packed / ensembled over one at a time, digits-size trials on an H100 (the issue's target)."""
STUDY = """
    description = "bench: random study over optimiser settings only (trials share one architecture)"
    extends = ["{base}"]

    [data]
    {data}

    [train]
    epochs = {epochs}

    [tune]
    sampler = "random"
    pruner = "none"
    seed = 0
    ensemble = {ensemble}

    [tune.space]
    "optimizer.lr" = {{ float = [1e-4, 1e-2], log = true }}
    "regularization.l2" = {{ float = [0.0, 1e-3] }}
    "train.seed" = {{ int = [0, 100000] }}
"""
SIZES = {
    "digits": ("base/digits-mlp", "", 5),
    "mnist-size": ("base/mnist-mlp", 'dataset = "synthetic"\n    synthetic_shape = [1, 28, 28]\n'
                   "    synthetic_size = 60000", 2),
}


def _mode(tmp: Path, name: str, size: str, trials: int, epochs: int, device: str) -> dict:
    base, data, _ = SIZES[size]
    home = tmp / f"{size}-{name}"
    preset = tmp / f"{size}-{name}.toml"
    preset.write_text(textwrap.dedent(STUDY.format(base=base, data=data, epochs=epochs,
                                                   ensemble="true" if name == "ensembled" else "false")).lstrip())
    if device == "cuda":
        slots = [] if name == "packed" else ["--slots-per-gpu", "1"]
    else:
        slots = ["--cpu-slots", "2" if name == "packed" else "1"]
    cpu = device == "cpu"  # GPUs hidden from the engine for the CPU figure
    _cli(home, "engine", "start", *slots, cpu=cpu)
    try:
        _cli(home, "run", str(preset), "--set", "train.epochs=1", "--wait", "--json", cpu=cpu)  # warm the workers
        t0 = time.perf_counter()
        out = json.loads(_cli(home, "tune", str(preset), "--study", "bench", "--trials", str(trials),
                              "--wait", "--json", cpu=cpu).stdout)
        wall = time.perf_counter() - t0
        status = json.loads(_cli(home, "engine", "status", "--json", cpu=cpu).stdout)
    finally:
        _cli(home, "engine", "stop", cpu=cpu)
    values = {t["number"]: t["value"] for t in out["trials"]}
    if out["state"] != "completed" or len(values) != trials or None in values.values():
        raise RuntimeError(f"{size} {name}: study ended {out['state']} with {out.get('counts')}")
    return {"wall_s": wall, "trials_per_hour": trials * 3600 / wall, "values": values,
            "slots": len(status.get("slots") or [])}


def run(quick: bool = False, device: str = "cpu") -> dict:
    sizes = ["digits"] + (["mnist-size"] if device == "cuda" and not quick else [])
    tmp = Path(tempfile.mkdtemp(prefix="trialdeck-bench-packing."))
    results: dict[str, dict] = {}
    try:
        for size in sizes:
            trials, epochs = (4, 1) if quick else (64, SIZES[size][2])
            modes = {name: _mode(tmp, name, size, trials, epochs, device)
                     for name in ("one at a time", "packed", "ensembled")}
            alone = modes["one at a time"]["values"]
            for m in modes.values():
                m["max_rel_diff"] = max(abs(m["values"][k] - v) / max(abs(v), 1e-12) for k, v in alone.items())
                m.pop("values")
            results[size] = {"trials": trials, "epochs": epochs, "modes": modes}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"device": device, "sizes": results, "target": TARGET}


def report(r: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for size, s in r["sizes"].items():
        alone = s["modes"]["one at a time"]
        for name in ("packed", "ensembled"):
            m = s["modes"][name]
            target = f"best >= {r['target']:g}x on an H100 (digits)" if r["device"] == "cuda" else "(no target on CPU)"
            rows.append((f"{size}: {s['trials']} trials x {s['epochs']} epochs, {name} ({m['slots']} slot(s)); "
                         f"values differ by <= {m['max_rel_diff']:.1e}",
                         f"{m['trials_per_hour']:,.0f} trials/h", f"{alone['trials_per_hour']:,.0f} trials/h one at a time",
                         f"{m['trials_per_hour'] / alone['trials_per_hour']:.2f}x; {target}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 digits trials of 1 epoch per mode")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    for row in report(run(args.quick, args.device)):
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
