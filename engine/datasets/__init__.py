"""Datasets: the registry of `[data] dataset` names and `load_data`.

`load_data(cfg, seed=..., device=...)` is the one entry point the trainer
uses; each dataset module only produces raw training-split tensors (see
`_base.BaseDataset`). Importing this package imports torch, not torchvision
or scikit-learn: those load only when a dataset that needs them is used.
"""

from __future__ import annotations

from trialdeck.engine.datasets._base import BaseDataset, RawArrays, TensorData
from trialdeck.engine.datasets._digits import DigitsDataset
from trialdeck.engine.datasets._load import DATASET_REGISTRY, clear_cache, default_data_dir, get_dataset, load_data
from trialdeck.engine.datasets._split import allocate, split_indices, stratified_pick
from trialdeck.engine.datasets._synthetic import SyntheticDataset, sample_shape
from trialdeck.engine.datasets._torchvision import Cifar10Dataset, FashionMnistDataset, MnistDataset

__all__ = [
    "DATASET_REGISTRY",
    "BaseDataset",
    "Cifar10Dataset",
    "DigitsDataset",
    "FashionMnistDataset",
    "MnistDataset",
    "RawArrays",
    "SyntheticDataset",
    "TensorData",
    "allocate",
    "clear_cache",
    "default_data_dir",
    "get_dataset",
    "load_data",
    "sample_shape",
    "split_indices",
    "stratified_pick",
]
