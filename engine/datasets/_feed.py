"""How a run's batches reach the training device: the device path and the stream path.

`DeviceFeed` (data that fits the device budget): the normalised train and
validation tensors live on the device (`TensorData`), a batch is an index into
them. `StreamFeed` (data past the budget): the raw arrays stay in host memory,
and a DataLoader (worker processes, persistent across epochs, prefetching,
pinned memory on CUDA) gathers each batch of raw values; the batch is copied to
the device and normalised there, and augmentation, like on the device path,
runs batched on the device after it.

Invariants, which make the two paths interchangeable:
- The same batches in the same order: both take the epoch's permutation from
  the run's own generator (`perm`) and cut it into the same slices; a stream
  resumes inside an epoch from the same step.
- The same values: both normalise `(raw * scale - mean) / std` with the same
  float32 operations and the same statistics (`_load.channel_stats`), so on one
  device a run gives the same metrics on either path, up to float rounding.
- `close()` ends the loader's worker processes; a feed is a context manager.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from trialdeck.engine.datasets._base import RawArrays, TensorData, normalize_value

Batch = tuple[torch.Tensor, torch.Tensor]


class BaseFeed:
    """What the trainer reads: facts about the data, and batches on the device."""

    path: ClassVar[str] = ""
    """"device" or "stream": recorded on the run as `data_path`."""
    shape: tuple[int, ...]
    classes: int
    class_names: tuple[str, ...]
    task: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_max: float | None
    note: str
    n_train: int
    n_val: int
    device: torch.device

    def normalize_value(self, raw: float) -> torch.Tensor:
        return normalize_value(raw, self.mean, self.std, self.pixel_max, self.device)

    def batches(self, perm: torch.Tensor, first: int, steps: int, size: int) -> Iterator[Batch]:
        """Training batches `first..steps-1` of the epoch whose order is `perm` (positions into
        the training subset), each `size` samples (the last may be short)."""
        raise NotImplementedError

    def val_batches(self, size: int) -> Iterator[Batch]:
        """The validation set in order, in chunks of `size`."""
        raise NotImplementedError

    def sample(self, k: int) -> Batch:
        """The first `k` training samples, on the device (to check a model's output shape)."""
        raise NotImplementedError

    def close(self) -> None:
        """Free what the feed holds (a stream's worker processes)."""

    def __enter__(self) -> BaseFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeviceFeed(BaseFeed):
    path = "device"

    def __init__(self, data: TensorData, note: str = "") -> None:
        self.data = data
        self.shape, self.classes, self.class_names, self.task = data.shape, data.classes, data.class_names, data.task
        self.mean, self.std, self.pixel_max, self.note = data.mean, data.std, data.pixel_max, note
        self.n_train, self.n_val, self.device = int(data.y_train.shape[0]), int(data.y_val.shape[0]), data.device

    def batches(self, perm: torch.Tensor, first: int, steps: int, size: int) -> Iterator[Batch]:
        x, y = self.data.x_train, self.data.y_train
        for i in range(first, steps):
            idx = perm[i * size : (i + 1) * size]
            yield x[idx], y[idx]

    def val_batches(self, size: int) -> Iterator[Batch]:
        x, y = self.data.x_val, self.data.y_val
        for i in range(0, self.n_val, size):
            yield x[i : i + size], y[i : i + size]

    def sample(self, k: int) -> Batch:
        return self.data.x_train[:k], self.data.y_train[:k]


class _Gather(torch.utils.data.Dataset):
    """Raw samples by a whole batch of indices at once: one vectorised gather per batch, in a
    loader worker, instead of N __getitem__ calls and a collate."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: np.ndarray) -> Batch:
        rows = torch.from_numpy(idx)
        return self.x[rows], self.y[rows]


class _Plan(torch.utils.data.Sampler):
    """The index batches of the next pass. The loader iterates its sampler in the training
    process when a pass starts, so setting `batches` before each pass steers persistent workers."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamFeed(BaseFeed):
    path = "stream"
    PREFETCH = 4
    """Batches each worker prepares ahead."""

    def __init__(self, raw: RawArrays, train_idx: torch.Tensor, val_idx: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, device: torch.device, workers: int, note: str = "") -> None:
        self.raw, self.device, self.note = raw, device, note
        self.train_idx, self.val_idx = train_idx, val_idx
        self.shape = tuple(int(d) for d in raw.x.shape[1:])
        self.classes, self.class_names, self.task = len(raw.classes), raw.classes, raw.task
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.pixel_max = raw.pixel_max
        self.n_train, self.n_val = len(train_idx), len(val_idx)
        self.scale = 1.0 / raw.pixel_max if raw.pixel_max else 1.0
        view = (1, -1, *([1] * (raw.x.dim() - 2)))
        self._mean = mean.to(device).view(view)
        self._std = std.to(device).view(view)
        self.plan = _Plan()
        cuda = device.type == "cuda"
        extra: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": self.PREFETCH} if workers else {}
        self.loader: torch.utils.data.DataLoader | None = torch.utils.data.DataLoader(
            _Gather(raw.x, raw.y), batch_size=None, sampler=self.plan, num_workers=workers, pin_memory=cuda, **extra)

    def _to_device(self, xb: torch.Tensor, yb: torch.Tensor) -> Batch:
        # Pinned host memory makes these copies asynchronous; the same float32 operations as
        # _load._build, so a batch here equals the device path's batch.
        x = xb.to(self.device, non_blocking=True).to(torch.float32)
        if self.scale != 1.0:
            x.mul_(self.scale)
        x.sub_(self._mean).div_(self._std)
        return x, yb.to(self.device, non_blocking=True)

    def _run(self, batches: list[np.ndarray]) -> Iterator[Batch]:
        assert self.loader is not None, "the feed is closed"
        self.plan.batches = batches
        for xb, yb in self.loader:
            yield self._to_device(xb, yb)

    def batches(self, perm: torch.Tensor, first: int, steps: int, size: int) -> Iterator[Batch]:
        # Index batches go to the workers as numpy arrays, pickled by value (a kilobyte): a tensor
        # would be moved to shared memory and sent as a file descriptor, batch after batch.
        order = self.train_idx[perm.cpu()].numpy()  # the epoch's one host sync on a CUDA generator
        return self._run([order[i * size : (i + 1) * size] for i in range(first, steps)])

    def val_batches(self, size: int) -> Iterator[Batch]:
        chunks = math.ceil(self.n_val / size)
        order = self.val_idx.numpy()
        return self._run([order[i * size : (i + 1) * size] for i in range(chunks)])

    def sample(self, k: int) -> Batch:
        idx = self.train_idx[:k]
        return self._to_device(self.raw.x[idx], self.raw.y[idx])

    def close(self) -> None:
        loader, self.loader = self.loader, None
        workers = getattr(loader, "_iterator", None)
        if workers is not None and hasattr(workers, "_shutdown_workers"):
            workers._shutdown_workers()  # now, not whenever the garbage collector gets to it
