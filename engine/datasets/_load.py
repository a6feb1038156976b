"""`load_data` and `load_feed`: from a `[data]` block to what training reads, cached per process.

Two caches make a warm worker fast: raw arrays per dataset (so MNIST is read
from disk once per process) and the final `TensorData` per (data settings,
seed, device) in a small LRU (so repeated trials reuse the device tensors).
Cached tensors are shared: callers must not modify them in place.

`load_feed` is what a run trains from: the device path (`TensorData`, as
`load_data` gives it) while the float32 train and validation tensors fit the
device budget (`data.device_budget_mb`; unset: `AUTO_BUDGET_FRACTION` of the
device's memory), else the stream path (raw arrays in host memory, batches
through a DataLoader; see `_feed`). Both split and normalise alike.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trialdeck.engine.datasets._arrays import ArraysDataset
from trialdeck.engine.datasets._base import BaseDataset, RawArrays, TensorData
from trialdeck.engine.datasets._digits import DigitsDataset
from trialdeck.engine.datasets._feed import BaseFeed, DeviceFeed, StreamFeed
from trialdeck.engine.datasets._imagefolder import ImageFolderDataset
from trialdeck.engine.datasets._split import split_indices
from trialdeck.engine.datasets._synthetic import SyntheticDataset
from trialdeck.engine.datasets._torchvision import (
    Cifar10Dataset,
    Cifar100Dataset,
    FashionMnistDataset,
    MnistDataset,
    SvhnDataset,
)
from trialdeck.engine.errors import PresetError

if TYPE_CHECKING:
    from trialdeck.engine.presets.schema import DataConfig

DATASET_REGISTRY: dict[str, type[BaseDataset]] = {
    cls.name: cls
    for cls in (DigitsDataset, MnistDataset, FashionMnistDataset, Cifar10Dataset, Cifar100Dataset, SvhnDataset,
                SyntheticDataset, ArraysDataset, ImageFolderDataset)
}
"""`[data] dataset` string -> implementation."""

AUTO_BUDGET_FRACTION = 0.25
"""Unset `data.device_budget_mb`: data up to this share of the device's memory (GPU memory on
CUDA, RAM on the CPU) lives on the device; the rest of it is left to the model, its
activations and the other runs packed on the same GPU."""
DEFAULT_WORKERS = 2
"""Unset `data.workers`: DataLoader processes feeding a stream."""

_RAW_CACHE_SIZE = 4
_DATA_CACHE_SIZE = 4
_raw_cache: OrderedDict[tuple, RawArrays] = OrderedDict()
_data_cache: OrderedDict[tuple, TensorData] = OrderedDict()
_lock = threading.Lock()


def get_dataset(name: str) -> BaseDataset:
    """The implementation registered for a preset's dataset name."""
    try:
        return DATASET_REGISTRY[name]()
    except KeyError:
        allowed = " | ".join(DATASET_REGISTRY)
        raise PresetError(f"data.dataset: unknown dataset {name!r}; allowed: {allowed}") from None


def default_data_dir() -> Path:
    """The workspace's dataset folder: $TRIALDECK_HOME/data, else ~/.trialdeck/data."""
    home = os.environ.get("TRIALDECK_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".trialdeck") / "data"


def clear_cache() -> None:
    """Forget cached arrays and device tensors (frees their memory once unreferenced)."""
    with _lock:
        _raw_cache.clear()
        _data_cache.clear()


def _lru_get(cache: OrderedDict, key: tuple):
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _lru_put(cache: OrderedDict, key: tuple, value, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)


def load_data(
    cfg: DataConfig,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    data_dir: Path | None = None,
) -> TensorData:
    """Train/validation tensors for `cfg`, normalised and on `device` (whatever their size).

    Validation: a stratified `val_fraction` of the dataset's training split,
    chosen by `seed` only (the dataset's own validation set when it has one:
    an .npz's x_val, an image folder's val/). Training: a stratified
    `round(train_fraction * rest)` (at least 1) of the rest, also by `seed`
    (uniform instead of stratified for regression targets). Both are
    normalised per channel with the mean and std of the training subset.
    Raises `DatasetUnavailable` (files missing and no network) or `PresetError`.
    """
    dataset, data_dir, dev, raw_key = _resolve(cfg, device, data_dir)
    # One lock for load and build: two threads asking for the same data must
    # not both read it from disk or both fill device memory with a copy.
    with _lock:
        raw, _ = _raw_arrays(dataset, cfg, data_dir, raw_key)
        return _device_data(dataset.name, raw, raw_key, cfg, int(seed), dev)


def data_facts(cfg: DataConfig, *, seed: int, data_dir: Path | None = None) -> dict[str, Any]:
    """What a run's network is built for and how its inputs are normalised (shape, classes and
    their names, task, per-channel mean and std of its training subset, pixel_max), as
    `load_data` would give them, without building the normalised tensors."""
    dataset, data_dir, _, raw_key = _resolve(cfg, "cpu", data_dir)
    with _lock:
        raw, _ = _raw_arrays(dataset, cfg, data_dir, raw_key)
        train_idx, _ = _split(raw, cfg, int(seed))
        mean, std = channel_stats(raw, train_idx)
    return {"shape": tuple(int(d) for d in raw.x.shape[1:]), "classes": len(raw.classes), "class_names": raw.classes,
            "mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std),
            "pixel_max": raw.pixel_max, "task": raw.task}


def load_feed(
    cfg: DataConfig,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    data_dir: Path | None = None,
) -> BaseFeed:
    """What a run trains from: the device path while the data fits `device_budget`, else the
    stream path (see the module docstring). Same split and normalisation as `load_data`."""
    dataset, data_dir, dev, raw_key = _resolve(cfg, device, data_dir)
    with _lock:
        raw, fresh = _raw_arrays(dataset, cfg, data_dir, raw_key)
        note = raw.note if fresh or not raw.note else f"{dataset.name}: the arrays an earlier run loaded in this process"
        train_idx, val_idx = _split(raw, cfg, int(seed))
        need = (len(train_idx) + len(val_idx)) * math.prod(raw.x.shape[1:]) * 4  # float32 on the device
        budget = device_budget(cfg, dev)
        if budget is None or need <= budget:
            return DeviceFeed(_device_data(dataset.name, raw, raw_key, cfg, int(seed), dev, (train_idx, val_idx)), note)
        mean, std = channel_stats(raw, train_idx)
    workers = DEFAULT_WORKERS if cfg.workers is None else cfg.workers
    why = (f"{need / 2**20:,.1f} MiB of float32 data is over the device budget of {budget / 2**20:,.1f} MiB "
           f"(data.device_budget_mb): streaming batches from host memory ({workers} loader workers)")
    return StreamFeed(raw, train_idx, val_idx, mean, std, dev, workers, f"{note}; {why}" if note else why)


def device_budget(cfg: DataConfig, device: torch.device) -> int | None:
    """Bytes of data that may live on `device`: `data.device_budget_mb`, else a quarter of the
    device's memory; None when it cannot be known (then the data goes to the device)."""
    if cfg.device_budget_mb is not None:
        return int(cfg.device_budget_mb * 2**20)
    try:
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
        elif device.type == "mps":
            total = torch.mps.recommended_max_memory()
        else:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None
    return int(total * AUTO_BUDGET_FRACTION)


def _resolve(cfg: DataConfig, device: str | torch.device, data_dir: Path | None) -> tuple[BaseDataset, Path, torch.device, tuple]:
    dataset = get_dataset(cfg.dataset)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    return dataset, data_dir, torch.device(device), dataset.cache_key(cfg, data_dir)


def _raw_arrays(dataset: BaseDataset, cfg: DataConfig, data_dir: Path, raw_key: tuple) -> tuple[RawArrays, bool]:
    """The dataset's raw arrays, and whether they were read now (False: from this process's cache)."""
    raw = _lru_get(_raw_cache, raw_key)
    if raw is not None:
        return raw, False
    raw = dataset.load_arrays(cfg, data_dir)
    _lru_put(_raw_cache, raw_key, raw, _RAW_CACHE_SIZE)
    return raw, True


def _split(raw: RawArrays, cfg: DataConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    train_idx, val_idx = split_indices(
        raw.y.numpy(), val_fraction=cfg.val_fraction, train_fraction=cfg.train_fraction, seed=seed,
        stratify=raw.task == "classification", val_start=raw.val_start,
    )
    return torch.from_numpy(train_idx), torch.from_numpy(val_idx)


def channel_stats(raw: RawArrays, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (axis 1) mean and std of the samples `idx`, in raw / pixel_max units, as
    float32: summed in float64, chunk by chunk on the host, so both data paths get exactly the
    same statistics without a float copy of the whole set. A constant channel gets std 1."""
    x = raw.x
    scale = 1.0 / raw.pixel_max if raw.pixel_max else 1.0
    dims = (0, *range(2, x.dim()))
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    chunk = max(1, 2**22 // max(1, math.prod(x.shape[1:])))
    for start in range(0, len(idx), chunk):
        part = x[idx[start : start + chunk]].to(torch.float64) * scale
        total += part.sum(dims)
        squares += part.square().sum(dims)
    count = max(1, len(idx) * math.prod(x.shape[2:]))
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.to(torch.float32), std.to(torch.float32)


def _device_data(name: str, raw: RawArrays, raw_key: tuple, cfg: DataConfig, seed: int, device: torch.device,
                 split: tuple[torch.Tensor, torch.Tensor] | None = None) -> TensorData:
    """The normalised tensors on `device`, cached; `split`: `_split(raw, cfg, seed)` when the caller has it."""
    key = (raw_key, cfg.train_fraction, cfg.val_fraction, seed, str(device))
    cached = _lru_get(_data_cache, key)
    if cached is None:
        cached = _build(name, raw, cfg, seed=seed, device=device, split=split)
        _lru_put(_data_cache, key, cached, _DATA_CACHE_SIZE)
    return cached


def _build(name: str, raw: RawArrays, cfg: DataConfig, *, seed: int, device: torch.device,
           split: tuple[torch.Tensor, torch.Tensor] | None = None) -> TensorData:
    train_idx_t, val_idx_t = split if split is not None else _split(raw, cfg, seed)
    scale = 1.0 / raw.pixel_max if raw.pixel_max else 1.0
    mean, std = channel_stats(raw, train_idx_t)
    view = (1, -1, *([1] * (raw.x.dim() - 2)))
    mean_d, std_d = mean.to(device).view(view), std.to(device).view(view)

    def to_device(idx: torch.Tensor) -> torch.Tensor:
        # Index on the CPU and copy the (often uint8) subset: 4x less to transfer than float32.
        x = raw.x[idx].to(device, non_blocking=False).to(torch.float32)
        if scale != 1.0:
            x.mul_(scale)
        return x.sub_(mean_d).div_(std_d)

    return TensorData(
        x_train=to_device(train_idx_t),
        y_train=raw.y[train_idx_t].to(device),
        x_val=to_device(val_idx_t),
        y_val=raw.y[val_idx_t].to(device),
        shape=tuple(int(d) for d in raw.x.shape[1:]),
        classes=len(raw.classes),
        class_names=raw.classes,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        pixel_max=raw.pixel_max,
        dataset=name,
        task=raw.task,
        note=raw.note,
    )
