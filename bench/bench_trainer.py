"""Per-epoch overhead of trialdeck's trainer versus a plain hand-written PyTorch loop.

Both sides do the same work, in the same process, on the same tensors, with no
run directory (so no checkpoints) and no augmentation:

- CPU: `base/digits-mlp` (8x8 digits, MLP 64-256-256-10, Adam lr 1e-3, batch 64);
- GPU (`--device cuda`): `base/mnist-cnn` on synthetic MNIST-shaped data
  (60,000 samples of 1x28x28, CNN 32-64 channels, Adam, batch 128) in bf16
  autocast with channels_last, the trainer's GPU path.

- trainer: `trialdeck.engine.training.trainer.train(spec)` with no callback; per-epoch times are the
  history's `seconds` field (epoch start to after the epoch's evaluation and
  its one host read);
- plain: the loop a person would write by hand: data on the device, `randperm`
  batches, Adam, cross-entropy (under the same autocast and memory format on a
  GPU), losses summed on the device and read once per epoch, one evaluation of
  the validation set per epoch, timed over the same span.

Repetitions are interleaved (trainer, plain, trainer, plain, ...) after a
warm-up of each, and the table reports medians, so a noisy neighbour hits both
sides alike. Usage: python bench/bench_trainer.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trialdeck.engine.datasets import load_data  # noqa: E402
from trialdeck.engine.presets import resolve  # noqa: E402
from trialdeck.engine.training.models import build_model  # noqa: E402
from trialdeck.engine.training.trainer import train  # noqa: E402

TARGET = 1.05
SETUPS = {
    "cpu": ("base/digits-mlp", ["train.device='cpu'"]),
    "cuda": ("base/mnist-cnn", ["train.device='cuda'", "train.precision='bf16'", "data.dataset='synthetic'",
                                "data.synthetic_shape=[1, 28, 28]", "data.synthetic_size=60000"]),
}


def _spec(epochs: int, device: str = "cpu"):
    preset, overrides = SETUPS[device]
    return resolve(preset, [f"train.epochs={epochs}", *overrides])


def _trainer_rep(epochs: int, device: str = "cpu") -> tuple[list[float], float]:
    """One train() call: (per-epoch seconds from the history, wall seconds of the whole call)."""
    spec = _spec(epochs, device)
    t0 = time.perf_counter()
    result = train(spec)
    wall = time.perf_counter() - t0
    if result.state.value != "completed":
        raise RuntimeError(f"trainer run ended {result.state.value}: {result.error}")
    return [h.seconds for h in result.history], wall


def _plain_rep(epochs: int, device_name: str = "cpu") -> tuple[list[float], float]:
    """The same training written by hand: (per-epoch seconds, wall seconds including setup)."""
    spec = _spec(epochs, device_name)
    t0 = time.perf_counter()
    torch.manual_seed(spec.train.seed)
    device = torch.device(device_name)
    data = load_data(spec.data, seed=spec.train.seed, device=device)
    model = build_model(spec.model, data.shape, data.classes).to(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        if spec.model.kind == "cnn":
            model = model.to(memory_format=torch.channels_last)
    bf16 = cuda and spec.train.precision == "bf16"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
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
            with autocast:
                loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        model.eval()
        with torch.no_grad(), autocast:
            logits = torch.cat([model(xv[j : j + 4096]) for j in range(0, xv.shape[0], 4096)]).float()
            val_loss = F.cross_entropy(logits, yv).item()
            val_acc = (logits.argmax(1) == yv).float().mean().item()
        train_loss = (total / steps).item()  # the epoch's one read of the training loss
        times.append(time.perf_counter() - e0)
        assert train_loss == train_loss and val_loss == val_loss and 0.0 <= val_acc <= 1.0
    return times, time.perf_counter() - t0


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Interleaved repetitions of both loops; returns medians and trainer/plain ratios."""
    if device == "cuda":
        epochs, reps = (3, 3) if quick else (10, 7)
    else:
        epochs, reps = (10, 5) if quick else (30, 15)
    # Warm-up: loads and caches the tensors, warms allocator and kernels (cudnn.benchmark) for both sides.
    _trainer_rep(2 if device == "cuda" else 3, device)
    _plain_rep(2 if device == "cuda" else 3, device)
    trainer_epochs: list[float] = []
    plain_epochs: list[float] = []
    trainer_walls: list[float] = []
    plain_walls: list[float] = []
    for _ in range(reps):
        t, tw = _trainer_rep(epochs, device)
        p, pw = _plain_rep(epochs, device)
        trainer_epochs += t
        plain_epochs += p
        trainer_walls.append(tw / epochs)
        plain_walls.append(pw / epochs)
    t_med, p_med = statistics.median(trainer_epochs), statistics.median(plain_epochs)
    tw_med, pw_med = statistics.median(trainer_walls), statistics.median(plain_walls)
    return {
        "preset": SETUPS[device][0] + (" (synthetic 60,000 x 1x28x28, bf16)" if device == "cuda" else ""),
        "device": device,
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
    parser.add_argument("--device", choices=tuple(SETUPS), default="cpu")
    args = parser.parse_args(argv)
    r = run(quick=args.quick, device=args.device)
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
