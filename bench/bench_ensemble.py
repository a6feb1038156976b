"""Trials per hour: K digits-MLP trials one at a time with train() versus one vmapped ensemble.

Both sides train the same K specs, in the same process, on the same device:
`base/digits-mlp` (8x8 digits, MLP 64-256-256-10, Adam, batch 64), each trial
with its own random learning rate, seed and L2 penalty, no run directory (so no
checkpoints), no callback:

- one at a time: `trialdeck.engine.training.trainer.train(spec)` for each spec in turn (the
  engine's warm worker, minus the store);
- ensemble: `trialdeck.engine.training.ensemble.train_ensemble(specs)`, every trial in one
  stack, each still with its own history and result.

Data and kernels are warmed up first; repetitions alternate the two sides and
the table reports medians, so a noisy neighbour hits both alike. Alongside the
speed, the largest difference between a member's val_loss and its separate
run's says the two sides did the same work. Usage:
python bench/bench_ensemble.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trialdeck.engine.presets import resolve  # noqa: E402
from trialdeck.engine.training.ensemble import train_ensemble  # noqa: E402
from trialdeck.engine.training.trainer import train  # noqa: E402

PRESET = "base/digits-mlp"
TARGETS = {"cpu": 1.0, "cuda": 4.0}
"""Ensemble / one-at-a-time trials per hour. On a CPU one digits trial already keeps the cores
busy (the work is matmuls either way), so the ensemble must only not lose; on a GPU one trial
leaves the device idle between kernel launches, and K trials share each launch."""


def _specs(k: int, epochs: int, device: str) -> list:
    rng = random.Random(0)
    return [resolve(PRESET, [f"train.epochs={epochs}", f"train.device='{device}'",
                             f"train.seed={rng.randrange(10_000)}", f"optimizer.lr={10 ** rng.uniform(-3.5, -2):.6g}",
                             f"regularization.l2={10 ** rng.uniform(-6, -3):.6g}"])
            for _ in range(k)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _one_at_a_time(specs, device: str) -> tuple[float, list]:
    _sync(device)
    t0 = time.perf_counter()
    results = [train(s) for s in specs]
    _sync(device)
    return time.perf_counter() - t0, results


def _ensemble(specs, device: str) -> tuple[float, list]:
    _sync(device)
    t0 = time.perf_counter()
    results = train_ensemble(specs)
    _sync(device)
    return time.perf_counter() - t0, results


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Alternating repetitions of both sides; returns median walls, trials/hour and their ratio."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    k, epochs, reps = (8, 2, 3) if quick else (16, 5, 5)
    specs = _specs(k, epochs, device)
    _one_at_a_time(specs[:2], device)  # warm-up: loads the digits tensors, warms kernels for both sides
    _ensemble(specs[:2], device)
    singles, ensembles = [], []
    diff = 0.0
    for _ in range(reps):
        wall, alone = _one_at_a_time(specs, device)
        singles.append(wall)
        wall, together = _ensemble(specs, device)
        ensembles.append(wall)
        for a, b in zip(alone, together):
            if a.state != b.state:
                raise RuntimeError(f"a member ended {b.state.value}, its separate run {a.state.value}")
            diff = max(diff, max(abs(x.val_loss - y.val_loss) for x, y in zip(a.history, b.history)))
    single, ensemble = statistics.median(singles), statistics.median(ensembles)
    return {
        "preset": PRESET,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "torch_threads": torch.get_num_threads(),
        "trials": k,
        "epochs": epochs,
        "reps": reps,
        "one_at_a_time_s": single,
        "ensemble_s": ensemble,
        "one_at_a_time_trials_per_hour": k / single * 3600,
        "ensemble_trials_per_hour": k / ensemble * 3600,
        "ratio": single / ensemble,
        "max_val_loss_diff": diff,
        "target": TARGETS["cuda" if device.startswith("cuda") else "cpu"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 trials x 2 epochs, 3 repetitions: a few seconds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    r = run(quick=args.quick, device=args.device)
    print(f"{r['trials']} x {r['preset']} trials, {r['epochs']} epochs, on {r['gpu'] or r['device']} "
          f"({r['torch_threads']} torch threads), median of {r['reps']}")
    print(f"{'side':<16}{'wall s':>10}{'trials/hour':>14}")
    print(f"{'one at a time':<16}{r['one_at_a_time_s']:>10.2f}{r['one_at_a_time_trials_per_hour']:>14,.0f}")
    print(f"{'ensemble':<16}{r['ensemble_s']:>10.2f}{r['ensemble_trials_per_hour']:>14,.0f}")
    print(f"ensemble / one at a time = {r['ratio']:.2f}x (target >= {r['target']:.1f}x); "
          f"largest val_loss difference {r['max_val_loss_diff']:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def report(r: dict) -> list[tuple[str, str, str, str]]:
    """(figure, trialdeck, reference, target) rows for bench/run_all.py."""
    where = r["gpu"] or r["device"]
    return [
        (f"trials/hour, {r['trials']} x {r['preset']} x {r['epochs']} epochs on {where} (median of {r['reps']})",
         f"{r['ensemble_trials_per_hour']:,.0f} ensembled ({r['ensemble_s']:.2f} s)",
         f"{r['one_at_a_time_trials_per_hour']:,.0f} one at a time ({r['one_at_a_time_s']:.2f} s)",
         f"ratio {r['ratio']:.2f}x (>= {r['target']:.1f}x)"),
        (f"largest |val_loss| difference, member vs its separate run ({where})",
         f"{r['max_val_loss_diff']:.1e}", "0 (same specs, same data order)", "< 1e-4"),
    ]
