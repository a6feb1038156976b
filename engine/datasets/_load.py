"""`load_data`: from a `[data]` block to device tensors, cached per process.

Two caches make a warm worker fast: raw arrays per dataset (so MNIST is read
from disk once per process) and the final `TensorData` per (data settings,
seed, device) in a small LRU (so repeated trials reuse the device tensors).
Cached tensors are shared: callers must not modify them in place.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trialdeck.engine.datasets._base import BaseDataset, RawArrays, TensorData
from trialdeck.engine.datasets._digits import DigitsDataset
from trialdeck.engine.datasets._split import split_indices
from trialdeck.engine.datasets._synthetic import SyntheticDataset
from trialdeck.engine.datasets._torchvision import Cifar10Dataset, FashionMnistDataset, MnistDataset
from trialdeck.engine.errors import PresetError

if TYPE_CHECKING:
    from trialdeck.engine.presets.schema import DataConfig

DATASET_REGISTRY: dict[str, type[BaseDataset]] = {
    cls.name: cls
    for cls in (DigitsDataset, MnistDataset, FashionMnistDataset, Cifar10Dataset, SyntheticDataset)
}
"""`[data] dataset` string -> implementation."""

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
    """Train/validation tensors for `cfg`, normalised and on `device`.

    Validation: a stratified `val_fraction` of the dataset's training split,
    chosen by `seed` only. Training: a stratified `round(train_fraction * rest)`
    (at least 1) of the rest, also by `seed`. Both are normalised per channel
    with the mean and std of the training subset.
    Raises `DatasetUnavailable` (files missing and no network) or `PresetError`.
    """
    dataset = get_dataset(cfg.dataset)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    dev = torch.device(device)
    raw_key = dataset.cache_key(cfg, data_dir)
    key = (raw_key, cfg.train_fraction, cfg.val_fraction, int(seed), str(dev))
    # One lock for load and build: two threads asking for the same data must
    # not both read it from disk or both fill device memory with a copy.
    with _lock:
        cached = _lru_get(_data_cache, key)
        if cached is not None:
            return cached
        raw = _lru_get(_raw_cache, raw_key)
        if raw is None:
            raw = dataset.load_arrays(cfg, data_dir)
            _lru_put(_raw_cache, raw_key, raw, _RAW_CACHE_SIZE)
        data = _build(dataset.name, raw, cfg, seed=int(seed), device=dev)
        _lru_put(_data_cache, key, data, _DATA_CACHE_SIZE)
        return data


def _build(name: str, raw: RawArrays, cfg: DataConfig, *, seed: int, device: torch.device) -> TensorData:
    train_idx, val_idx = split_indices(
        raw.y.numpy(), val_fraction=cfg.val_fraction, train_fraction=cfg.train_fraction, seed=seed
    )
    train_idx_t, val_idx_t = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    scale = 1.0 / raw.pixel_max if raw.pixel_max else 1.0

    def to_device(idx: torch.Tensor) -> torch.Tensor:
        # Index on the CPU and copy the (often uint8) subset: 4x less to transfer than float32.
        x = raw.x[idx].to(device, non_blocking=False).to(torch.float32)
        return x.mul_(scale) if scale != 1.0 else x

    x_train = to_device(train_idx_t)
    x_val = to_device(val_idx_t)
    std, mean = torch.std_mean(x_train, dim=(0, 2, 3), correction=0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant channel stays constant
    view = (1, -1, 1, 1)
    x_train.sub_(mean.view(view)).div_(std.view(view))
    x_val.sub_(mean.view(view)).div_(std.view(view))
    c, h, w = raw.x.shape[1:]
    return TensorData(
        x_train=x_train,
        y_train=raw.y[train_idx_t].to(device),
        x_val=x_val,
        y_val=raw.y[val_idx_t].to(device),
        shape=(int(c), int(h), int(w)),
        classes=len(raw.classes),
        class_names=raw.classes,
        mean=tuple(float(v) for v in mean.cpu()),
        std=tuple(float(v) for v in std.cpu()),
        pixel_max=raw.pixel_max,
        dataset=name,
    )
