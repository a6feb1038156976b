"""Dataset registry and load_data: splits, normalisation, caching, and the
torchvision datasets read from files in their real on-disk formats, offline."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from trialdeck.engine import datasets
from trialdeck.engine.datasets import (
    DATASET_REGISTRY,
    TensorData,
    allocate,
    clear_cache,
    get_dataset,
    load_data,
    split_indices,
)
from trialdeck.engine.errors import DatasetUnavailable, PresetError
from trialdeck.engine.kinds import DATASETS
from trialdeck.engine.presets.schema import DataConfig


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test runs offline: a download attempt fails at once, and is recorded."""
    attempts: list[str] = []

    def refuse(url, *args, **kwargs):
        attempts.append(getattr(url, "full_url", str(url)))
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    clear_cache()
    yield attempts
    clear_cache()


def raw_pixels(data: TensorData, x: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: back to raw pixel values, rounded to integers."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    scaled = (x.cpu() * std + mean) * (data.pixel_max or 1.0)
    return scaled.round().to(torch.int64).numpy()


def all_samples(data: TensorData) -> tuple[np.ndarray, np.ndarray]:
    """Raw pixels and labels of train and val together, ordered by the id in pixel 0."""
    x = np.concatenate([raw_pixels(data, data.x_train), raw_pixels(data, data.x_val)])
    y = np.concatenate([data.y_train.cpu().numpy(), data.y_val.cpu().numpy()])
    order = np.argsort(x[:, 0, 0, 0], kind="stable")
    return x[order], y[order]


# --- registry ------------------------------------------------------------------------------


def test_registry_covers_every_dataset_a_preset_can_name():
    assert set(DATASET_REGISTRY) == set(DATASETS)
    for name in DATASETS:
        assert get_dataset(name).name == name


def test_unknown_dataset_is_a_preset_error_listing_the_choices():
    with pytest.raises(PresetError, match="allowed: digits"):
        get_dataset("imagenet")


# --- digits --------------------------------------------------------------------------------


def test_digits_loads_offline_normalised(no_network):
    data = load_data(DataConfig(dataset="digits", val_fraction=0.2), seed=0)
    assert data.shape == (1, 8, 8)
    assert data.classes == 10 and len(data.class_names) == 10
    assert data.pixel_max == 16
    assert len(data.y_val) == round(0.2 * 1797) == 359
    assert len(data.y_train) == 1797 - 359
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert abs(data.x_train.mean().item()) < 1e-4
    assert data.x_train.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)
    # Training statistics are in 0..1 units (raw / 16).
    assert 0.0 < data.mean[0] < 1.0
    assert set(data.y_train.tolist()) == set(range(10))
    assert no_network == []


def test_digits_val_split_is_stratified():
    from sklearn.datasets import load_digits

    y_all = np.bincount(load_digits().target, minlength=10)
    data = load_data(DataConfig(dataset="digits", val_fraction=0.3), seed=5)
    val_counts = np.bincount(data.y_val.numpy(), minlength=10)
    assert np.all(np.abs(val_counts - 0.3 * y_all) <= 1), (val_counts, 0.3 * y_all)
    assert val_counts.sum() == round(0.3 * 1797)


def test_split_is_deterministic_per_seed():
    cfg = DataConfig(dataset="digits")
    a = load_data(cfg, seed=1)
    clear_cache()  # a fresh load, not the cached object, must give the same split
    b = load_data(cfg, seed=1)
    assert a is not b
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_val, b.y_val)
    assert torch.equal(a.x_train, b.x_train)
    c = load_data(cfg, seed=2)
    assert not torch.equal(a.x_val, c.x_val)


def test_train_fraction_takes_exactly_the_rounded_count_stratified():
    full = load_data(DataConfig(dataset="digits", train_fraction=1.0), seed=0)
    part = load_data(DataConfig(dataset="digits", train_fraction=0.25), seed=0)
    n_rest = len(full.y_train)
    assert len(part.y_train) == round(0.25 * n_rest)
    assert set(part.y_train.tolist()) == set(range(10))
    counts = np.bincount(part.y_train.numpy(), minlength=10)
    rest_counts = np.bincount(full.y_train.numpy(), minlength=10)
    assert np.all(np.abs(counts - rest_counts * len(part.y_train) / n_rest) <= 1)
    # The validation set does not depend on train_fraction, so a sweep compares like with like.
    np.testing.assert_array_equal(raw_pixels(part, part.x_val), raw_pixels(full, full.x_val))
    assert torch.equal(part.y_val, full.y_val)


def test_tiny_train_fraction_still_gives_one_sample():
    data = load_data(DataConfig(dataset="digits", train_fraction=1e-4), seed=0)
    assert len(data.y_train) == 1


def test_train_and_val_never_overlap():
    from sklearn.datasets import load_digits

    y = load_digits().target
    for seed in range(3):
        for fraction in (1.0, 0.5, 0.1):
            train_idx, val_idx = split_indices(y, val_fraction=0.2, train_fraction=fraction, seed=seed)
            assert len(np.intersect1d(train_idx, val_idx)) == 0
            assert len(train_idx) == round(fraction * (len(y) - len(val_idx)))
    # Through load_data too: synthetic samples are continuous noise, so equal rows mean the same sample.
    data = load_data(DataConfig(dataset="synthetic", synthetic_shape=[6], synthetic_size=200), seed=0)
    train_rows = {tuple(r) for r in data.x_train.flatten(1).tolist()}
    val_rows = {tuple(r) for r in data.x_val.flatten(1).tolist()}
    assert len(train_rows) == 160 and len(val_rows) == 40
    assert not train_rows & val_rows


def test_allocation_is_exact_proportional_and_covers_every_class():
    counts = np.array([50, 30, 15, 4, 1])
    for n in range(5, 101):
        alloc = allocate(counts, n)
        assert alloc.sum() == n
        assert np.all(alloc >= 1) and np.all(alloc <= counts)
    alloc = allocate(counts, 40)
    assert np.all(np.abs(alloc - counts * 40 / 100) <= 1)


def test_normalize_value_maps_a_raw_pixel_like_the_data():
    data = load_data(DataConfig(dataset="digits"), seed=0)
    zero = data.normalize_value(0.0)
    assert zero.shape == (1, 1, 1)
    # Digits backgrounds are raw 0: the smallest normalised value is exactly that.
    assert data.x_train.min().item() == pytest.approx(zero.item(), abs=1e-5)
    assert data.normalize_value(16.0).item() == pytest.approx((1.0 - data.mean[0]) / data.std[0], rel=1e-6)


def test_warm_process_loads_raw_arrays_once_and_reuses_device_tensors(monkeypatch):
    calls = []
    original = datasets.DigitsDataset.load_arrays

    def counting(self, cfg, data_dir):
        calls.append(cfg.dataset)
        return original(self, cfg, data_dir)

    monkeypatch.setattr(datasets.DigitsDataset, "load_arrays", counting)
    cfg = DataConfig(dataset="digits")
    first = load_data(cfg, seed=0)
    assert load_data(cfg.model_copy(update={"batch_size": 8}), seed=0) is first  # batch size is irrelevant
    load_data(cfg, seed=1)
    load_data(cfg.model_copy(update={"train_fraction": 0.5}), seed=0)
    assert calls == ["digits"]


# --- synthetic -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [([3, 4, 5], (3, 4, 5)), ([7], (7, 1, 1)), ([4, 6], (1, 4, 6)), ([2, 3, 4, 5], (6, 4, 5))],
)
def test_synthetic_honours_shape_classes_and_size(shape, expected):
    cfg = DataConfig(dataset="synthetic", synthetic_shape=shape, synthetic_classes=3, synthetic_size=90)
    data = load_data(cfg, seed=0)
    assert data.shape == expected
    assert data.x_train.shape[1:] == expected
    assert data.classes == 3 and data.pixel_max is None
    assert len(data.y_train) + len(data.y_val) == 90
    assert set(data.y_train.tolist()) == {0, 1, 2}


def test_synthetic_data_is_the_same_across_calls_and_seeds():
    cfg = DataConfig(dataset="synthetic", synthetic_shape=[1, 4, 4], synthetic_classes=4, synthetic_size=64)

    def every_sample(seed: int) -> list:
        clear_cache()
        d = load_data(cfg, seed=seed)
        # Undo normalisation so differently-split copies compare on raw values.
        x = torch.cat([d.x_train, d.x_val]) * torch.tensor(d.std).view(1, -1, 1, 1)
        x = x + torch.tensor(d.mean).view(1, -1, 1, 1)
        y = torch.cat([d.y_train, d.y_val])
        return sorted(zip(np.round(x.flatten(1).numpy(), 4).tolist(), y.tolist()))

    assert every_sample(0) == every_sample(0)
    assert every_sample(0) == every_sample(7)


def test_synthetic_is_learnable():
    cfg = DataConfig(dataset="synthetic", synthetic_shape=[1, 8, 8], synthetic_classes=3, synthetic_size=300)
    data = load_data(cfg, seed=0)
    centroids = torch.stack([data.x_train[data.y_train == k].mean(0) for k in range(3)]).flatten(1)
    pred = torch.cdist(data.x_val.flatten(1), centroids).argmin(1)
    assert (pred == data.y_val).float().mean().item() > 0.8


# --- torchvision datasets from files on disk -------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format MNIST ships in: big-endian magic (2051 images, 2049 labels), sizes, bytes."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in array.shape) + array.tobytes()


def fake_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    x.reshape(n, -1)[:, 0] = np.arange(n) * 5  # first pixel = a unique id, to match samples back
    return x


def write_mnist(raw: Path, n: int, *, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    raw.mkdir(parents=True)
    x = fake_images(n, (28, 28), seed=n)
    y = (np.arange(n) % 10).astype(np.uint8)
    for prefix in ("train", "t10k"):  # torchvision checks all four files exist
        for kind, arr in (("images-idx3-ubyte", x), ("labels-idx1-ubyte", y)):
            name = f"{prefix}-{kind}"
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arr)))
            else:
                (raw / name).write_bytes(idx_bytes(arr))
    return x, y


@pytest.mark.parametrize(("name", "folder", "gz"), [("mnist", "MNIST", True), ("fashion_mnist", "FashionMNIST", False)])
def test_mnist_family_reads_idx_files_through_torchvision(tmp_path, no_network, name, folder, gz):
    x, y = write_mnist(tmp_path / folder / "raw", 40, gz=gz)
    data = load_data(DataConfig(dataset=name, val_fraction=0.25), seed=0, data_dir=tmp_path)
    assert no_network == []  # local files were enough
    assert data.shape == (1, 28, 28) and data.pixel_max == 255 and data.classes == 10
    assert len(data.y_train) == 30 and len(data.y_val) == 10
    got_x, got_y = all_samples(data)
    np.testing.assert_array_equal(got_x[:, 0], x)
    np.testing.assert_array_equal(got_y, y)


def write_cifar(root: Path, per_batch: int) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    n = per_batch * 5
    x = fake_images(n, (3, 32, 32), seed=3)  # CIFAR rows are R plane, G plane, B plane
    y = np.arange(n) % 10
    for b in range(5):
        rows = slice(b * per_batch, (b + 1) * per_batch)
        batch = {"data": x[rows].reshape(per_batch, 3072), "labels": y[rows].tolist()}
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {"data": x[:per_batch].reshape(per_batch, 3072), "labels": y[:per_batch].tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return x, y


def trust_cifar_files(monkeypatch, folder: Path) -> None:
    """torchvision checks every batch (in _check_integrity) and batches.meta (in _load_meta)
    against the md5 of the real 170 MB files; point those checksums at our tiny files so the
    real integrity check still runs and passes."""
    import torchvision.datasets

    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f, md5[f]] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5[f]] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})


def test_cifar10_reads_python_batches_through_torchvision(tmp_path, no_network, monkeypatch):
    x, y = write_cifar(tmp_path, per_batch=4)
    trust_cifar_files(monkeypatch, tmp_path / "cifar-10-batches-py")

    data = load_data(DataConfig(dataset="cifar10", val_fraction=0.5), seed=0, data_dir=tmp_path)
    assert no_network == []
    assert data.shape == (3, 32, 32) and data.x_train.shape[1:] == (3, 32, 32)
    assert data.classes == 10 and data.class_names[0] == "airplane"
    assert len(data.y_train) == 10 and len(data.y_val) == 10
    assert len(data.mean) == 3 and len(data.std) == 3
    assert data.normalize_value(0).shape == (3, 1, 1)
    got_x, got_y = all_samples(data)
    np.testing.assert_array_equal(got_x, x)  # channel order and layout exactly as stored
    np.testing.assert_array_equal(got_y, y)


@pytest.mark.parametrize(
    ("name", "folder"),
    [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"), ("cifar10", "")],
)
def test_missing_files_without_network_say_where_to_put_them(tmp_path, no_network, name, folder):
    data_dir = tmp_path / "data"
    start = time.monotonic()
    with pytest.raises(DatasetUnavailable) as info:
        load_data(DataConfig(dataset=name), seed=0, data_dir=data_dir)
    assert time.monotonic() - start < 5
    assert no_network, "a download should have been attempted"
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{name}:") and "no network?" in message
    assert f"in {(data_dir / folder) if folder else data_dir}" in message
    expected_file = "cifar-10-python.tar.gz" if name == "cifar10" else "train-images-idx3-ubyte.gz"
    assert expected_file in message


def test_default_data_dir_is_in_the_workspace(monkeypatch, tmp_path):
    monkeypatch.setenv("TRIALDECK_HOME", str(tmp_path))
    assert datasets.default_data_dir() == tmp_path / "data"
    with pytest.raises(DatasetUnavailable, match=str(tmp_path / "data" / "MNIST" / "raw")):
        load_data(DataConfig(dataset="mnist"), seed=0)


# --- CIFAR-100 and SVHN from files in their on-disk formats ---------------------------------


def write_cifar100(root: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """cifar-100-python/: pickled `train` and `test` dicts (fine and coarse labels) and `meta`."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    x = fake_images(n, (3, 32, 32), seed=100)
    y = (np.arange(n) * 7) % 100
    for name in ("train", "test"):
        entry = {"data": x.reshape(n, 3072), "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"coarse{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return x, y


def trust_cifar100_files(monkeypatch, folder: Path) -> None:
    """As trust_cifar_files, for CIFAR100's train, test and meta files."""
    import torchvision.datasets

    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    cls = torchvision.datasets.CIFAR100
    monkeypatch.setattr(cls, "train_list", [[f, md5[f]] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5[f]] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["meta"]})


def write_svhn(root: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """train_32x32.mat as the Stanford site ships it: X is (32, 32, 3, N), y is (N, 1) with
    labels 1..10, where 10 is the digit 0. Returns the (N, 3, 32, 32) pixels and 0..9 labels."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    x = fake_images(n, (3, 32, 32), seed=200)
    digits = np.arange(n) % 10
    savemat(root / "train_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": np.where(digits == 0, 10, digits)[:, None]})
    return x, digits


def trust_svhn_file(monkeypatch, root: Path) -> None:
    import torchvision.datasets

    cls = torchvision.datasets.SVHN
    url, name, _ = cls.split_list["train"]
    md5 = hashlib.md5((root / name).read_bytes()).hexdigest()
    monkeypatch.setattr(cls, "split_list", {**cls.split_list, "train": [url, name, md5]})


def test_cifar100_reads_python_batches_through_torchvision(tmp_path, no_network, monkeypatch):
    x, y = write_cifar100(tmp_path, 40)
    trust_cifar100_files(monkeypatch, tmp_path / "cifar-100-python")
    data = load_data(DataConfig(dataset="cifar100", val_fraction=0.25), seed=0, data_dir=tmp_path)
    assert no_network == []
    assert data.shape == (3, 32, 32) and data.classes == 100 and data.class_names[7] == "fine7"
    assert len(data.y_train) == 30 and len(data.y_val) == 10
    got_x, got_y = all_samples(data)
    np.testing.assert_array_equal(got_x, x)  # the fine labels, channel planes as stored
    np.testing.assert_array_equal(got_y, y)


def test_svhn_reads_the_mat_file_through_torchvision(tmp_path, no_network, monkeypatch):
    x, y = write_svhn(tmp_path, 30)
    trust_svhn_file(monkeypatch, tmp_path)
    data = load_data(DataConfig(dataset="svhn", val_fraction=0.2), seed=0, data_dir=tmp_path)
    assert no_network == []
    assert data.shape == (3, 32, 32) and data.classes == 10 and data.pixel_max == 255
    got_x, got_y = all_samples(data)
    np.testing.assert_array_equal(got_x, x)  # (H, W, C, N) on disk -> (N, C, H, W)
    np.testing.assert_array_equal(got_y, y)  # label 10 is the digit 0


@pytest.mark.parametrize(("name", "expected_file"), [("cifar100", "cifar-100-python.tar.gz"), ("svhn", "train_32x32.mat")])
def test_cifar100_and_svhn_missing_offline_say_which_file_goes_where(tmp_path, no_network, name, expected_file):
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetUnavailable) as info:
        load_data(DataConfig(dataset=name), seed=0, data_dir=data_dir)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name}:") and "no network?" in message
    assert expected_file in message and str(data_dir) in message
    assert no_network, "a download should have been attempted"


def test_data_facts_are_what_load_data_builds_without_building_it():
    from trialdeck.engine.datasets import data_facts, load_data
    from trialdeck.engine.presets.schema import DataConfig

    cfg = DataConfig(dataset="digits", val_fraction=0.25, train_fraction=0.5)
    data = load_data(cfg, seed=3, device="cpu")
    assert data_facts(cfg, seed=3) == {
        "shape": data.shape, "classes": data.classes, "class_names": data.class_names, "mean": data.mean,
        "std": data.std, "pixel_max": data.pixel_max, "task": data.task}
