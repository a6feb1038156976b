"""Data past the device budget: trialdeck's streaming path against a plain DataLoader loop, and
the device path against the streaming path, on the same data.

The data is an .npz of uint8 images (`dataset = "arrays"`), the kind a user brings:

- CPU: 30,000 x 1x28x28 (MNIST-shaped), MLP 784-256-10, Adam, batch 128, 2 loader workers;
- GPU (`--device cuda`): 100,000 x 3x32x32 (CIFAR-shaped), the 32-64 channel CNN, Adam, batch 256,
  bf16 autocast, 4 loader workers with pinned memory.

Four loops train the same model on the same split for the same epochs:

- stream: `train(spec)` with `data.device_budget_mb` below the data's size, so the run takes the
  stream path (raw uint8 batches gathered by DataLoader workers, copied to the device and
  normalised there); per-epoch times are the history's `seconds` (training and evaluation);
- plain: the DataLoader loop a person writes: `TensorDataset` of the raw uint8 arrays,
  `DataLoader(batch_size, shuffle=True, num_workers, pin_memory, persistent_workers,
  prefetch_factor=4)`, each batch moved and normalised on the device, one evaluation per epoch
  through a second loader, timed over the same span;
- plain, batched: the same loop written the fast way, one gather per batch
  (`sampler=BatchSampler(RandomSampler(...))`, `batch_size=None`), as the stream path gathers:
  the reference for the stream path's own overhead (the target);
- device: `train(spec)` with the default budget: the data lives on the device.

Repetitions are interleaved after a warm-up and the table reports medians of per-epoch times.
Usage: python bench/bench_stream.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trialdeck.engine.datasets import channel_stats, get_dataset  # noqa: E402
from trialdeck.engine.datasets._load import _split  # noqa: E402
from trialdeck.engine.presets.schema import RunSpec  # noqa: E402
from trialdeck.engine.training.models import build_model  # noqa: E402
from trialdeck.engine.training.trainer import train  # noqa: E402

TARGET = 1.05
SETUPS = {
    "cpu": {"n": 20_000, "shape": (1, 28, 28), "batch": 128, "workers": 2,
            "model": {"kind": "mlp", "hidden": [256]}, "train": {}},
    "cuda": {"n": 100_000, "shape": (3, 32, 32), "batch": 256, "workers": 4,
             "model": {"kind": "cnn", "channels": [32, 64], "hidden": [128]}, "train": {"precision": "bf16"}},
}


def _write(folder: Path, device: str, quick: bool) -> Path:
    setup = SETUPS[device]
    n = setup["n"] // (5 if quick else 1)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n)
    # Learnable: each class brightens its own band of rows, under uint8 noise.
    x = rng.integers(0, 200, (n, *setup["shape"]), dtype=np.uint8)
    rows = setup["shape"][1]
    for k in range(10):
        band = slice(k * rows // 10, (k + 1) * rows // 10)
        x[y == k, :, band] = np.minimum(x[y == k, :, band].astype(np.int16) + 55, 255).astype(np.uint8)
    path = folder / "data.npz"
    np.savez(path, x=x, y=y)
    return path


def _spec(path: Path, device: str, epochs: int, stream: bool) -> RunSpec:
    setup = SETUPS[device]
    data = {"dataset": "arrays", "path": str(path), "batch_size": setup["batch"], "workers": setup["workers"]}
    if stream:
        data["device_budget_mb"] = 1.0  # far below the data: the stream path
    return RunSpec.model_validate({"preset": "bench-stream", "data": data, "model": setup["model"],
                                   "train": {"epochs": epochs, "device": device, **setup["train"]}})


def _trainer_rep(spec: RunSpec) -> list[float]:
    result = train(spec)
    if result.state.value != "completed":
        raise RuntimeError(f"trainer run ended {result.state.value}: {result.error}")
    return [h.seconds for h in result.history]


class _Rows(torch.utils.data.Dataset):
    """Raw rows by a list of indices: one gather per batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx):  # noqa: ANN001, ANN204 - a list of indices from the BatchSampler
        return self.x[idx], self.y[idx]


def _plain_rep(spec: RunSpec, batched: bool = False) -> list[float]:
    """A plain DataLoader loop on the same split and model (`batched`: one gather per batch):
    per-epoch seconds."""
    device = torch.device(spec.train.device)
    cuda = device.type == "cuda"
    torch.manual_seed(spec.train.seed)
    dataset = get_dataset("arrays")
    raw = dataset.load_arrays(spec.data, Path("."))
    train_idx, val_idx = _split(raw, spec.data, spec.train.seed)
    mean, std = channel_stats(raw, train_idx)
    mean, std = mean.to(device).view(1, -1, 1, 1), std.to(device).view(1, -1, 1, 1)
    workers = int(spec.data.workers or 0)
    extra = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
    data = torch.utils.data
    if batched:
        train_set, val_set = _Rows(raw.x[train_idx], raw.y[train_idx]), _Rows(raw.x[val_idx], raw.y[val_idx])
        loader = data.DataLoader(train_set, batch_size=None, num_workers=workers, pin_memory=cuda, **extra,
                                 sampler=data.BatchSampler(data.RandomSampler(train_set), spec.data.batch_size, False))
        val_loader = data.DataLoader(val_set, batch_size=None, num_workers=workers, pin_memory=cuda, **extra,
                                     sampler=data.BatchSampler(data.SequentialSampler(val_set), 4096, False))
    else:
        train_set = data.TensorDataset(raw.x[train_idx], raw.y[train_idx])
        val_set = data.TensorDataset(raw.x[val_idx], raw.y[val_idx])
        loader = data.DataLoader(train_set, batch_size=spec.data.batch_size, shuffle=True,
                                 num_workers=workers, pin_memory=cuda, **extra)
        val_loader = data.DataLoader(val_set, batch_size=4096, num_workers=workers, pin_memory=cuda, **extra)
    model = build_model(spec.model, tuple(raw.x.shape[1:]), len(raw.classes)).to(device)
    if cuda:
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and spec.train.precision == "bf16" \
        else contextlib.nullcontext()
    opt = torch.optim.Adam(model.parameters(), lr=spec.optimizer.lr)

    def prepare(xb: torch.Tensor) -> torch.Tensor:
        return (xb.to(device, non_blocking=True).float() / 255.0 - mean) / std

    times = []
    for _ in range(spec.train.epochs):
        e0 = time.perf_counter()
        model.train()
        total = torch.zeros((), device=device)
        steps = 0
        for xb, yb in loader:
            with autocast:
                loss = F.cross_entropy(model(prepare(xb)), yb.to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            steps += 1
        model.eval()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        with torch.no_grad():
            for xb, yb in val_loader:
                yb = yb.to(device, non_blocking=True)
                with autocast:
                    out = model(prepare(xb))
                loss_sum += F.cross_entropy(out.float(), yb, reduction="sum")
                correct += (out.argmax(1) == yb).sum()
        train_loss, val_loss = (total / steps).item(), (loss_sum / len(val_idx)).item()
        times.append(time.perf_counter() - e0)
        assert train_loss == train_loss and val_loss == val_loss
    return times


def run(quick: bool = False, device: str = "cpu") -> dict:
    epochs, reps = (3, 2) if quick else (5, 6)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), device, quick)
        stream, device_spec = _spec(path, device, epochs, True), _spec(path, device, epochs, False)
        _trainer_rep(_spec(path, device, 1, True))  # warm-up: caches, allocator, kernels, a first fork
        _plain_rep(_spec(path, device, 1, False))
        got: dict[str, list[float]] = {"stream": [], "plain": [], "batched": [], "device": []}
        for _ in range(reps):
            got["stream"] += _trainer_rep(stream)
            got["plain"] += _plain_rep(stream)
            got["batched"] += _plain_rep(stream, batched=True)
            got["device"] += _trainer_rep(device_spec)
        n = int(np.load(path, allow_pickle=False)["y"].shape[0])
    med = {k: statistics.median(v) for k, v in got.items()}
    setup = SETUPS[device]
    return {
        "data": f"{n:,} x {'x'.join(map(str, setup['shape']))} uint8", "device": device,
        "model": setup["model"]["kind"], "batch": setup["batch"], "workers": setup["workers"],
        "epochs_per_rep": epochs, "reps": reps,
        "stream_epoch_s": med["stream"], "plain_epoch_s": med["plain"], "batched_epoch_s": med["batched"],
        "device_epoch_s": med["device"], "ratio_plain": med["stream"] / med["plain"],
        "ratio": med["stream"] / med["batched"], "device_ratio": med["device"] / med["stream"], "target": TARGET,
    }


def report(r: dict) -> list[tuple[str, str, str, str]]:
    """(figure, trialdeck, reference, target) rows for bench/run_all.py."""
    what = f"{r['data']}, {r['model']}, batch {r['batch']}, {r['workers']} workers on {r['device']}"
    return [
        (f"per-epoch time, streaming path, {what} ({r['reps']} reps x {r['epochs_per_rep']} epochs)",
         f"{r['stream_epoch_s'] * 1e3:.0f} ms", f"{r['plain_epoch_s'] * 1e3:.0f} ms plain DataLoader loop "
         "(per-sample TensorDataset)", f"ratio {r['ratio_plain']:.3f} (<= {r['target']})"),
        ("per-epoch time, streaming path vs the same loop written with one gather per batch",
         f"{r['stream_epoch_s'] * 1e3:.0f} ms", f"{r['batched_epoch_s'] * 1e3:.0f} ms plain batched DataLoader loop",
         f"ratio {r['ratio']:.3f} (<= {r['target']})"),
        (f"per-epoch time, device path vs streaming path, {what}",
         f"{r['device_epoch_s'] * 1e3:.0f} ms device path", f"{r['stream_epoch_s'] * 1e3:.0f} ms streaming path",
         f"ratio {r['device_ratio']:.3f} (what fitting on the device saves)"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the data, fewer epochs and repetitions")
    parser.add_argument("--device", choices=tuple(SETUPS), default="cpu")
    args = parser.parse_args(argv)
    r = run(quick=args.quick, device=args.device)
    for row in report(r):
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
