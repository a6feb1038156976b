"""A user's own data and model, in one process (issue 15): the `arrays` and `imagefolder`
datasets and the image cache, the device and stream data paths, importing a model factory for
one run, torchvision models, the checks made at enqueue, and `trialdeck data export`.

The same through real engine processes is tests/test_own_data_engine.py.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from trialdeck.engine.datasets import clear_cache, load_data, load_feed
from trialdeck.engine.errors import DatasetUnavailable, PresetError
from trialdeck.engine.presets import resolve
from trialdeck.engine.presets.inputs import check_inputs, input_problems, torchvision_archs
from trialdeck.engine.presets.schema import DataConfig, ModelConfig, RunSpec
from trialdeck.engine.training.callbacks import TrainerCallback
from trialdeck.engine.training.models import build, penalty_terms
from trialdeck.engine.training.trainer import train
from trialdeck.engine.training.usercode import UserCodeError, build_from_factory


@pytest.fixture(autouse=True)
def offline_and_fresh(monkeypatch):
    """No test here may download anything; every test starts with cold dataset caches."""
    def refuse(url, *args, **kwargs):
        raise AssertionError(f"a test tried to download {getattr(url, 'full_url', url)}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    clear_cache()
    yield
    clear_cache()


# ------------------------------------------------------------------------------ helpers


def write_image_folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (32, 32), classes: int = 3,
                       seed: int = 0) -> list[Path]:
    """PNG images in torchvision's layout: root/<split>/class<k>/<i>.png for each split in `counts`
    (a split named "" writes root/class<k>/ directly). Class k is brighter with k, so it is learnable."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = []
    for split, per_class in counts.items():
        for k in range(classes):
            folder = root / split / f"class{k}" if split else root / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = (rng.random((*size, 3)) * 60 + k * 90).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
                written.append(folder / f"{i:03d}.png")
    return written


def learnable_arrays(path: Path, n: int = 800, features: int = 10, regression: bool = False, seed: int = 0) -> None:
    """A synthetic task a small network learns well: labels from a random linear rule, or its
    value as a float target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    w = rng.normal(size=features)
    score = x @ w
    y = score.astype(np.float32) if regression else (score > 0).astype(np.int64)
    np.savez(path, x=x, y=y)


MODEL_SOURCE = '''
import math

from torch import nn

import engine  # this project's own engine.py, beside it: it must not be trialdeck's

def build(input_shape, num_classes, width=32):
    assert engine.WHO == "the user's engine"
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                         nn.Linear(width, num_classes))
'''


def write_project(root: Path, source: str = MODEL_SOURCE) -> Path:
    """A research repository's layout: its own engine.py, and a model package beside it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "engine.py").write_text('WHO = "the user\'s engine"\n')
    (root / "mymodels").mkdir(exist_ok=True)
    (root / "mymodels" / "__init__.py").write_text("")
    (root / "mymodels" / "net.py").write_text(source)
    return root


def spec_of(tmp_path: Path, body: str, *sets: str) -> RunSpec:
    """A preset file written in `tmp_path` and resolved there (its workdir)."""
    preset = tmp_path / "own.toml"
    preset.write_text(body)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return resolve(str(preset), list(sets))
    finally:
        os.chdir(cwd)


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.info: dict = {}
        self.lines: list[str] = []

    def on_start(self, info: dict) -> None:
        self.info = info

    def log(self, line: str) -> None:
        self.lines.append(line)


# ------------------------------------------------------------------------------ arrays


def test_arrays_classification_with_its_own_validation_set(tmp_path):
    rng = np.random.default_rng(1)
    x, x_val = rng.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8), rng.integers(0, 256, (10, 1, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 4, x_val=x_val, y_val=np.arange(10) % 4)
    data = load_data(DataConfig(dataset="arrays", path=str(tmp_path / "d.npz"), train_fraction=0.5), seed=0)
    assert data.task == "classification" and data.classes == 4 and data.pixel_max == 255
    assert data.shape == (1, 4, 4) and len(data.y_val) == 10 and len(data.y_train) == 20
    # The validation set is x_val as given, in order, normalised with the training statistics.
    raw_val = data.x_val * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)
    np.testing.assert_allclose(raw_val.numpy() * 255, x_val, atol=1e-3)
    assert data.y_val.tolist() == (np.arange(10) % 4).tolist()


def test_arrays_float_targets_are_a_regression_with_per_feature_normalisation(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(loc=[5.0, -3.0, 0.0], scale=[2.0, 0.5, 1.0], size=(100, 3))
    np.savez(tmp_path / "r.npz", x=x, y=rng.normal(size=(100, 2)))
    data = load_data(DataConfig(dataset="arrays", path=str(tmp_path / "r.npz")), seed=0)
    assert data.task == "regression" and data.classes == 2 and data.shape == (3,)
    assert data.y_train.dtype == torch.float32 and data.y_train.shape == (80, 2)
    assert torch.allclose(data.x_train.mean(0), torch.zeros(3), atol=1e-5)  # each feature standardised
    assert torch.allclose(data.x_train.std(0, correction=0), torch.ones(3), atol=1e-4)


def test_arrays_are_read_without_pickles(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(DatasetUnavailable, match="without pickles"):
        load_data(DataConfig(dataset="arrays", path=str(tmp_path / "o.npz")), seed=0)


def test_an_edited_npz_is_read_again_by_a_warm_process(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((10, 2), np.float32), y=np.arange(10) % 2)
    assert load_data(DataConfig(dataset="arrays", path=str(path)), seed=0).classes == 2
    np.savez(path, x=np.zeros((10, 2), np.float32), y=np.arange(10) % 5)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))
    assert load_data(DataConfig(dataset="arrays", path=str(path)), seed=0).classes == 5


# ------------------------------------------------------------------------------ imagefolder


def test_image_extensions_are_torchvisions():
    import torchvision.datasets.folder

    from trialdeck.engine.datasets._imagefolder import IMG_EXTENSIONS

    assert IMG_EXTENSIONS == torchvision.datasets.folder.IMG_EXTENSIONS


def test_imagefolder_plain_layout_classes_sorted_and_resized(tmp_path):
    write_image_folder(tmp_path / "imgs", {"": 5}, size=(20, 30), classes=3)
    cfg = DataConfig(dataset="imagefolder", path=str(tmp_path / "imgs"), image_size=[10, 16], channels=1,
                     val_fraction=0.2)
    data = load_data(cfg, seed=0, data_dir=tmp_path / "cache")
    assert data.shape == (1, 10, 16) and data.class_names == ("class0", "class1", "class2")
    assert len(data.y_train) + len(data.y_val) == 15 and len(data.y_val) == 3


def test_imagefolder_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    import PIL.Image

    files = write_image_folder(tmp_path / "imgs", {"train": 4, "val": 2})
    cfg = DataConfig(dataset="imagefolder", path=str(tmp_path / "imgs"), image_size=16, channels=3)
    opened: list[str] = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(fp, *a, **k))

    first = load_feed(cfg, seed=0, data_dir=tmp_path / "ws-data")
    assert len(opened) == len(files) and "decoded" in first.note
    assert first.n_val == 6  # val/ is the validation set
    clear_cache()  # a new process: nothing in memory
    opened.clear()
    again = load_feed(cfg, seed=0, data_dir=tmp_path / "ws-data")
    assert opened == [] and "read from the cache" in again.note and "none decoded" in again.note
    assert torch.equal(first.data.x_train, again.data.x_train)

    # Editing one image (its mtime moves) makes a new cache: the folder is decoded again.
    os.utime(files[0], ns=(files[0].stat().st_atime_ns, files[0].stat().st_mtime_ns + 10**9))
    clear_cache()
    load_feed(cfg, seed=0, data_dir=tmp_path / "ws-data")
    assert len(opened) == len(files)


def test_a_corrupt_image_names_the_file(tmp_path):
    files = write_image_folder(tmp_path / "imgs", {"": 3})
    files[4].write_bytes(b"not a png at all")
    with pytest.raises(DatasetUnavailable) as info:
        load_data(DataConfig(dataset="imagefolder", path=str(tmp_path / "imgs")), seed=0, data_dir=tmp_path / "c")
    assert str(files[4]) in str(info.value) and "fix or remove it" in str(info.value)


# ------------------------------------------------------------------------------ data paths


def test_a_dataset_past_the_budget_streams_with_the_device_paths_batches(tmp_path):
    cfg = DataConfig(dataset="digits")
    device = load_feed(cfg, seed=3)
    stream = load_feed(cfg.model_copy(update={"device_budget_mb": 0.1, "workers": 2}), seed=3)
    try:
        assert (device.path, stream.path) == ("device", "stream") and "over the device budget" in stream.note
        assert (stream.n_train, stream.n_val, stream.shape) == (device.n_train, device.n_val, device.shape)
        perm = torch.randperm(device.n_train, generator=torch.Generator().manual_seed(0))
        pairs = list(zip(device.batches(perm, 2, 6, 50), stream.batches(perm, 2, 6, 50), strict=True))
        assert len(pairs) == 4
        for (xd, yd), (xs, ys) in pairs:
            assert torch.equal(xd, xs) and torch.equal(yd, ys)  # same samples, same float32 values
        for (xd, yd), (xs, ys) in zip(device.val_batches(100), stream.val_batches(100), strict=True):
            assert torch.equal(xd, xs) and torch.equal(yd, ys)
    finally:
        stream.close()


def test_streaming_trains_to_the_same_metrics_as_the_device_path():
    spec = resolve("seed/augmentation", ["train.epochs=2", "train.device='cpu'", "model.hidden=[32]"])
    on_device = train(spec)
    streamed_cb = Recorder()
    streamed = train(resolve("seed/augmentation", ["train.epochs=2", "train.device='cpu'", "model.hidden=[32]",
                                                  "data.device_budget_mb=0.05", "data.workers=2"]), streamed_cb)
    assert streamed_cb.info["data_path"] == "stream"
    assert on_device.state.ok and streamed.state.ok
    for a, b in zip(on_device.history, streamed.history, strict=True):  # augmentation batched on the device too
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5) and a.val_acc == pytest.approx(b.val_acc, abs=1e-9)


def test_the_default_budget_is_a_quarter_of_the_devices_memory():
    from trialdeck.engine.datasets import AUTO_BUDGET_FRACTION, device_budget

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert device_budget(DataConfig(), torch.device("cpu")) == int(ram * AUTO_BUDGET_FRACTION) == int(ram / 4)
    assert device_budget(DataConfig(device_budget_mb=3), torch.device("cpu")) == 3 * 2**20


# ------------------------------------------------------------------------------ user code


def test_a_factory_is_imported_fresh_for_each_run_and_leaves_nothing_behind(tmp_path):
    project = write_project(tmp_path / "proj")
    cfg = ModelConfig(kind="python", factory="mymodels.net:build", args={"width": 7}, path=str(project))
    before = set(sys.modules)
    model, first_hash = build_from_factory(cfg, (3, 4), 5)
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)] == [7, 5]
    assert not [n for n in set(sys.modules) - before if n.split(".")[0] in ("mymodels", "engine")]
    import trialdeck.engine

    assert sys.modules["trialdeck.engine"] is trialdeck.engine and "engine" not in sys.modules

    # An edit that keeps the file's size and mtime (a stale .pyc would be used) still takes effect.
    net = project / "mymodels" / "net.py"
    stat = net.stat()
    net.write_text(MODEL_SOURCE.replace("width=32", "width=64").replace("nn.ReLU()", "nn.GELU()"))
    os.utime(net, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert net.stat().st_size == stat.st_size
    model, second_hash = build_from_factory(cfg, (3, 4), 5)
    assert isinstance(model[2], torch.nn.GELU) and second_hash != first_hash
    assert len(first_hash) == 16
    assert not list(project.rglob("__pycache__"))  # nothing compiled is written into the user's folder


def test_errors_in_the_users_code_name_their_file_and_line(tmp_path):
    project = write_project(tmp_path / "proj", "def build(input_shape, num_classes):\n    x = 1\n"
                                               "    raise ValueError('bad width')\n")
    cfg = ModelConfig(kind="python", factory="mymodels.net:build", path=str(project))
    with pytest.raises(UserCodeError) as info:
        build_from_factory(cfg, (4,), 2)
    assert str(info.value) == (f"model.factory mymodels.net:build raised ValueError: bad width at "
                               f"{project / 'mymodels' / 'net.py'}:3")

    (project / "mymodels" / "net.py").write_text("def build(input_shape, num_classes):\n    return 'a model'\n")
    with pytest.raises(UserCodeError, match=r"returned str, not a torch.nn.Module \(defined at .*net.py:1\)"):
        build_from_factory(cfg, (4,), 2)

    (project / "mymodels" / "net.py").write_text("import torch\n\ndef build(input_shape, num_classes, depth):\n"
                                                 "    return torch.nn.Linear(4, 2)\n")
    with pytest.raises(UserCodeError, match="TypeError: build.. got an unexpected keyword argument 'widht'"):
        build_from_factory(cfg.model_copy(update={"args": {"widht": 3}}), (4,), 2)


def test_a_wrong_output_shape_fails_the_run_with_both_shapes(tmp_path):
    write_project(tmp_path, "from torch import nn\n\ndef build(input_shape, num_classes):\n"
                            "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 7))\n")
    spec = spec_of(tmp_path, '[data]\nbatch_size = 32\n[model]\nkind = "python"\nfactory = "mymodels.net:build"\n'
                             '[train]\nepochs = 1\n')
    result = train(spec)
    assert result.state.value == "failed"
    assert result.error == "model.factory mymodels.net:build returned shape (32, 7), expected (32, 10) before the first epoch"


def test_an_error_in_the_models_forward_during_training_names_the_line(tmp_path):
    write_project(tmp_path, "import torch\nfrom torch import nn\n\nclass Net(nn.Module):\n"
                            "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(64, 10)\n"
                            "        self.calls = 0\n\n    def forward(self, x):\n        self.calls += 1\n"
                            "        if self.calls > 3:\n            raise RuntimeError('exploded at call 4')\n"
                            "        return self.fc(x.flatten(1))\n\ndef build(input_shape, num_classes):\n    return Net()\n")
    result = train(spec_of(tmp_path, '[model]\nkind = "python"\nfactory = "mymodels.net:build"\n[train]\nepochs = 2\n'))
    assert result.state.value == "failed"
    assert result.error == (f"RuntimeError: exploded at call 4 (in your model's code at "
                            f"{tmp_path / 'mymodels' / 'net.py'}:13) at epoch 1")


def test_l1_l2_cover_every_weight_tensor_of_any_model():
    tv, _ = build(ModelConfig(kind="torchvision", arch="resnet18"), (3, 16, 16), 4)
    terms = penalty_terms(tv, 0.01, 0.0)
    weights = [p for p in tv.parameters() if p.ndim > 1]
    assert len(terms) == len(weights) == 21 and all(t[0] is w for t, w in zip(terms, weights, strict=True))
    assert not any(t[0].ndim == 1 for t in terms)  # biases and batch-norm scales are not penalised


# ------------------------------------------------------------------------------ torchvision


def test_torchvision_archs_are_read_without_importing_torchvision():
    import torchvision.models

    assert list(torchvision_archs()) == sorted(torchvision.models.list_models(module=torchvision.models))


def test_a_torchvision_model_on_grey_images_gives_one_logit_per_class():
    model, code_hash = build(ModelConfig(kind="torchvision", arch="resnet18"), (1, 32, 32), 10)
    assert code_hash is None
    assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_weights_not_in_torchs_cache_are_an_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    result = train(RunSpec.model_validate({"data": {"dataset": "digits"}, "train": {"epochs": 1},
                                           "model": {"kind": "torchvision", "arch": "resnet18",
                                                     "weights": "IMAGENET1K_V1"}}))
    expected = tmp_path / "empty-torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert result.state.value == "failed"
    assert result.error.startswith(f"model.weights = 'IMAGENET1K_V1': resnet18's IMAGENET1K_V1 weights are not "
                                   f"cached: {expected} is missing")
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in result.error
    assert not (tmp_path / "empty-torch-home" / "hub" / "checkpoints").exists() or \
        not any((tmp_path / "empty-torch-home" / "hub" / "checkpoints").iterdir())


# ------------------------------------------------------------------------------ enqueue checks


@pytest.mark.parametrize(("body", "expected"), [
    ('[model]\nkind = "torchvision"\narch = "resnet181"\n',
     "model.arch = 'resnet181' is not a torchvision.models classification model; did you mean 'resnet18'?"),
    ('[model]\nkind = "python"\nfactory = "mymodels.nett:build"\n',
     "model.factory = 'mymodels.nett:build': no module mymodels.nett in {root}"),
    ('[model]\nkind = "python"\nfactory = "mymodels.net:buidl"\n',
     "model.factory = 'mymodels.net:buidl': {root}/mymodels/net.py defines no 'buidl'; did you mean 'build'?"),
    ('[data]\ndataset = "arrays"\npath = "missing.npz"\n', "data.path = '{root}/missing.npz': no such file"),
    ('[data]\ndataset = "arrays"\npath = "noy.npz"\n', "data.path = '{root}/noy.npz': the file has no y (it has x)"),
    ('[data]\ndataset = "imagefolder"\npath = "nowhere"\n', "data.path = '{root}/nowhere': no such folder"),
    ('[data]\ndataset = "arrays"\npath = "reg.npz"\n[early_stopping]\nenabled = true\nmonitor = "val_acc"\n',
     "early_stopping.monitor = 'val_acc': data.path = '{root}/reg.npz' has float y: a regression, which records val_mae"),
])
def test_what_files_can_tell_is_checked_at_enqueue_without_running_user_code(tmp_path, body, expected):
    root = tmp_path
    write_project(root, "raise SystemExit('user code must not run at enqueue')\ndef build(s, n):\n    pass\n")
    np.savez(root / "noy.npz", x=np.zeros((4, 2)))
    learnable_arrays(root / "reg.npz", n=20, regression=True)
    spec = spec_of(tmp_path, body)
    problems = input_problems(spec)
    assert problems and problems[0].startswith(f"own: {expected.format(root=root)}"), problems
    with pytest.raises(PresetError):
        check_inputs(spec)


@pytest.mark.parametrize(("body", "expected"), [
    ('[model]\nkind = "python"\nfactory = "mymodels"\n', "is not of the form 'package.module:function'"),
    ('[model]\nkind = "python"\nfactory = "m:f"\nargs = 5\n', "must be a table of keyword arguments"),
    ('[model]\nkind = "torchvision"\n', 'needs arch'),
    ('[data]\ndataset = "arrays"\n', 'needs path'),
    ('[early_stopping]\nenabled = true\nmonitor = "val_mae"\n', "val_mae is recorded for regression only"),
    ('[model]\narch = "resnet18"\n', 'model.arch applies to kind = "torchvision" only'),
])
def test_preset_keys_of_own_models_and_data_are_validated_in_one_line(tmp_path, body, expected):
    with pytest.raises(PresetError) as info:
        spec_of(tmp_path, body)
    assert expected in info.value.message and "\n" not in info.value.message
    assert info.value.message.startswith(str(tmp_path / "own.toml"))


def test_relative_paths_resolve_against_the_folder_the_run_is_queued_from(tmp_path):
    spec = spec_of(tmp_path, '[data]\ndataset = "arrays"\npath = "sub/d.npz"\n[model]\nkind = "python"\n'
                             'factory = "m:f"\n')
    assert spec.data.path == str(tmp_path / "sub" / "d.npz") and spec.model.path == str(tmp_path)


def test_a_search_space_can_sample_a_factorys_args(tmp_path):
    spec = spec_of(tmp_path, '[model]\nkind = "python"\nfactory = "m:f"\nargs = { width = 8 }\n'
                             '[tune]\n[tune.space]\n"model.args.width" = { int = [4, 64] }\n', "model.args.width=16")
    assert spec.model.args == {"width": 16} and "model.args.width" in spec.tune.space


def test_configs_without_own_keys_keep_their_old_content_hash():
    # The hash of the default preset before these keys existed; a change would orphan checkpoints.
    assert RunSpec().content_hash == "05d5ff73293a7085"
    assert "path" not in RunSpec().config()["data"] and "factory" not in RunSpec().config()["model"]


# ------------------------------------------------------------------------------ data export


def test_export_writes_the_same_digits_as_npz_and_as_an_image_folder(tmp_path):
    from trialdeck.engine.datasets._export import export_dataset

    npz = export_dataset("digits", "npz", tmp_path / "a")
    folder = export_dataset("digits", "imagefolder", tmp_path / "b")
    assert (npz["train"], npz["val"]) == (folder["train"], folder["val"]) == (1438, 359)
    with np.load(npz["path"], allow_pickle=False) as f:
        assert sorted(f.files) == ["x", "x_val", "y", "y_val"] and f["x"].shape == (1438, 1, 8, 8)
    cfg_a = DataConfig(dataset="arrays", path=npz["path"])
    cfg_b = DataConfig(dataset="imagefolder", path=folder["path"], image_size=8, channels=1)
    a = load_data(cfg_a, seed=0)
    b = load_data(cfg_b, seed=0, data_dir=tmp_path / "cache")
    # Same pixels, same split: the same sorted samples per class, whichever form was read.
    for xa, ya, xb, yb in ((a.x_train, a.y_train, b.x_train, b.y_train), (a.x_val, a.y_val, b.x_val, b.y_val)):
        for k in range(10):
            rows_a = sorted(map(tuple, xa[ya == k].flatten(1).tolist()))
            rows_b = sorted(map(tuple, xb[yb == k].flatten(1).tolist()))
            assert np.allclose(rows_a, rows_b, atol=1e-5)


def test_data_export_command(tmp_path):
    from tests.deck import cli, one_line

    done = cli(tmp_path / "ws", "data", "export", "digits", "--format", "npz", str(tmp_path / "d"), "--json")
    assert done.returncode == 0, done.stderr
    assert Path(json.loads(done.stdout)["path"]).is_file()
    again = cli(tmp_path / "ws", "data", "export", "digits", "--format", "imagefolder", str(tmp_path / "d"))
    assert again.returncode == 2 and "already holds files" in one_line(again.stderr)
    bad = cli(tmp_path / "ws", "data", "export", "digits", "--format", "csv", str(tmp_path / "e"))
    assert bad.returncode == 2 and one_line(bad.stderr) == "trialdeck: --format 'csv': allowed: npz | imagefolder"


def test_a_folder_that_cannot_be_read_is_one_problem_line_not_a_traceback(tmp_path, monkeypatch):
    import trialdeck.engine.presets.inputs as inputs

    def denied(spec):
        raise PermissionError(13, "Permission denied", "/home/other/data")

    monkeypatch.setattr(inputs, "_data_problems", denied)  # root reads everything: the OS error, as a user meets it
    spec = resolve("base/digits-mlp", ["data.dataset='imagefolder'", f"data.path='{tmp_path}'"])
    assert input_problems(spec) == ["base/digits-mlp: /home/other/data: Permission denied"]
    with pytest.raises(PresetError, match="Permission denied"):
        check_inputs(spec)


def test_a_dask_worker_finds_a_python_model_by_its_model_path(tmp_path):
    from trialdeck.engine.runtime.workers.dask import missing_workdir

    record = {"config": {"model": {"kind": "python", "factory": "m:build", "path": str(tmp_path)}}}
    assert missing_workdir(record, "w1") is None  # a rerun or a trial carries no record workdir
    record["config"]["model"]["path"] = str(tmp_path / "gone")
    assert f"its workdir {tmp_path / 'gone'} does not exist on Dask worker w1" in missing_workdir(record, "w1")
