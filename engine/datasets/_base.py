"""The dataset interface: what one dataset implementation must provide.

A dataset only knows how to produce its raw *training split* as tensors
(`RawArrays`); splitting, subsampling, normalising and moving to a device are
done once, for every dataset alike, by `trialdeck.engine.datasets.load_data`.

Invariants of `RawArrays`: `x` is (N, C, ...) on the CPU, uint8 or float, in
raw units (0..pixel_max): (N, C, H, W) images for every built-in dataset, any
(N, features...) for `arrays`. `y` is int64 in [0, len(classes)) for a
classifier, or float32 (N, targets) for a regression (`arrays` with float y).
Samples from `val_start` on, when it is set, are the dataset's own validation
set (an .npz's x_val, y_val; an image folder's val/).
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
    """(N, C, H, W) images, or (N, features...) for `arrays`; uint8 or float, raw values, CPU."""
    y: torch.Tensor
    """(N,) int64 class indices, or (N, targets) float32 regression targets."""
    pixel_max: float | None
    """The largest possible raw value (16 for digits, 255 for 8-bit images);
    None for float data that is used as is."""
    classes: tuple[str, ...]
    """Class names, index i names label i; for a regression, one name per target."""
    val_start: int | None = None
    """Samples [val_start:] are the dataset's own validation set; None: split by val_fraction."""
    note: str = ""
    """One line for the run's log saying where the arrays came from (e.g. an image cache)."""

    @property
    def task(self) -> str:
        """"classification" (integer y) or "regression" (float y)."""
        return "regression" if self.y.is_floating_point() else "classification"


@dataclass(frozen=True, eq=False)
class TensorData:
    """Train and validation tensors ready for training, already on their device.

    Shared between runs of one warm process (see `load_data`'s cache): treat
    every tensor as read-only, never modify it in place.
    """

    x_train: torch.Tensor
    """(N_train, C, H, W) float32 (any (N_train, C, ...) for `arrays`), normalised per channel."""
    y_train: torch.Tensor
    """(N_train,) int64, or (N_train, targets) float32 for a regression."""
    x_val: torch.Tensor
    """(N_val, ...) float32, normalised with the training statistics."""
    y_val: torch.Tensor
    """Like y_train."""
    shape: tuple[int, ...]
    """One sample's shape: (C, H, W) for images."""
    classes: int
    """Number of classes (output width of a classifier), or of regression targets."""
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    """Per-channel mean of the training subset, in raw / pixel_max units (0..1 for images)."""
    std: tuple[float, ...]
    """Per-channel standard deviation, same units as `mean` (1.0 where a channel is constant)."""
    pixel_max: float | None
    """Raw value of a full-intensity pixel; None when the data was float (synthetic)."""
    dataset: str = ""
    task: str = "classification"
    """"classification" or "regression" (float targets: MSE loss, val_mae)."""
    note: str = ""
    """Where the arrays came from, for the run's log (RawArrays.note)."""

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def normalize_value(self, raw: float) -> torch.Tensor:
        """The normalised per-channel values of one raw pixel value, shape (C, 1, 1)."""
        return normalize_value(raw, self.mean, self.std, self.pixel_max, self.device)


def normalize_value(raw: float, mean: tuple[float, ...], std: tuple[float, ...], pixel_max: float | None,
                    device: torch.device | str) -> torch.Tensor:
    """The normalised per-channel values of one raw pixel value, shape (C, 1, 1).

    Used for augmentation's fill_mode="constant": `cval` is given in raw
    pixel units (0..255 for MNIST), like Keras' ImageDataGenerator.
    """
    scaled = float(raw) / pixel_max if pixel_max else float(raw)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    return ((scaled - mean_t) / std_t).view(-1, 1, 1)


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
