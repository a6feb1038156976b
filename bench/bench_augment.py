"""Throughput of batched on-device augmentation versus torchvision's per-sample transforms.

Both sides use the article's ImageDataGenerator settings (rotation 20, shifts 0.2,
shear 0.2, zoom 0.2, horizontal flip) on MNIST-shaped uint8 images converted to
float, batch 256, in the same run:

- batched: `trialdeck.engine.training.augment.BatchAugment` on a device-resident tensor, batches
  drawn with `randperm` (how the trainer feeds small datasets);
- per-sample: torchvision.transforms.v2 RandomAffine + RandomHorizontalFlip in a
  Dataset read by a DataLoader (num_workers=0, batch 256), always on the CPU,
  which is where such a pipeline runs.

torchvision's affine has no 'nearest' edge fill, so it fills with 0; that does not
change its cost. Usage: python bench/bench_augment.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trialdeck.engine.presets.schema import AugmentConfig  # noqa: E402
from trialdeck.engine.training.augment import BatchAugment  # noqa: E402

ARTICLE = AugmentConfig(
    rotation=20, width_shift=0.2, height_shift=0.2, shear=0.2, zoom=0.2, horizontal_flip=True, fill_mode="nearest"
)
BATCH = 256


class _UInt8Images(torch.utils.data.Dataset):
    """TensorDataset-like: one uint8 (1, 28, 28) image and its label per index, transformed on read."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_batched(images: torch.Tensor, device: torch.device, epochs: int) -> float:
    """Best images/s over `epochs` passes (after one warm-up pass)."""
    data = images.to(device)
    aug = BatchAugment(ARTICLE)
    gen = torch.Generator(device=device).manual_seed(0)
    n = len(data)
    best = 0.0
    for epoch in range(epochs + 1):
        _sync(device)
        t0 = time.perf_counter()
        order = torch.randperm(n, device=device, generator=gen)
        for start in range(0, n, BATCH):
            x = data[order[start : start + BATCH]].float().div_(255.0)
            x = aug(x, gen)
        _sync(device)  # the only sync: end of the timed pass
        dt = time.perf_counter() - t0
        if epoch:  # epoch 0 is the warm-up
            best = max(best, n / dt)
    return best


def _time_torchvision(images: torch.Tensor, epochs: int) -> float:
    # Deferred: torchvision is only needed for this baseline.
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomAffine(degrees=20, translate=(0.2, 0.2), shear=0.2, scale=(0.8, 1.2)),
            v2.RandomHorizontalFlip(),
        ]
    )
    labels = torch.zeros(len(images), dtype=torch.long)
    loader = torch.utils.data.DataLoader(
        _UInt8Images(images, labels, transform), batch_size=BATCH, shuffle=True, num_workers=0
    )
    torch.manual_seed(0)
    for i, _ in enumerate(loader):  # warm-up: a few batches
        if i == 2:
            break
    best = 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        count = sum(len(x) for x, _ in loader)
        best = max(best, count / (time.perf_counter() - t0))
    return best


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Measure both pipelines; returns images/second for each and their ratio."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    n_batched, n_tv = (2048, 1024) if quick else (8192, 8192)
    epochs_batched, epochs_tv = (5, 1) if quick else (10, 2)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (max(n_batched, n_tv), 1, 28, 28), dtype=torch.uint8, generator=gen)

    batched = _time_batched(images[:n_batched], dev, epochs_batched)
    per_sample = _time_torchvision(images[:n_tv], epochs_tv)
    return {
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "batch_size": BATCH,
        "images_batched": n_batched,
        "images_torchvision": n_tv,
        "batched_images_per_s": batched,
        "torchvision_images_per_s": per_sample,
        "ratio": batched / per_sample,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the batched side's device)")
    args = parser.parse_args(argv)
    r = run(quick=args.quick, device=args.device)
    print(f"device {r['device']}, {r['torch_threads']} torch threads, batch {r['batch_size']}, 1x28x28 uint8->float")
    print(f"{'pipeline':<44}{'images':>8}{'images/s':>14}")
    print(f"{'BatchAugment (' + r['device'] + ')':<44}{r['images_batched']:>8}{r['batched_images_per_s']:>14,.0f}")
    print(f"{'torchvision v2 per-sample, DataLoader (cpu)':<44}{r['images_torchvision']:>8}"
          f"{r['torchvision_images_per_s']:>14,.0f}")
    print(f"batched / torchvision per-sample = {r['ratio']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def report(r: dict) -> list[tuple[str, str, str, str]]:
    """(figure, trialdeck, reference, target) rows for bench/run_all.py."""
    target = ">= 50x" if r["device"].startswith("cuda") else ">= 10x"
    return [
        (f"article augmentation, 1x28x28, batch {r['batch_size']} on {r['device']}",
         f"{r['batched_images_per_s']:,.0f} img/s", f"{r['torchvision_images_per_s']:,.0f} img/s torchvision v2 per-sample",
         f"ratio {r['ratio']:.1f}x ({target})"),
    ]
