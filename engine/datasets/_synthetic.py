"""`synthetic`: generated, learnable tensors of any shape, for benchmarks.

Each class has a fixed random prototype; a sample is its class's prototype plus
unit Gaussian noise, so a model can learn it but not trivially. The generator
seed is derived from (synthetic_shape, synthetic_classes, synthetic_size) only,
never from the run seed: every run with the same parameters sees the same data,
and only the split and subsample depend on the run seed.

`synthetic_shape` is channels first and becomes (C, H, W) like this:
  [F]           -> (F, 1, 1)   features become channels, so the per-channel
                               normalisation standardises each feature
                               (what StandardScaler would do for tabular data)
  [H, W]        -> (1, H, W)   one grey image
  [C, H, W]     -> (C, H, W)
  [A, B, H, W]  -> (A*B, H, W) leading dimensions folded into channels
Values are float32 used as is (pixel_max None).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trialdeck.engine.datasets._base import BaseDataset, RawArrays

if TYPE_CHECKING:
    from trialdeck.engine.presets.schema import DataConfig

# Prototype scale: with unit noise, a linear model separates classes well
# but not perfectly at the default [1, 28, 28] shape.
_SIGNAL = 0.5


def sample_shape(synthetic_shape: list[int] | tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) for a `synthetic_shape` of 1 to 4 dimensions (see module docstring)."""
    dims = tuple(int(d) for d in synthetic_shape)
    if len(dims) == 1:
        return (dims[0], 1, 1)
    if len(dims) == 2:
        return (1, dims[0], dims[1])
    if len(dims) == 3:
        return (dims[0], dims[1], dims[2])
    if len(dims) == 4:
        return (dims[0] * dims[1], dims[2], dims[3])
    raise ValueError(f"synthetic_shape must have 1 to 4 dimensions, got {list(dims)}")


def _data_seed(shape: tuple[int, int, int], classes: int, size: int) -> int:
    digest = hashlib.sha256(f"synthetic:{shape}:{classes}:{size}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class SyntheticDataset(BaseDataset):
    name = "synthetic"

    def cache_key(self, cfg: DataConfig, data_dir: Path) -> tuple:
        return (self.name, tuple(cfg.synthetic_shape), cfg.synthetic_classes, cfg.synthetic_size)

    def load_arrays(self, cfg: DataConfig, data_dir: Path) -> RawArrays:
        shape = sample_shape(cfg.synthetic_shape)
        classes, size = cfg.synthetic_classes, cfg.synthetic_size
        gen = torch.Generator().manual_seed(_data_seed(shape, classes, size))
        prototypes = torch.randn((classes, *shape), generator=gen) * _SIGNAL
        # Balanced labels (counts differ by at most one), in shuffled order.
        y = torch.arange(size, dtype=torch.int64) % classes
        y = y[torch.randperm(size, generator=gen)]
        x = torch.randn((size, *shape), generator=gen)
        # Add prototypes chunk by chunk so a huge benchmark set needs no second full-size temporary.
        chunk = max(1, 2**24 // max(1, math.prod(shape)))
        for start in range(0, size, chunk):
            x[start : start + chunk] += prototypes[y[start : start + chunk]]
        return RawArrays(x=x, y=y, pixel_max=None, classes=tuple(f"class {i}" for i in range(classes)))
