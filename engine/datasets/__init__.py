"""Datasets: the registry of `[data] dataset` names and `load_data`.

`load_feed(cfg, seed=..., device=...)` is the one entry point the trainer
uses (`load_data` gives the device tensors alone, whatever their size); each
dataset module only produces raw training-split tensors (see
`_base.BaseDataset`). Importing this package imports torch, not torchvision
or scikit-learn: those load only when a dataset that needs them is used.
"""

from __future__ import annotations

from trialdeck.engine.datasets._arrays import ArraysDataset
from trialdeck.engine.datasets._base import BaseDataset, RawArrays, TensorData
from trialdeck.engine.datasets._digits import DigitsDataset
from trialdeck.engine.datasets._feed import BaseFeed, DeviceFeed, StreamFeed
from trialdeck.engine.datasets._imagefolder import ImageFolderDataset
from trialdeck.engine.datasets._load import (
    AUTO_BUDGET_FRACTION,
    DATASET_REGISTRY,
    channel_stats,
    clear_cache,
    data_facts,
    default_data_dir,
    device_budget,
    get_dataset,
    load_data,
    load_feed,
)
from trialdeck.engine.datasets._split import allocate, split_indices, stratified_pick
from trialdeck.engine.datasets._synthetic import SyntheticDataset, sample_shape
from trialdeck.engine.datasets._torchvision import (
    Cifar10Dataset,
    Cifar100Dataset,
    FashionMnistDataset,
    MnistDataset,
    SvhnDataset,
)

__all__ = [
    "AUTO_BUDGET_FRACTION",
    "DATASET_REGISTRY",
    "ArraysDataset",
    "BaseDataset",
    "BaseFeed",
    "Cifar10Dataset",
    "Cifar100Dataset",
    "DeviceFeed",
    "DigitsDataset",
    "FashionMnistDataset",
    "ImageFolderDataset",
    "MnistDataset",
    "RawArrays",
    "StreamFeed",
    "SvhnDataset",
    "SyntheticDataset",
    "TensorData",
    "allocate",
    "channel_stats",
    "clear_cache",
    "data_facts",
    "default_data_dir",
    "device_budget",
    "get_dataset",
    "load_data",
    "load_feed",
    "sample_shape",
    "split_indices",
    "stratified_pick",
]
