"""Each strategy from the article does what it claims (schedules, L1/L2, dropout,
batch norm placement, early stopping, train_fraction)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import trialdeck.engine.training.trainer as trainer_mod
from trialdeck.engine.presets import resolve
from trialdeck.engine.presets.schema import ModelConfig, ScheduleConfig
from trialdeck.engine.training.callbacks import TrainerCallback
from trialdeck.engine.training.models import build_model, penalty, penalty_terms
from trialdeck.engine.training.schedules import make_schedule, preview
from trialdeck.engine.training.trainer import EarlyStopper, train
from trialdeck.engine.types import RunState


def test_step_decay_over_50_epochs_is_the_articles_formula():
    spec = resolve("seed/step-decay")
    lrs = preview(spec.schedule, spec.optimizer.lr, spec.train.epochs)
    article = [0.1 * 0.5 ** math.floor((1 + epoch) / 10.0) for epoch in range(50)]
    assert lrs == pytest.approx(article, rel=0, abs=0)
    assert lrs[8] == 0.1 and lrs[9] == 0.05 and lrs[49] == 0.1 * 0.5**5


@settings(max_examples=60, deadline=None)
@given(lr0=st.floats(1e-5, 1.0), drop=st.floats(0.01, 1.0), epochs_drop=st.integers(1, 30), epoch=st.integers(0, 200))
def test_step_decay_formula_property(lr0, drop, epochs_drop, epoch):
    cfg = ScheduleConfig(kind="step", drop=drop, epochs_drop=epochs_drop)
    assert make_schedule(cfg, lr0, 300).lr_at(epoch) == lr0 * drop ** math.floor((1 + epoch) / epochs_drop)


def test_other_schedules():
    exp = preview(ScheduleConfig(kind="exponential", gamma=0.9), 1.0, 5)
    assert exp == pytest.approx([0.9**e for e in range(5)])
    cos = preview(ScheduleConfig(kind="cosine", min_lr=0.0), 1.0, 11)
    assert cos[0] == 1.0 and cos[5] == pytest.approx(0.5) and cos[10] == pytest.approx(0.0, abs=1e-12)
    plateau = make_schedule(ScheduleConfig(kind="plateau", factor=0.5, patience=1, monitor="val_loss"), 1.0, 10)
    lrs = [plateau.lr_at(0)]
    for epoch, loss in enumerate([1.0, 0.9, 0.9, 0.9, 0.9], start=1):
        lrs.append(plateau.lr_at(epoch, {"val_loss": loss}))
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5]


def test_l1_and_l2_add_the_right_amount_to_the_loss():
    model = build_model(ModelConfig(hidden=[4, 3]), (1, 2, 2), 2)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, layer in enumerate(linears):
            layer.weight.fill_(0.5 * (i + 1))
            layer.bias.fill_(100.0)  # biases are never penalised
    expected_l1 = 0.01 * sum(layer.weight.abs().sum().item() for layer in linears)
    expected_l2 = 0.02 * sum((layer.weight**2).sum().item() for layer in linears)
    assert penalty(penalty_terms(model, 0.01, 0.0)).item() == pytest.approx(expected_l1)
    assert penalty(penalty_terms(model, 0.0, 0.02)).item() == pytest.approx(expected_l2)
    # Per layer, as in the article: l1 on the first Dense, l2 on the second.
    per_layer = penalty(penalty_terms(model, [0.01, 0.0, 0.0], [0.0, 0.01, 0.0])).item()
    assert per_layer == pytest.approx(0.01 * linears[0].weight.abs().sum().item() + 0.01 * (linears[1].weight**2).sum().item())
    assert penalty(penalty_terms(model, 0.0, 0.0)) is None


def test_penalty_reaches_the_gradient_in_training(monkeypatch):
    spec = resolve("seed/l1-l2", ["train.epochs=1", "train.device='cpu'"])
    seen = []
    original = trainer_mod.F.cross_entropy

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(trainer_mod.F, "cross_entropy", spy)
    result = train(spec)
    assert result.state == RunState.COMPLETED
    # Recorded train_loss is the data loss (without the penalty): the mean of the batch losses.
    train_steps = math.ceil(result_train_samples(spec) / spec.data.batch_size)
    batch_losses = [t.item() for t in seen[:train_steps]]
    assert result.history[0].train_loss == pytest.approx(sum(batch_losses) / len(batch_losses), rel=1e-5)


def result_train_samples(spec) -> int:
    from trialdeck.engine.datasets import load_data

    return load_data(spec.data, seed=spec.train.seed).x_train.shape[0]


def layer_types(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model]


def test_batch_norm_before_and_after_activation_and_dropout_order():
    before = build_model(ModelConfig(hidden=[64], batch_norm="before_activation", dropout=0.5), (1, 8, 8), 10)
    assert layer_types(before) == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    after = build_model(ModelConfig(hidden=[64, 32], batch_norm="after_activation", activation="tanh",
                                    dropout=[0.2, 0.0]), (1, 8, 8), 10)
    assert layer_types(after) == ["Flatten", "Linear", "Tanh", "BatchNorm1d", "Dropout", "Linear", "Tanh", "BatchNorm1d",
                                  "Linear"]
    assert [m.p for m in after if isinstance(m, nn.Dropout)] == [0.2]
    cnn = build_model(ModelConfig(kind="cnn", channels=[8], hidden=[16], batch_norm="before_activation"), (1, 8, 8), 10)
    assert layer_types(cnn)[:4] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert cnn(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_depth_takes_the_first_layers():
    model = build_model(ModelConfig(hidden=[30, 20, 10], depth=2, dropout=[0.1, 0.2, 0.3]), (1, 4, 4), 3)
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [30, 20, 3]
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.1, 0.2]


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "gelu", "elu", "silu", "tanh", "sigmoid"])
def test_every_activation_builds(name):
    model = build_model(ModelConfig(hidden=[8], activation=name), (1, 2, 2), 2)
    assert layer_types(model)[2].lower().replace("leakyrelu", "leaky_relu") == name


def test_dropout_is_inverted_scaling_at_train_time():
    layer = build_model(ModelConfig(hidden=[1000], dropout=0.5), (1000, 1, 1), 2)[3]
    assert isinstance(layer, nn.Dropout)
    x = torch.ones(1, 1000)
    layer.train()
    torch.manual_seed(0)
    out = layer(x)
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 2.0))  # 1 / (1 - 0.5)
    assert 400 < kept.numel() < 600
    layer.eval()
    assert torch.equal(layer(x), x)  # nothing scaled at inference


def test_early_stopper_on_a_scripted_sequence():
    stopper = EarlyStopper("val_loss", "min", patience=3, min_delta=0.01)
    losses = [1.0, 0.8, 0.795, 0.7, 0.705, 0.699, 0.71, 0.5]
    stopped_at = None
    for epoch, value in enumerate(losses, start=1):
        _, stop = stopper.update(epoch, value)
        if stop:
            stopped_at = epoch
            break
    # 0.795 is not better than 0.8 by more than 0.01; 0.705/0.699/0.71 do not beat 0.7 by 0.01.
    assert stopped_at == 7 and stopper.best == 0.7 and stopper.best_epoch == 4
    acc = EarlyStopper("val_acc", "max", patience=1, min_delta=0.0)
    assert acc.update(1, 0.5) == (True, False) and acc.update(2, 0.6) == (True, False) and acc.update(3, 0.6) == (False, True)


class StateSpy(TrainerCallback):
    def __init__(self, model_holder):
        self.states = {}
        self.holder = model_holder

    def on_epoch(self, record, events):
        self.states[record.epoch] = {k: v.clone() for k, v in self.holder["model"].state_dict().items()}
        return None


def test_trainer_stops_early_at_the_right_epoch_and_restores_best_weights(monkeypatch):
    scripted = iter([0.9, 0.5, 0.6, 0.7, 0.65, 0.8, 0.8, 0.8])
    monkeypatch.setattr(trainer_mod, "evaluate", lambda *a, **k: (next(scripted), 0.5))
    holder = {}
    import trialdeck.engine.training.models as models

    real_build = models.build

    def capture(*args, **kwargs):
        holder["model"], code_hash = real_build(*args, **kwargs)
        return holder["model"], code_hash

    monkeypatch.setattr(models, "build", capture)
    spec = resolve("seed/early-stopping", ["early_stopping.patience=3", "early_stopping.min_delta=0.0",
                                          "train.epochs=8", "train.device='cpu'"])
    spy = StateSpy(holder)
    result = train(spec, spy)
    assert result.state == RunState.EARLY_STOPPED
    assert len(result.history) == 5  # best at 2, then 3 epochs without improvement
    event = next(e for e in result.events if e.kind == "early_stopped")
    assert event.epoch == 5 and event.data["best_epoch"] == 2 and event.data["best_value"] == 0.5
    assert event.data["patience"] == 3 and event.data["restored"] is True
    final = holder["model"].state_dict()
    for key, value in spy.states[2].items():
        assert torch.equal(final[key], value), f"{key} was not restored to epoch 2's weights"
    # ... and not the weights trained after the best epoch.
    assert not all(torch.equal(final[k], v) for k, v in spy.states[4].items())


def test_nan_loss_fails_the_run_with_a_reason():
    spec = resolve("seed/step-decay", ["optimizer.lr=100", "train.epochs=3", "train.device='cpu'"])
    result = train(spec)
    assert result.state == RunState.FAILED
    assert "loss" in result.error and "epoch 1" in result.error
    assert any(e.kind == "nan_loss" for e in result.events)


def test_an_exception_in_training_fails_the_run_with_its_type(monkeypatch):
    def boom(*a, **k):
        raise ValueError("shape mismatch in layer 2")

    monkeypatch.setattr(trainer_mod, "evaluate", boom)
    result = train(resolve("seed/step-decay", ["train.epochs=2", "train.device='cpu'"]))
    assert result.state == RunState.FAILED
    assert result.error == "ValueError: shape mismatch in layer 2 at epoch 1"


def test_cuda_out_of_memory_reason(monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer_mod, "evaluate", oom)
    result = train(resolve("seed/step-decay", ["train.epochs=5", "train.device='cpu'"]))
    assert result.error == "CUDA out of memory at epoch 1"


def test_same_seed_same_result_on_cpu():
    spec = resolve("seed/dropout", ["train.epochs=2", "train.device='cpu'"])
    a, b = train(spec), train(spec)
    assert [h.val_loss for h in a.history] == [h.val_loss for h in b.history]
    c = train(resolve("seed/dropout", ["train.epochs=2", "train.device='cpu'", "train.seed=1"]))
    assert [h.val_loss for h in c.history] != [h.val_loss for h in a.history]


def test_lr_changed_events_follow_the_step_schedule():
    spec = resolve("seed/step-decay", ["train.epochs=12", "schedule.epochs_drop=5", "train.device='cpu'"])
    result = train(spec)
    changes = [(e.epoch, e.data["to"]) for e in result.events if e.kind == "lr_changed"]
    # epoch index 4 (the 5th epoch) is the first with floor((1+4)/5) = 1
    assert changes == [(5, pytest.approx(0.05)), (10, pytest.approx(0.025))]
    assert [h.lr for h in result.history][:5] == [0.1, 0.1, 0.1, 0.1, 0.05]


def test_checkpoint_resumes_where_it_stopped(tmp_path):
    from trialdeck.engine.training.callbacks import Stop

    class InterruptAfter(TrainerCallback):
        def on_epoch(self, record, events):
            return Stop(RunState.INTERRUPTED) if record.epoch == 2 else None

    spec = resolve("seed/step-decay", ["train.epochs=4", "train.device='cpu'", "train.checkpoint_seconds=0"])
    full = train(spec)
    first = train(spec, InterruptAfter(), run_dir=tmp_path)
    assert first.state == RunState.INTERRUPTED and len(first.history) == 2
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert payload["config"]["optimizer"]["lr"] == 0.1 and payload["epoch"] == 1
    resumed = train(spec, run_dir=tmp_path)
    assert resumed.state == RunState.COMPLETED
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4]
    assert any(e.kind == "resumed" for e in resumed.events)
    assert [h.val_loss for h in resumed.history] == pytest.approx([h.val_loss for h in full.history], rel=1e-5)


class _StopAtPoll(TrainerCallback):
    """Stops the run at its n-th poll: inside an epoch, as `engine stop` or a cancel does."""

    step_interval = 0.0

    def __init__(self, n: int, state: RunState = RunState.INTERRUPTED) -> None:
        self.n, self.state, self.polls, self.events = n, state, 0, []

    def poll(self):
        from trialdeck.engine.training.callbacks import Stop

        self.polls += 1
        return Stop(self.state) if self.polls == self.n else None

    def on_event(self, event):
        self.events.append(event)


@pytest.mark.parametrize(("preset", "n", "state"), [
    ("base/digits-mlp", 3, RunState.INTERRUPTED),  # step 16 of epoch 2 (polls every 8 of 23 steps)
    ("base/digits-mlp", 1, RunState.INTERRUPTED),  # inside the first epoch: nothing whole yet
    ("seed/augmentation", 4, RunState.CANCELLED),  # augmentation draws from the generator per batch
    ("seed/dropout", 5, RunState.INTERRUPTED),  # dropout draws from the global generator
])
def test_a_stop_inside_an_epoch_resumes_at_that_step_and_ends_as_if_never_stopped(tmp_path, preset, n, state):
    spec = resolve(preset, ["train.epochs=3", "train.device='cpu'", "train.checkpoint_seconds=0"])
    full = train(spec)
    stopper = _StopAtPoll(n, state)
    first = train(spec, stopper, run_dir=tmp_path)
    assert first.state == state
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert payload["partial"] is not None and payload["epoch"] == len(first.history) - 1
    step = payload["partial"]["step"]
    if state == RunState.INTERRUPTED:  # a final checkpoint (any other stop) is written without an event
        assert f"at step {step} of epoch {len(first.history) + 1}" in [e.message for e in stopper.events][-1]
    listener = _StopAtPoll(0)
    resumed = train(spec, listener, run_dir=tmp_path)
    assert resumed.state == RunState.COMPLETED and [h.epoch for h in resumed.history] == [1, 2, 3]
    [said] = [e.message for e in listener.events if e.kind == "resumed"]
    assert f"at step {step} of" in said
    for got, want in zip(resumed.history, full.history, strict=True):
        assert (got.train_loss, got.val_loss) == pytest.approx((want.train_loss, want.val_loss), rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_run_with_dropout_resumes_with_the_same_masks(tmp_path):
    """Dropout on the GPU draws from the CUDA generator, which the checkpoint keeps."""
    from trialdeck.engine.training.callbacks import Stop

    class InterruptAfter(TrainerCallback):
        def on_epoch(self, record, events):
            return Stop(RunState.INTERRUPTED) if record.epoch == 2 else None

    spec = resolve("seed/dropout", ["train.epochs=4", "train.device='cuda'", "train.precision='fp32'",
                                    "train.checkpoint_seconds=0"])
    full = train(spec)
    assert train(spec, InterruptAfter(), run_dir=tmp_path).state == RunState.INTERRUPTED
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["cuda_rng"] is not None
    resumed = train(spec, run_dir=tmp_path)
    assert [h.train_loss for h in resumed.history] == pytest.approx([h.train_loss for h in full.history], rel=1e-5)


def test_a_checkpoint_from_another_kind_of_device_resumes(tmp_path):
    """A CUDA generator's state (16 bytes) cannot be loaded into a CPU one: the run goes on
    from its weights and optimiser state, and says the batch order was not replayed."""
    from trialdeck.engine.training.callbacks import Stop, TrainerCallback

    class Listener(TrainerCallback):
        def __init__(self, stop_at=None):
            self.stop_at, self.lines = stop_at, []

        def on_epoch(self, record, events):
            return Stop(RunState.INTERRUPTED) if record.epoch == self.stop_at else None

        def log(self, line):
            self.lines.append(line)

    spec = resolve("seed/step-decay", ["train.epochs=3", "train.device='cpu'", "train.checkpoint_seconds=0"])
    assert train(spec, Listener(stop_at=1), run_dir=tmp_path).state == RunState.INTERRUPTED
    path = tmp_path / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    payload["generator"] = torch.zeros(16, dtype=torch.uint8)  # what a CUDA generator saves
    torch.save(payload, path)
    listener = Listener()
    resumed = train(spec, listener, run_dir=tmp_path)
    assert resumed.state == RunState.COMPLETED and [h.epoch for h in resumed.history] == [1, 2, 3]
    assert any("written on another kind of device" in line for line in listener.lines)
