"""One run's bookkeeping (training/tracker.py) and which epoch's weights a run kept.

An early-stopped run with restore_best ends with its best epoch's weights, not its
last epoch's: the result, the run record, `runs show`, `runs list` and the TUI's
run header must say which epoch that is, with that epoch's metrics, apart from the
last epoch's and the monitor's best. Scripted validation losses make the epochs
exact; CPU, digits, a few epochs.
"""

from __future__ import annotations

import json
import typing

import pytest
import torch
from typer.testing import CliRunner

import trialdeck.engine.training.trainer as trainer_mod
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.presets import resolve
from trialdeck.engine.presets.schema import OptimizerConfig
from trialdeck.engine.runtime.runners.recorder import RunRecorder
from trialdeck.engine.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from trialdeck.engine.training.ensemble import train_ensemble
from trialdeck.engine.training.optimizers import OPTIMIZERS, make_optimizer
from trialdeck.engine.training.trainer import train
from trialdeck.engine.types import RunState
from trialdeck.engine.workspace import Workspace
from trialdeck.tui.cli import app
from trialdeck.tui.live import outcome

SCRIPTED = [0.9, 0.5, 0.6, 0.7, 0.65, 0.8, 0.8, 0.8]
"""val_loss per epoch: best at epoch 2, then 3 epochs without improvement: stops at epoch 5."""


def early_stopping_spec(*sets: str):
    return resolve("seed/early-stopping", ["early_stopping.patience=3", "early_stopping.min_delta=0.0",
                                           "early_stopping.monitor='val_loss'", "train.epochs=8",
                                           "train.device='cpu'", *sets])


@pytest.fixture
def scripted(monkeypatch):
    """Validation losses from SCRIPTED, accuracies rising 0.50, 0.51, ... (so the last is not the kept one)."""
    values = iter(SCRIPTED)
    accs = iter(0.5 + i / 100 for i in range(100))
    monkeypatch.setattr(trainer_mod, "evaluate", lambda *a, **k: (next(values), next(accs)))


def test_an_early_stopped_run_says_it_kept_its_best_epoch_not_its_last(scripted, tmp_path):
    result = train(early_stopping_spec(), run_dir=tmp_path)
    assert result.state == RunState.EARLY_STOPPED and [h.epoch for h in result.history] == [1, 2, 3, 4, 5]
    assert result.kept_epoch == 2 and result.best_epoch == 2 and result.monitor == "val_loss"
    summary = result.summary()
    assert summary["kept_epoch"] == 2 and summary["last_epoch"] == 5
    assert summary["kept"]["epoch"] == 2 and summary["kept"]["val_loss"] == 0.5 and summary["kept"]["val_acc"] == 0.51
    assert summary["val_acc"] == 0.54  # the last epoch's, labelled as such by last_epoch
    # The checkpoint holds the kept weights: the best ones it also keeps as best_model.
    payload = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert payload["final"] and payload["epoch"] == 4
    for key, value in payload["best_model"].items():
        assert torch.equal(payload["model"][key], value)


def test_without_restore_best_or_early_stop_the_last_epoch_is_kept(scripted):
    kept_last = train(early_stopping_spec("early_stopping.restore_best=false"))
    assert kept_last.state == RunState.EARLY_STOPPED and kept_last.kept_epoch == 5 and kept_last.best_epoch == 2
    completed = train(resolve("seed/step-decay", ["train.epochs=3", "train.device='cpu'"]))
    assert completed.state == RunState.COMPLETED and completed.kept_epoch == 3
    assert completed.summary()["kept"]["epoch"] == 3


def test_a_failed_run_kept_no_epoch():
    failed = train(resolve("seed/step-decay", ["optimizer.lr=100", "train.epochs=3", "train.device='cpu'"]))
    assert failed.state == RunState.FAILED and failed.kept_epoch is None and failed.summary()["kept"] is None


def test_the_record_runs_show_runs_list_and_the_tui_say_which_epoch_was_kept(scripted, tmp_path):
    home = tmp_path / "ws"
    ws = Workspace(home).ensure()
    result = CliRunner().invoke(app, ["--home", str(home), "train", "seed/early-stopping", "--json",
                                      "--set", "early_stopping.patience=3", "--set", "early_stopping.min_delta=0.0",
                                      "--set", "train.epochs=8", "--set", "train.device='cpu'"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["state"] == "early_stopped" and record["kept_epoch"] == 2
    assert record["summary"]["kept"]["val_loss"] == 0.5 and record["summary"]["last_epoch"] == 5
    assert Store(ws).get_run(record["id"])["kept_epoch"] == 2

    shown = CliRunner().invoke(app, ["--home", str(home), "runs", "show", record["id"]])
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert "kept (epoch 2, the best val_loss): val_loss 0.5000  val_acc 0.5100 | last epoch 5: val_loss 0.6500  " \
           "val_acc 0.5400" in text
    table = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in table] == ["1", "2", "3", "4", "5"]  # the per-epoch history
    assert table[1][-2:] == ["kept,", "best"] and table[4][3] == "0.5400"

    listed = CliRunner().invoke(app, ["--home", str(home), "runs", "list"])
    assert "kept epoch 2: val_acc 0.5100  last: val_acc 0.5400" in listed.stdout

    assert outcome(record) == ["kept (epoch 2, the best val_loss): val_loss 0.5000  val_acc 0.5100",
                               "last epoch 5: val_loss 0.6500  val_acc 0.5400"]
    # Without restore_best the last epoch is kept, and the best is named apart from it.
    unrestored = {**record, "kept_epoch": 5}
    assert outcome(unrestored) == ["kept (epoch 5, the last): val_loss 0.6500  val_acc 0.5400",
                                   "best val_loss 0.5000 at epoch 2"]


def test_ensemble_members_keep_the_epoch_train_keeps(tmp_path):
    stopping = ["optimizer.name='sgd'", "early_stopping.enabled=true", "early_stopping.patience=1", "train.epochs=30"]
    specs = [resolve("base/digits-mlp", ["train.device='cpu'", "optimizer.lr=0.3", *stopping]),
             resolve("base/digits-mlp", ["train.device='cpu'", "optimizer.name='sgd'", "optimizer.lr=0.05",
                                         "train.seed=1", "train.epochs=3"])]
    together = train_ensemble(specs)
    for s, member in zip(specs, together, strict=True):
        alone = train(s)
        assert member.kept_epoch == alone.kept_epoch and member.monitor == alone.monitor
    early, plain = together
    assert early.state == RunState.EARLY_STOPPED and early.kept_epoch == early.best_epoch < len(early.history)
    assert plain.state == RunState.COMPLETED and plain.kept_epoch == 3


def test_recorder_stores_kept_epoch_top_level(scripted, tmp_path):
    store = Store(Workspace(tmp_path / "ws").ensure())
    spec = early_stopping_spec()
    run = store.create_run(preset=spec.preset, config=spec.config(), config_hash=spec.content_hash)
    store.transition(run["id"], RunState.RUNNING)
    recorder = RunRecorder(store, run["id"], store.workspace.run_dir(run["id"]))
    try:
        final = recorder.finish(train(spec, recorder))
    finally:
        recorder.close()
    assert final["kept_epoch"] == 2 and final["summary"]["best_epoch"] == 2 and final["summary"]["kept"]["epoch"] == 2


def test_every_optimizer_a_preset_may_name_has_a_constructor():
    names = set(typing.get_args(OptimizerConfig.model_fields["name"].annotation))
    assert set(OPTIMIZERS) == names
    model = torch.nn.Linear(3, 2)
    for name in names:
        spec = resolve("base/digits-mlp", [f"optimizer.name='{name}'", "optimizer.lr=0.01"])
        assert type(make_optimizer(spec, model.parameters())).__name__.lower() == name
