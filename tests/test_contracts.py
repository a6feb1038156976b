"""Contract suites: one test class per pluggable concept, run for every implementation in its
registry (like optuna's StorageTestCase), so a dataset or schedule added later is checked the day
it lands. A registry entry without a way to test it fails `test_every_*_has_a_case`.

- Datasets (engine.datasets.DATASET_REGISTRY): each is loaded offline from files written here in
  its real on-disk format; its raw arrays keep the `RawArrays` invariants, `load_data` gives
  consistent shapes, normalised float32 tensors and labels in range, the same seed gives the same
  split, and the cache key is stable.
- Schedules (engine.training.schedules.SCHEDULES): finite positive rates, the same rates for the
  same inputs, and a state round trip mid-run continues exactly like an uninterrupted run.
- Kinds (engine.kinds): every name a preset may pick has its implementation, and every
  implementation its name, in each registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.test_datasets import (
    trust_cifar100_files,
    trust_cifar_files,
    trust_svhn_file,
    write_cifar,
    write_cifar100,
    write_mnist,
    write_svhn,
)
from tests.test_own_data import write_image_folder
from trialdeck.engine.datasets import DATASET_REGISTRY, clear_cache, get_dataset, load_data
from trialdeck.engine.presets.schema import DataConfig, ScheduleConfig
from trialdeck.engine.training.schedules import SCHEDULES, make_schedule

# ----------------------------------------------------------------------------- datasets

DataCase = Callable[[Path, pytest.MonkeyPatch], DataConfig]
"""Write a dataset's files under the folder (offline) and return the [data] block that names it."""


def _digits(root: Path, mp: pytest.MonkeyPatch) -> DataConfig:
    return DataConfig(dataset="digits")


def _mnist(root: Path, mp: pytest.MonkeyPatch) -> DataConfig:
    write_mnist(root / "MNIST" / "raw", 60, gz=True)
    return DataConfig(dataset="mnist", val_fraction=0.25)


def _fashion(root: Path, mp: pytest.MonkeyPatch) -> DataConfig:
    write_mnist(root / "FashionMNIST" / "raw", 60, gz=False)
    return DataConfig(dataset="fashion_mnist", val_fraction=0.25)


def _cifar10(root: Path, mp: pytest.MonkeyPatch) -> DataConfig:
    write_cifar(root, per_batch=8)
    trust_cifar_files(mp, root / "cifar-10-batches-py")
    return DataConfig(dataset="cifar10", val_fraction=0.25)


def _synthetic(root: Path, mp: pytest.MonkeyPatch) -> DataConfig:
    return DataConfig(dataset="synthetic", synthetic_shape=[3, 8, 8], synthetic_classes=5, synthetic_size=200)


def _cifar100(root: Path, mp: pytest.MonkeyPatch) -> DataConfig:
    write_cifar100(root, 40)
    trust_cifar100_files(mp, root / "cifar-100-python")
    return DataConfig(dataset="cifar100", val_fraction=0.25)


def _svhn(root: Path, mp: pytest.MonkeyPatch) -> DataConfig:
    write_svhn(root, 30)
    trust_svhn_file(mp, root)
    return DataConfig(dataset="svhn", val_fraction=0.2)


def _arrays(root: Path, mp: pytest.MonkeyPatch) -> DataConfig:
    import numpy as np

    rng = np.random.default_rng(0)  # tabular rows, not images: (N, F) float features, integer labels
    np.savez(root / "own.npz", x=rng.normal(size=(60, 6)).astype(np.float32), y=np.arange(60) % 3)
    return DataConfig(dataset="arrays", path=str(root / "own.npz"), val_fraction=0.25)


def _imagefolder(root: Path, mp: pytest.MonkeyPatch) -> DataConfig:
    write_image_folder(root / "images", {"train": 4, "val": 2}, size=(10, 12))
    return DataConfig(dataset="imagefolder", path=str(root / "images"), image_size=[8, 6], channels=3)


DATA_CASES: dict[str, DataCase] = {
    "digits": _digits, "mnist": _mnist, "fashion_mnist": _fashion, "cifar10": _cifar10, "synthetic": _synthetic,
    "cifar100": _cifar100, "svhn": _svhn, "arrays": _arrays, "imagefolder": _imagefolder,
}


def test_every_registered_dataset_has_a_case():
    assert set(DATASET_REGISTRY) <= set(DATA_CASES), (
        f"add a case to DATA_CASES for {sorted(set(DATASET_REGISTRY) - set(DATA_CASES))}")


@pytest.mark.parametrize("name", sorted(DATASET_REGISTRY))
class TestDatasetContract:
    @pytest.fixture
    def cfg(self, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[DataConfig, Path]:
        import urllib.request

        def offline(*args, **kwargs):
            raise AssertionError("a dataset tried to download in a test")

        monkeypatch.setattr(urllib.request, "urlopen", offline)
        clear_cache()
        yield DATA_CASES[name](tmp_path, monkeypatch), tmp_path
        clear_cache()

    def test_raw_arrays_keep_the_invariants(self, name, cfg):
        data_cfg, root = cfg
        raw = get_dataset(name).load_arrays(data_cfg, root)
        assert raw.x.ndim >= 2 and raw.x.device.type == "cpu", raw.x.shape
        assert raw.x.ndim == 4 or name == "arrays", "images are (N, C, H, W); only arrays may hold other shapes"
        assert raw.y.dtype == torch.int64 and raw.y.shape == (raw.x.shape[0],)
        assert 0 <= int(raw.y.min()) and int(raw.y.max()) < len(raw.classes)
        if raw.val_start is not None:
            assert 0 < raw.val_start < raw.x.shape[0]
        if raw.pixel_max is not None:
            assert 0 <= float(raw.x.min()) and float(raw.x.max()) <= raw.pixel_max

    def test_load_data_gives_consistent_normalised_tensors(self, name, cfg):
        data_cfg, root = cfg
        data = load_data(data_cfg, seed=0, data_dir=root)
        assert data.x_train.dtype == torch.float32 and data.x_val.dtype == torch.float32
        assert tuple(data.x_train.shape[1:]) == data.shape == tuple(data.x_val.shape[1:])
        assert data.x_train.shape[0] == data.y_train.shape[0] > 0 and data.x_val.shape[0] == data.y_val.shape[0] > 0
        assert len(data.mean) == len(data.std) == data.shape[0]
        for y in (data.y_train, data.y_val):
            assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < data.classes
        assert torch.isfinite(data.x_train).all() and torch.isfinite(data.x_val).all()

    def test_the_same_seed_gives_the_same_split(self, name, cfg):
        data_cfg, root = cfg
        first = load_data(data_cfg, seed=3, data_dir=root)
        clear_cache()
        again = load_data(data_cfg, seed=3, data_dir=root)
        assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_val, again.y_val)

    def test_the_cache_key_is_stable(self, name, cfg):
        data_cfg, root = cfg
        dataset = get_dataset(name)
        assert dataset.cache_key(data_cfg, root) == get_dataset(name).cache_key(data_cfg, root)


# ----------------------------------------------------------------------------- schedules

SCHEDULE_CASES: dict[str, ScheduleConfig] = {
    "constant": ScheduleConfig(kind="constant"),
    "step": ScheduleConfig(kind="step", drop=0.5, epochs_drop=3),
    "exponential": ScheduleConfig(kind="exponential"),
    "cosine": ScheduleConfig(kind="cosine"),
    "plateau": ScheduleConfig(kind="plateau"),
}
EPOCHS = 12
LOSSES = [1.0, 0.8, 0.7, 0.7, 0.7, 0.7, 0.69, 0.69, 0.69, 0.69, 0.69, 0.69]
"""A plateau after epoch 3, so a plateau schedule changes its rate within the run."""


def _rates(schedule, start: int = 0, stop: int = EPOCHS) -> list[float]:
    rates = []
    for epoch in range(start, stop):
        metrics = {"val_loss": LOSSES[epoch - 1], "train_loss": LOSSES[epoch - 1]} if epoch else None
        rates.append(schedule.lr_at(epoch, metrics))
    return rates


def test_every_registered_schedule_has_a_case():
    assert set(SCHEDULES) <= set(SCHEDULE_CASES), (
        f"add a case to SCHEDULE_CASES for {sorted(set(SCHEDULES) - set(SCHEDULE_CASES))}")


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
class TestScheduleContract:
    def test_rates_start_at_lr0_and_stay_finite_and_non_negative(self, kind):
        rates = _rates(make_schedule(SCHEDULE_CASES[kind], 0.1, EPOCHS))
        assert all(math.isfinite(r) and r >= 0 for r in rates), rates  # cosine ends at min_lr (0 by default)
        assert rates[0] == pytest.approx(0.1)

    def test_the_same_inputs_give_the_same_rates(self, kind):
        cfg = SCHEDULE_CASES[kind]
        assert _rates(make_schedule(cfg, 0.1, EPOCHS)) == _rates(make_schedule(cfg, 0.1, EPOCHS))

    def test_a_state_round_trip_mid_run_goes_on_like_an_uninterrupted_run(self, kind):
        cfg = SCHEDULE_CASES[kind]
        whole = _rates(make_schedule(cfg, 0.1, EPOCHS))
        first = make_schedule(cfg, 0.1, EPOCHS)
        head = _rates(first, 0, 7)
        state = first.state_dict()
        resumed = make_schedule(cfg, 0.1, EPOCHS)
        resumed.load_state_dict(state)
        assert head + _rates(resumed, 7, EPOCHS) == whole


# ----------------------------------------------------------------------------- kinds


def test_every_kind_named_in_the_registry_has_its_implementation_and_no_other():
    """engine.kinds names each kind once; the schema's Literal types are those names, and each
    implementation registry is keyed by exactly them."""
    import typing

    from trialdeck.engine import kinds
    from trialdeck.engine.presets.schema import PRUNER_SETTINGS, ModelConfig, OptimizerConfig, PrunerConfig, TuneConfig
    from trialdeck.engine.training.models import ACTIVATIONS
    from trialdeck.engine.training.optimizers import OPTIMIZERS
    from trialdeck.engine.tuning.samplers import PRUNERS, SAMPLERS

    implemented = {"dataset": DATASET_REGISTRY, "activation": ACTIVATIONS, "optimizer": OPTIMIZERS,
                   "schedule": SCHEDULES, "sampler": SAMPLERS, "pruner": PRUNERS}
    for kind, registry in implemented.items():
        assert sorted(registry) == sorted(kinds.REGISTRIES[kind]), kind
    assert typing.get_args(ModelConfig.model_fields["kind"].annotation) == kinds.MODEL_KINDS
    assert typing.get_args(OptimizerConfig.model_fields["name"].annotation) == kinds.OPTIMIZERS
    assert typing.get_args(TuneConfig.model_fields["sampler"].annotation) == kinds.SAMPLERS
    assert typing.get_args(PrunerConfig.model_fields["kind"].annotation) == kinds.PRUNERS
    assert sorted(PRUNER_SETTINGS) == sorted(kinds.PRUNERS)  # [tune.pruner]'s settings, for every pruner
