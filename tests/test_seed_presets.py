"""Seed parity: every preset of the article trains end to end on the embedded digits data.

Short runs (`train.epochs=2` through `--set`) in this process with the trainer
itself; presets with a [tune] block train their base configuration once (the
study itself is tested with tuning). seed/tpe-mnist is retargeted to digits so
the suite stays offline. One test runs seed/step-decay as the article does
(50 epochs) through a real `trialdeck train` process and checks it learns.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.deck import cli
from trialdeck.engine.presets import list_presets, preset_roots, resolve

REPO = Path(__file__).resolve().parents[1]
SEED_PRESETS = [
    "seed/l1-l2", "seed/dropout", "seed/early-stopping", "seed/batch-norm", "seed/activations", "seed/step-decay",
    "seed/augmentation", "seed/grid-search", "seed/random-search", "seed/tpe-mnist", "seed/larger-dataset",
]
SHORT = ["train.epochs=2", "train.device='cpu'"]
OFFLINE = {"seed/tpe-mnist": ["data.dataset='digits'"]}


def test_the_seed_catalogue_is_exactly_the_article():
    seed = {name for name, _ in list_presets(preset_roots()) if name.startswith("seed/")}
    assert seed == set(SEED_PRESETS)


@pytest.mark.parametrize("name", SEED_PRESETS)
def test_seed_preset_trains_on_digits(name, tmp_path):
    from trialdeck.engine.training.trainer import train  # deferred: torch

    spec = resolve(name, [*SHORT, *OFFLINE.get(name, [])])
    assert spec.data.dataset == "digits"
    result = train(spec, run_dir=None, data_dir=tmp_path / "data")
    assert result.error is None, result.error
    assert result.state.value in ("completed", "early_stopped")
    assert [h.epoch for h in result.history] == [1, 2]
    for h in result.history:
        assert math.isfinite(h.train_loss) and math.isfinite(h.val_loss)
        assert 0.0 <= h.val_acc <= 1.0
        assert h.lr > 0


def test_tuned_seed_presets_keep_their_tune_block():
    """Training the base config must not lose the study definition that `tune` will use."""
    for name in ("seed/activations", "seed/grid-search", "seed/random-search", "seed/tpe-mnist", "seed/larger-dataset"):
        spec = resolve(name, SHORT)
        assert spec.tune is not None, name


def test_step_decay_for_50_epochs_reaches_95_percent(tmp_path):
    proc = cli(tmp_path / "home", "train", "seed/step-decay", "--device", "cpu", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["state"] == "completed"
    history = record["history"]
    assert len(history) == 50
    # The article's step_decay(0.1, 0.5, 10): halved at epochs 10, 20, 30, 40 (counted from 0, before the epoch).
    assert [h["lr"] for h in history[8:11]] == pytest.approx([0.1, 0.05, 0.05])
    assert history[-1]["lr"] == pytest.approx(0.1 * 0.5**5)
    assert history[-1]["val_acc"] >= 0.95, history[-1]
