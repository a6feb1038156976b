"""A project of its own through real engine processes (issue 15): a model module beside the
project's own engine.py, an .npz and an image folder written here, queued from the project's
folder with `trialdeck run` as a user would.

- a python-factory model learns a synthetic task (val_acc >= 0.9); a regression records val_mae;
  torchvision's resnet18 trains 2 epochs on 32x32 PNGs; data forced past the device budget
  streams and ends where the device path ends;
- editing the factory between two runs changes the second run's code_hash and model;
- a second run on the same image folder reads the workspace's cache: its images are garbage by
  then (same size and mtime), so a decode would fail the run;
- bad input: what the files tell is refused at enqueue (exit 2, one line, nothing queued); what
  only running tells fails that run alone, with its reason, and the next run completes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.deck import TERMINAL, Deck, one_line
from tests.test_own_data import learnable_arrays, write_image_folder, write_project

FACTORY = '''
import math

from torch import nn

import engine  # this project's own engine.py: trialdeck's is trialdeck.engine

def build(input_shape, num_classes, width=32, depth=1):
    assert engine.WHO == "the user's engine"
    layers, features = [nn.Flatten()], math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    return nn.Sequential(*layers, nn.Linear(features, num_classes))
'''

ARRAYS = '''description = "own model on own arrays"
[data]
dataset = "arrays"
path = "{npz}"
batch_size = 32
[model]
kind = "python"
factory = "mymodels.net:build"
args = {{ width = 32 }}
[optimizer]
lr = 0.01
[train]
epochs = {epochs}
device = "cpu"
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = write_project(tmp_path / "project", FACTORY)
    learnable_arrays(root / "cls.npz", n=1000)
    learnable_arrays(root / "reg.npz", n=1000, regression=True)
    (root / "cls.toml").write_text(ARRAYS.format(npz="cls.npz", epochs=12))
    (root / "reg.toml").write_text(ARRAYS.format(npz="reg.npz", epochs=8)
                                   + '[early_stopping]\nenabled = true\nmonitor = "val_mae"\npatience = 3\n')
    write_image_folder(root / "images", {"train": 8, "val": 2}, size=(32, 32))
    (root / "resnet.toml").write_text('[data]\ndataset = "imagefolder"\npath = "images"\nimage_size = 32\n'
                                      'batch_size = 12\n[model]\nkind = "torchvision"\narch = "resnet18"\n'
                                      '[train]\nepochs = 2\ndevice = "cpu"\n')
    return root


class ProjectDeck(Deck):
    """Commands typed in the project's folder (relative paths resolve there)."""

    cli_timeout = 180

    def __init__(self, home: Path, project: Path) -> None:
        super().__init__(home)
        self.project = project

    def cli(self, *args, env=None, timeout=None):
        from tests.deck import cli

        return cli(self.home, *args, env=env, timeout=timeout or self.cli_timeout, cwd=self.project)

    def queue(self, *args: str) -> str:
        return self.json("run", *args)["id"]

    def finished(self, run_ids: list[str], timeout: float = 240) -> dict[str, dict]:
        def done():
            records = {r: self.store.get_run(r) for r in run_ids}
            return records if all(rec and rec["state"] in TERMINAL for rec in records.values()) else None

        return self.wait(done, timeout, lambda: f"{run_ids} to end: "
                         + ", ".join(f"{r} {(self.store.get_run(r) or {}).get('state')}" for r in run_ids))


def val(record: dict, key: str) -> float:
    return record["history"][-1][key]


def test_a_project_of_its_own_trains_through_the_engine(home, project):
    deck = ProjectDeck(home, project)
    cls, reg = deck.queue("cls.toml"), deck.queue("reg.toml")
    resnet = deck.queue("resnet.toml")
    device_twin = deck.queue("cls.toml", "--set", "train.epochs=3")
    streamed = deck.queue("cls.toml", "--set", "train.epochs=3", "--set", "data.device_budget_mb=0.01")
    runs = deck.finished([cls, reg, resnet, device_twin, streamed], timeout=420)
    for run_id, record in runs.items():
        assert record["state"] in ("completed", "early_stopped"), (run_id, record.get("error"))
        assert record["workdir"] == str(project)

    # The python factory, imported from the project (beside its own engine.py), learns the task.
    assert val(runs[cls], "val_acc") >= 0.9 and len(runs[cls]["code_hash"]) == 16
    assert runs[cls]["config"]["model"]["path"] == str(project) and runs[cls]["data_path"] == "device"

    # A regression records val_mae, not val_acc, everywhere a reader looks.
    entry = runs[reg]["history"][-1]
    assert "val_mae" in entry and "val_acc" not in entry and 0 <= entry["val_mae"] < 1.0
    assert runs[reg]["summary"]["best_val_mae"] <= entry["val_mae"] and runs[reg]["summary"]["monitor"] == "val_mae"
    shown = deck.ok("runs", "show", reg).stdout
    assert "val_mae" in shown and f"val_mae {entry['val_mae']:.4f}" in deck.ok("runs", "list").stdout

    # torchvision's resnet18 on 32x32 PNGs, 2 epochs.
    assert [h["epoch"] for h in runs[resnet]["history"]] == [1, 2] and runs[resnet]["n_params"] > 11_000_000

    # Past the device budget the data streams, and ends exactly where the device path ends.
    assert runs[streamed]["data_path"] == "stream" and runs[device_twin]["data_path"] == "device"
    for key in ("val_loss", "val_acc", "train_loss"):
        assert val(runs[streamed], key) == pytest.approx(val(runs[device_twin], key), rel=1e-5, abs=1e-7)

    # An edit to the factory reaches the next run: another code_hash, another model.
    net = project / "mymodels" / "net.py"
    net.write_text(FACTORY.replace("width=32, depth=1", "width=32, depth=2"))
    edited = deck.queue("cls.toml", "--set", "train.epochs=1")
    again = deck.finished([edited])[edited]
    assert again["state"] == "completed", again.get("error")
    assert again["code_hash"] != runs[cls]["code_hash"]
    assert again["n_params"] == runs[cls]["n_params"] + 32 * 32 + 32  # one more hidden layer

    # A second run on the same image folder, in a fresh process, reads the workspace's cache:
    # every image is garbage by now, with its size and mtime kept, so a decode would fail.
    for png in (project / "images").rglob("*.png"):
        st = png.stat()
        png.write_bytes(b"\0" * st.st_size)
        os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns))
    done = deck.cli("train", "resnet.toml", "--set", "train.epochs=1", "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "completed" and record["data_path"] == "device"
    log = (deck.ws.run_dir(record["id"]) / "log.txt").read_text()
    assert "read from the cache" in log and "(none decoded)" in log


@pytest.mark.parametrize(("preset", "sets", "expected"), [
    ("resnet.toml", ["model.arch='resnet19'"],
     "model.arch = 'resnet19' is not a torchvision.models classification model; did you mean 'resnet18'?"),
    ("cls.toml", ["model.factory='mymodels.net'"], "is not of the form 'package.module:function'"),
    ("cls.toml", ["model.factory='mymodels.missing:build'"], "no module mymodels.missing in {project}"),
    ("cls.toml", ["model.args=5"], "model.args: must be a table of keyword arguments, like args = { width = 64 }; got 5"),
    ("cls.toml", ["data.path='nothere.npz'"], "data.path = '{project}/nothere.npz': no such file"),
    ("cls.toml", ["data.path='nox.npz'"], "data.path = '{project}/nox.npz': the file has no x (it has y)"),
    ("resnet.toml", ["data.path='no-images'"], "data.path = '{project}/no-images': no such folder"),
])
def test_what_the_files_tell_is_refused_at_enqueue(home, project, preset, sets, expected):
    deck = ProjectDeck(home, project)
    np.savez(project / "nox.npz", y=np.arange(4))
    done = deck.cli("run", preset, *(a for s in sets for a in ("--set", s)))
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert expected.replace("{project}", str(project)) in line and line.startswith("trialdeck: ")
    assert deck.store.list_runs() == [] and not deck.ws.pid_path.exists()  # nothing queued, no engine started


def test_what_only_running_tells_fails_that_run_alone(home, project):
    deck = ProjectDeck(home, project)
    bad = {
        "raises": "def build(input_shape, num_classes, **args):\n    raise ValueError('width must be even')\n",
        "not_a_module": "def build(input_shape, num_classes, **args):\n    return {'layers': 3}\n",
        "wrong_shape": "from torch import nn\n\ndef build(input_shape, num_classes, **args):\n"
                       "    return nn.Sequential(nn.Flatten(), nn.Linear(10, 7))\n",
    }
    for name, source in bad.items():
        (project / "mymodels" / f"{name}.py").write_text(source)
    images = write_image_folder(project / "broken-images", {"": 3}, size=(16, 16))
    images[2].write_bytes(b"GIF89a but not really")
    ids = {name: deck.queue("cls.toml", "--set", f"model.factory='mymodels.{name}:build'") for name in bad}
    ids["corrupt"] = deck.queue("resnet.toml", "--set", "data.path='broken-images'")
    ids["fine"] = deck.queue("cls.toml", "--set", "train.epochs=2")
    runs = deck.finished(list(ids.values()), timeout=300)
    net = project / "mymodels"
    reasons = {name: runs[run_id].get("error") for name, run_id in ids.items()}
    assert reasons["raises"] == (f"model.factory mymodels.raises:build raised ValueError: width must be even at "
                                 f"{net / 'raises.py'}:2 before the first epoch")
    assert reasons["not_a_module"] == (f"model.factory mymodels.not_a_module:build returned dict, not a "
                                       f"torch.nn.Module (defined at {net / 'not_a_module.py'}:1) before the first epoch")
    assert reasons["wrong_shape"] == ("model.factory mymodels.wrong_shape:build returned shape (32, 7), "
                                      "expected (32, 2) before the first epoch")
    assert reasons["corrupt"].startswith(f"imagefolder: cannot decode {images[2]}")
    for name in ("raises", "not_a_module", "wrong_shape", "corrupt"):
        assert runs[ids[name]]["state"] == "failed", name
    assert runs[ids["fine"]]["state"] == "completed" and reasons["fine"] is None
    assert deck.engine_pid() is not None and deck.json("engine", "status")["running"]
