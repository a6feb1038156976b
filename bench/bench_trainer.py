"""Per-epoch overhead of trialdeck's trainer versus a plain hand-written PyTorch loop.

Both sides do the same work, in the same process, on the same tensors:
`base/digits-mlp` (8x8 digits, MLP 64-256-256-10, Adam lr 1e-3, batch 64),
on the CPU, no run directory (so no checkpoints), no augmentation:

- trainer: `engine.trainer.train(spec)` with no callback; per-epoch times are the
  history's `seconds` field (epoch start to after the epoch's evaluation and
  its one host read);
- plain: the loop a person would write by hand: `randperm` batches of 64, Adam,
  cross-entropy, losses summed on the device and read once per epoch, one
  evaluation of the validation set per epoch, timed over the same span.

Repetitions are interleaved (trainer, plain, trainer, plain, ...) after a
warm-up of each, and the table reports medians, so a noisy neighbour hits both
sides alike. Usage: python bench/bench_trainer.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.datasets import load_data  # noqa: E402
from engine.models import build_model  # noqa: E402
from engine.presets import resolve  # noqa: E402
from engine.trainer import train  # noqa: E402

PRESET = "base/digits-mlp"
TARGET = 1.05


def _spec(epochs: int):
    return resolve(PRESET, [f"train.epochs={epochs}", "train.device='cpu'"])


def _trainer_rep(epochs: int) -> tuple[list[float], float]:
    """One train() call: (per-epoch seconds from the history, wall seconds of the whole call)."""
    spec = _spec(epochs)
    t0 = time.perf_counter()
    result = train(spec)
    wall = time.perf_counter() - t0
    if result.state.value != "completed":
        raise RuntimeError(f"trainer run ended {result.state.value}: {result.error}")
    return [h.seconds for h in result.history], wall


def _plain_rep(epochs: int) -> tuple[list[float], float]:
    """The same training written by hand: (per-epoch seconds, wall seconds including setup)."""
    spec = _spec(epochs)
    t0 = time.perf_counter()
    torch.manual_seed(spec.train.seed)
    device = torch.device("cpu")
    data = load_data(spec.data, seed=spec.train.seed, device=device)
    model = build_model(spec.model, data.shape, data.classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=spec.optimizer.lr)
    gen = torch.Generator(device=device).manual_seed(spec.train.seed)
    x, y, xv, yv = data.x_train, data.y_train, data.x_val, data.y_val
    n, bs = x.shape[0], spec.data.batch_size
    steps = (n + bs - 1) // bs
    times = []
    for _ in range(epochs):
        e0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, device=device, generator=gen)
        total = torch.zeros((), device=device)
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        model.eval()
        with torch.no_grad():
            logits = model(xv)
            val_loss = F.cross_entropy(logits, yv).item()
            val_acc = (logits.argmax(1) == yv).float().mean().item()
        train_loss = (total / steps).item()  # the epoch's one read of the training loss
        times.append(time.perf_counter() - e0)
        assert train_loss == train_loss and val_loss == val_loss and 0.0 <= val_acc <= 1.0
    return times, time.perf_counter() - t0


def run(quick: bool = False) -> dict:
    """Interleaved repetitions of both loops; returns medians and trainer/plain ratios."""
    epochs, reps = (10, 5) if quick else (30, 15)
    # Warm-up: loads and caches the digits tensors, warms allocator and kernels for both sides.
    _trainer_rep(3)
    _plain_rep(3)
    trainer_epochs: list[float] = []
    plain_epochs: list[float] = []
    trainer_walls: list[float] = []
    plain_walls: list[float] = []
    for _ in range(reps):
        t, tw = _trainer_rep(epochs)
        p, pw = _plain_rep(epochs)
        trainer_epochs += t
        plain_epochs += p
        trainer_walls.append(tw / epochs)
        plain_walls.append(pw / epochs)
    t_med, p_med = statistics.median(trainer_epochs), statistics.median(plain_epochs)
    tw_med, pw_med = statistics.median(trainer_walls), statistics.median(plain_walls)
    return {
        "preset": PRESET,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "epochs_per_rep": epochs,
        "reps": reps,
        "trainer_epoch_s": t_med,
        "plain_epoch_s": p_med,
        "trainer_wall_per_epoch_s": tw_med,
        "plain_wall_per_epoch_s": pw_med,
        "ratio": t_med / p_med,
        "ratio_wall": tw_med / pw_med,
        "target": TARGET,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repetitions, a few seconds")
    args = parser.parse_args(argv)
    r = run(quick=args.quick)
    print(f"{r['preset']} on {r['device']}, {r['torch_threads']} torch threads, "
          f"{r['reps']} interleaved reps x {r['epochs_per_rep']} epochs, medians")
    print(f"{'loop':<10}{'epoch ms':>12}{'wall/epoch ms':>16}")
    print(f"{'trainer':<10}{r['trainer_epoch_s'] * 1e3:>12.2f}{r['trainer_wall_per_epoch_s'] * 1e3:>16.2f}")
    print(f"{'plain':<10}{r['plain_epoch_s'] * 1e3:>12.2f}{r['plain_wall_per_epoch_s'] * 1e3:>16.2f}")
    print(f"trainer / plain = {r['ratio']:.2f} (target <= {r['target']:.2f}); "
          f"including per-run setup: {r['ratio_wall']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def report(r: dict) -> list[tuple[str, str, str, str]]:
    """(figure, trialdeck, reference, target) rows for bench/run_all.py."""
    return [
        (f"per-epoch time, {r['preset']} on {r['device']} ({r['reps']} reps x {r['epochs_per_rep']} epochs)",
         f"{r['trainer_epoch_s'] * 1e3:.2f} ms", f"{r['plain_epoch_s'] * 1e3:.2f} ms plain loop",
         f"ratio {r['ratio']:.3f} (<= 1.05)"),
    ]
