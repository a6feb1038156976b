"""Getting the model out: `runs export RUN --model PATH` and the one-liner `load_model`.

A run trains on digits in the foreground (`trialdeck train`, a real process), with early
stopping that restores its best weights; the model loaded back, from the run and from an
export, must reproduce the val_acc the run recorded for the epoch it kept, on the run's own
validation split.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.deck import REPO, cli, one_line
from trialdeck.engine.datasets import load_data
from trialdeck.engine.errors import BadInput
from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.training.export import export_model, load_model
from trialdeck.engine.training.trainer import evaluate
from trialdeck.engine.workspace import Workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A digits run that early-stopped and restored the weights of an epoch before its last."""
    home = tmp_path_factory.mktemp("export") / "ws"
    proc = cli(home, "train", "seed/early-stopping", "--set", "early_stopping.patience=2", "--set", "train.epochs=40",
               "--set", "optimizer.lr=0.01", "--device", "cpu", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["state"] == "early_stopped", record["state"]
    assert record["kept_epoch"] < record["history"][-1]["epoch"], "the test wants weights restored from an earlier epoch"
    return home, record


def val_split(home: Path, record: dict):
    spec = RunSpec.model_validate(record["config"])
    return load_data(spec.data, seed=spec.train.seed, device="cpu", data_dir=Workspace(home).data_dir)


def kept_entry(record: dict) -> dict:
    return next(h for h in record["history"] if h["epoch"] == record["kept_epoch"])


def test_load_model_of_a_run_reproduces_its_kept_epoch(trained):
    home, record = trained
    model = load_model(record["id"], home=home)
    assert not model.training  # ready for inference
    data = val_split(home, record)
    val_loss, val_acc = evaluate(model, data.x_val, data.y_val)
    kept = kept_entry(record)
    assert abs(val_acc - kept["val_acc"]) <= 1e-6
    assert val_loss == pytest.approx(kept["val_loss"], rel=1e-5)


def test_load_model_reads_the_workspace_from_trialdeck_home(trained, monkeypatch):
    home, record = trained
    monkeypatch.setenv("TRIALDECK_HOME", str(home))
    model = load_model(record["id"])
    data = val_split(home, record)
    assert abs(evaluate(model, data.x_val, data.y_val)[1] - kept_entry(record)["val_acc"]) <= 1e-6


def test_runs_show_names_the_checkpoint_file(trained):
    home, record = trained
    proc = cli(home, "runs", "show", record["id"], "--json")
    assert json.loads(proc.stdout)["checkpoint"] == str(Workspace(home).checkpoint_path(record["id"]))
    assert f"checkpoint: {Workspace(home).checkpoint_path(record['id'])}" in cli(home, "runs", "show", record["id"]).stdout


def test_an_export_is_a_plain_state_dict_and_a_toml_and_loads_back(trained, tmp_path):
    home, record = trained
    path = tmp_path / "model.pt"
    proc = cli(home, "runs", "export", record["id"], "--model", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout)
    assert done == {"id": record["id"], "weights": str(path), "config": str(tmp_path / "model.toml"),
                    "kept_epoch": record["kept_epoch"], "checkpoint_epoch": record["history"][-1]["epoch"], "final": True}
    # Readable without trialdeck: a state_dict, loaded as data only.
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    meta = tomllib.loads((tmp_path / "model.toml").read_text())
    assert meta["export"]["run"] == record["id"] and meta["export"]["kept_epoch"] == record["kept_epoch"]
    assert meta["export"]["input_shape"] == [1, 8, 8] and meta["export"]["classes"] == 10
    assert meta["export"]["pixel_max"] == 16 and len(meta["export"]["mean"]) == 1
    assert meta["config"]["early_stopping"]["patience"] == 2 and meta["config"]["data"]["dataset"] == "digits"

    from_run = load_model(record["id"], home=home)
    from_file = load_model(path)  # needs no workspace and no data
    for key, tensor in from_run.state_dict().items():
        assert torch.equal(tensor, from_file.state_dict()[key]), key
    data = val_split(home, record)
    assert abs(evaluate(from_file, data.x_val, data.y_val)[1] - kept_entry(record)["val_acc"]) <= 1e-6


def test_export_refuses_a_toml_path(trained, tmp_path):
    home, record = trained
    proc = cli(home, "runs", "export", record["id"], "--model", str(tmp_path / "model.toml"))
    assert proc.returncode == 2 and "cannot end in .toml" in one_line(proc.stderr)


def test_export_into_a_missing_folder_makes_it_as_torch_save_users_expect(trained, tmp_path):
    home, record = trained
    proc = cli(home, "runs", "export", record["id"], "--model", "out/deeper/model.pt", cwd=tmp_path)  # the README's example
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "deeper" / "model.pt").is_file() and (tmp_path / "out" / "deeper" / "model.toml").is_file()
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(BadInput) as refused:  # what `runs export` prints as its one line, exit 2
        export_model(Workspace(home), record, tmp_path / "taken" / "model.pt")
    assert refused.value.message == (f"--model {tmp_path / 'taken' / 'model.pt'}: cannot make folder "
                                     f"{tmp_path / 'taken'}: a file of that name is in the way")


def readme_formula_names() -> set[str]:
    """The names in the README's normalisation formula for an export, `(x / pixel_max - mean) / std`."""
    readme = (REPO / "README.md").read_text()
    formula = re.search(r"`(\(x / [^`]*)`", readme.split("`runs export RUN --model PATH`", 1)[1]).group(1)
    return set(re.findall(r"[a-z_]+", formula)) - {"x"}


def test_an_export_of_a_model_trained_on_float_arrays_has_every_value_of_the_readmes_formula(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(120, 6)).astype(np.float32)  # floats: standardised as they are
    np.savez(tmp_path / "floats.npz", x=x, y=(x[:, 0] > 3.0).astype(np.int64))
    home = tmp_path / "ws"
    proc = cli(home, "train", "base/digits-mlp", "--set", "data.dataset=arrays", "--set", "data.path=floats.npz",
               "--set", "train.epochs=1", "--set", "model.hidden=[8]", "--device", "cpu", "--json", cwd=tmp_path,
               timeout=300)
    assert proc.returncode == 0, proc.stderr
    export_model(Workspace(home), json.loads(proc.stdout), tmp_path / "model.pt")  # as `runs export --model` does
    meta = tomllib.loads((tmp_path / "model.toml").read_text())["export"]
    names = readme_formula_names()
    assert names == {"pixel_max", "mean", "std"}
    assert names <= set(meta), f"the README's formula uses {sorted(names - set(meta))}, which the export lacks"
    assert meta["pixel_max"] == 1.0
    # The formula with the written values is what the run trained on: the training subset's stats.
    assert meta["mean"][0] == pytest.approx(3.0, abs=0.5) and meta["std"][0] == pytest.approx(2.0, abs=0.5)


def test_load_model_of_a_missing_export_or_run_says_what_is_missing(trained, tmp_path):
    home, _ = trained
    with pytest.raises(BadInput, match="does not exist"):
        load_model(tmp_path / "nothing.pt")
    with pytest.raises(BadInput, match="no run 'r99'"):
        load_model("r99", home=home)
