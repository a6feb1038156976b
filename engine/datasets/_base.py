"""The dataset interface: what one dataset implementation must provide.

A dataset only knows how to produce its raw *training split* as tensors
(`RawArrays`); splitting, subsampling, normalising and moving to a device are
done once, for every dataset alike, by `trialdeck.engine.datasets.load_data`.

Invariants of `RawArrays`: `x` is (N, C, H, W), uint8 or float, in raw pixel
units (0..pixel_max), on the CPU; `y` is int64 in [0, len(classes)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from trialdeck.engine.presets.schema import DataConfig


@dataclass(frozen=True)
class RawArrays:
    """A dataset's training split, as loaded, before any split or scaling."""

    x: torch.Tensor
    """(N, C, H, W), uint8 or float, raw pixel values, CPU."""
    y: torch.Tensor
    """(N,), int64 class indices."""
    pixel_max: float | None
    """The largest possible raw value (16 for digits, 255 for 8-bit images);
    None for float data that is used as is."""
    classes: tuple[str, ...]
    """Class names, index i names label i."""


@dataclass(frozen=True, eq=False)
class TensorData:
    """Train and validation tensors ready for training, already on their device.

    Shared between runs of one warm process (see `load_data`'s cache): treat
    every tensor as read-only, never modify it in place.
    """

    x_train: torch.Tensor
    """(N_train, C, H, W) float32, normalised per channel."""
    y_train: torch.Tensor
    """(N_train,) int64."""
    x_val: torch.Tensor
    """(N_val, C, H, W) float32, normalised with the training statistics."""
    y_val: torch.Tensor
    """(N_val,) int64."""
    shape: tuple[int, int, int]
    """(C, H, W) of one sample."""
    classes: int
    """Number of classes (output width of a classifier)."""
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    """Per-channel mean of the training subset, in raw / pixel_max units (0..1 for images)."""
    std: tuple[float, ...]
    """Per-channel standard deviation, same units as `mean` (1.0 where a channel is constant)."""
    pixel_max: float | None
    """Raw value of a full-intensity pixel; None when the data was float (synthetic)."""
    dataset: str = ""

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def normalize_value(self, raw: float) -> torch.Tensor:
        """The normalised per-channel values of one raw pixel value, shape (C, 1, 1).

        Used for augmentation's fill_mode="constant": `cval` is given in raw
        pixel units (0..255 for MNIST), like Keras' ImageDataGenerator.
        """
        scaled = float(raw) / self.pixel_max if self.pixel_max else float(raw)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=self.device)
        return ((scaled - mean) / std).view(-1, 1, 1)


class BaseDataset:
    """One dataset a preset can name in `[data] dataset`.

    Subclasses set `name` and implement `load_arrays`. They are stateless:
    caching is `load_data`'s job, keyed by `cache_key`.
    """

    name: ClassVar[str] = ""

    def load_arrays(self, cfg: DataConfig, data_dir: Path) -> RawArrays:
        """Return the training split as raw tensors.

        Raises `trialdeck.engine.errors.DatasetUnavailable` with a one-line, actionable
        message when the data cannot be had (missing files, no network).
        """
        raise NotImplementedError

    def cache_key(self, cfg: DataConfig, data_dir: Path) -> tuple:
        """What makes two `load_arrays` calls return the same arrays."""
        return (self.name,)
