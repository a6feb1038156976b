"""Ensemble trials (engine/ensemble.py): K specs trained as one vmapped model give each member
the run train() would give it, end each member on its own, and leave train()'s checkpoint.

CPU, real digits data, a few epochs: each case trains its members both ways and compares.
"""

from __future__ import annotations

import pytest
import torch

from trialdeck.engine.datasets import load_data
from trialdeck.engine.presets import resolve
from trialdeck.engine.training.callbacks import Stop, TrainerCallback
from trialdeck.engine.training.ensemble import ensemble_key, plan_ensembles, train_ensemble
from trialdeck.engine.training.models import build_model
from trialdeck.engine.training.trainer import CHECKPOINT_NAME, evaluate, load_checkpoint, make_optimizer, train
from trialdeck.engine.types import EventKind, RunEvent, RunState

TOL = dict(rel=1e-5, abs=1e-5)
"""Batched matmuls round differently from single ones; measured differences are below 5e-7."""


def spec(*sets: str, preset: str = "base/digits-mlp"):
    return resolve(preset, ["train.epochs=3", "train.device='cpu'", *sets])


def run_dirs(tmp_path, *names: str) -> list:
    made = [tmp_path / name for name in names]
    for d in made:
        d.mkdir()  # the engine creates a run's folder before it trains
    return made


def history(result, field: str) -> list[float]:
    return [getattr(h, field) for h in result.history]


def assert_same_run(alone, member, tol: dict | None = None) -> None:
    assert member.state == alone.state, (member.state, member.error)
    assert member.error == alone.error
    assert [h.epoch for h in member.history] == [h.epoch for h in alone.history]
    for field in ("train_loss", "val_loss", "val_acc", "lr"):
        assert history(member, field) == pytest.approx(history(alone, field), **(tol or TOL)), field
    assert member.best_epoch == alone.best_epoch
    assert [e.kind for e in member.events if e.kind != "checkpoint"] == \
        [e.kind for e in alone.events if e.kind != "checkpoint"]


class Recorder(TrainerCallback):
    """Remembers every call, like RunRecorder would see them."""

    def __init__(self, stop_at: int | None = None, state: RunState = RunState.PRUNED) -> None:
        self.stop_at, self.state = stop_at, state
        self.started: dict | None = None
        self.epochs: list[tuple[int, list[str]]] = []
        self.events: list[str] = []
        self.lines: list[str] = []

    def on_start(self, info):
        self.started = info

    def on_epoch(self, record, events):
        self.epochs.append((record.epoch, [e.kind for e in events]))
        if record.epoch == self.stop_at:
            return Stop(self.state, RunEvent(EventKind.PRUNED.value, record.epoch, "pruned by the test"))
        return None

    def on_event(self, event):
        self.events.append(event.kind)

    def log(self, line):
        self.lines.append(line)


VARIANTS = {
    "sgd": [["optimizer.lr=0.05"], ["optimizer.lr=0.02", "optimizer.momentum=0.9", "train.seed=1"],
            ["optimizer.lr=0.03", "optimizer.momentum=0.8", "optimizer.nesterov=true", "regularization.l2=0.001",
             "train.seed=2"], ["optimizer.lr=0.05", "optimizer.weight_decay=0.01", "regularization.l1=0.0001"]],
    "adam": [["optimizer.lr=0.001"], ["optimizer.lr=0.003", "train.seed=1"],
             ["optimizer.lr=0.002", "regularization.l2=0.001", "optimizer.weight_decay=0.001", "train.seed=2"],
             ["optimizer.lr=0.0005", "optimizer.betas=[0.8, 0.99]"]],
    "adamw": [["optimizer.lr=0.001"], ["optimizer.lr=0.003", "optimizer.weight_decay=0.05", "train.seed=1"],
              ["optimizer.lr=0.002", "regularization.l2=0.001", "train.seed=2"], ["optimizer.weight_decay=0.1"]],
    "rmsprop": [["optimizer.lr=0.001"], ["optimizer.lr=0.0005", "optimizer.momentum=0.5", "train.seed=1"],
                ["optimizer.lr=0.001", "regularization.l1=0.0001", "train.seed=2"],
                ["optimizer.lr=0.0003", "optimizer.weight_decay=0.01"]],
}


@pytest.mark.parametrize("optimizer", list(VARIANTS))
def test_members_match_separate_runs(optimizer):
    specs = [spec(f"optimizer.name='{optimizer}'", *sets) for sets in VARIANTS[optimizer]]
    assert len({ensemble_key(s) for s in specs}) == 1
    together = train_ensemble(specs)
    for s, member in zip(specs, together):
        assert_same_run(train(s), member)


def test_schedules_and_epochs_may_differ_per_member():
    specs = [spec("optimizer.name='sgd'", "optimizer.lr=0.1", "schedule.kind='step'", "schedule.epochs_drop=2",
                  "train.epochs=4"),
             spec("optimizer.name='sgd'", "optimizer.lr=0.05", "schedule.kind='cosine'", "train.epochs=3"),
             spec("optimizer.name='sgd'", "optimizer.lr=0.05", "schedule.kind='plateau'", "schedule.patience=0",
                  "train.epochs=5")]
    together = train_ensemble(specs)
    for s, member in zip(specs, together):
        assert_same_run(train(s), member)
    assert [len(r.history) for r in together] == [4, 3, 5]
    assert any(e.kind == "lr_changed" for e in together[0].events)


def test_a_pruned_member_ends_alone_and_the_others_are_unchanged():
    specs = [spec("optimizer.name='sgd'", f"optimizer.lr={lr}", f"train.seed={i}", "train.epochs=4")
             for i, lr in enumerate((0.05, 0.03, 0.08))]
    baseline = train_ensemble(specs)
    callbacks = [Recorder(), Recorder(stop_at=2), Recorder()]
    together = train_ensemble(specs, callbacks)
    pruned = together[1]
    assert pruned.state == RunState.PRUNED and len(pruned.history) == 2
    assert pruned.events[-1].kind == "pruned" and callbacks[1].events == ["pruned"]
    assert [e for e, _ in callbacks[1].epochs] == [1, 2]
    assert history(pruned, "val_loss") == pytest.approx(history(baseline[1], "val_loss")[:2], **TOL)
    for i in (0, 2):
        assert together[i].state == RunState.COMPLETED
        assert history(together[i], "val_loss") == pytest.approx(history(baseline[i], "val_loss"), **TOL)
        assert [e for e, _ in callbacks[i].epochs] == [1, 2, 3, 4]
    # train() with the same callback stops the same way.
    assert_same_run(train(specs[1], Recorder(stop_at=2)), pruned)


def test_a_poll_stop_mid_epoch_cancels_only_that_member():
    class CancelOnFirstPoll(Recorder):
        step_interval = 0.0

        def poll(self):
            return Stop(RunState.CANCELLED, RunEvent(EventKind.CANCELLED.value, None, "cancelled by the test"))

    class Steps(Recorder):
        wants_steps, step_interval = True, 0.0

        def __init__(self):
            super().__init__()
            self.steps: list[tuple[int, int, float]] = []

        def on_step(self, epoch, step, loss):
            self.steps.append((epoch, step, loss))

    specs = [spec("optimizer.name='sgd'", "optimizer.lr=0.05"), spec("optimizer.name='sgd'", "train.seed=1")]
    steps = Steps()
    cancelled, finished = train_ensemble(specs, [CancelOnFirstPoll(), steps])
    assert cancelled.state == RunState.CANCELLED and cancelled.history == []
    assert cancelled.events[-1].kind == "cancelled"
    assert_same_run(train(specs[1]), finished)
    assert steps.steps and all(loss == loss for _, _, loss in steps.steps)
    assert [step for epoch, step, _ in steps.steps if epoch == 1][:2] == [8, 16]  # train()'s every-8th-step cadence


def test_early_stopping_is_per_member_and_restores_its_best_weights(tmp_path):
    stopping = ["early_stopping.enabled=true", "early_stopping.patience=1", "train.epochs=30"]
    specs = [spec("optimizer.name='sgd'", "optimizer.lr=0.3", *stopping),
             spec("optimizer.name='sgd'", "optimizer.lr=0.05", "train.seed=1", "train.epochs=3"),
             spec("optimizer.name='sgd'", "optimizer.lr=0.2", "early_stopping.enabled=true",
                  "early_stopping.patience=2", "early_stopping.monitor='val_acc'", "train.seed=2", "train.epochs=30")]
    dirs = run_dirs(tmp_path, "0", "1", "2")
    together = train_ensemble(specs, run_dirs=dirs)
    for s, member in zip(specs, together):
        # At lr 0.2-0.3 the rounding difference grows to ~1e-3 by epoch 8 (the stop margins are wider).
        assert_same_run(train(s), member, tol=dict(rel=5e-3, abs=1e-4))
    early = together[0]
    assert early.state == RunState.EARLY_STOPPED and len(early.history) < 30
    stopped = [e for e in early.events if e.kind == "early_stopped"][0]
    assert stopped.data["restored"] and stopped.data["best_epoch"] == early.best_epoch
    assert together[1].state == RunState.COMPLETED
    # The checkpoint holds the restored (best) weights: they give the best epoch's val_loss.
    best = early.history[early.best_epoch - 1].val_loss
    assert checkpoint_val_loss(specs[0], dirs[0]) == pytest.approx(best, **TOL)


def test_nan_fails_only_that_member_with_trains_reason():
    specs = [spec("optimizer.name='sgd'", "optimizer.lr=0.05"), spec("optimizer.name='sgd'", "optimizer.lr=90.0"),
             spec("optimizer.name='sgd'", "optimizer.lr=0.02", "train.seed=4")]
    callbacks = [Recorder() for _ in specs]
    together = train_ensemble(specs, callbacks)
    failed = together[1]
    alone = train(specs[1])
    assert failed.state == RunState.FAILED and failed.error == alone.error
    assert failed.error.startswith("NaN loss at epoch") or failed.error.startswith("infinite loss at epoch")
    assert [e.kind for e in failed.events] == ["nan_loss", "failed"] == callbacks[1].events
    assert any("NonFiniteLoss" in line for line in callbacks[1].lines)
    for i in (0, 2):
        assert_same_run(train(specs[i]), together[i])


def test_a_member_whose_callback_raises_fails_alone():
    class Broken(TrainerCallback):
        def on_epoch(self, record, events):
            raise OSError("disk full")

    specs = [spec("optimizer.name='sgd'", "optimizer.lr=0.05"), spec("optimizer.name='sgd'", "train.seed=1")]
    broken, fine = train_ensemble(specs, [Broken(), None])
    assert broken.state == RunState.FAILED and broken.error == "OSError: disk full at epoch 1"
    assert_same_run(train(specs[1]), fine)


def test_dropout_rates_may_differ_and_members_without_dropout_still_match():
    specs = [spec("optimizer.name='sgd'", "optimizer.lr=0.05"),
             spec("optimizer.name='sgd'", "optimizer.lr=0.05", "model.dropout=0.5"),
             spec("optimizer.name='sgd'", "optimizer.lr=0.05", "model.dropout=[0.0, 0.3]", "train.seed=1")]
    assert len({ensemble_key(s) for s in specs}) == 1
    plain, half, second = train_ensemble(specs)
    assert_same_run(train(specs[0]), plain)
    for member, alone in ((half, train(specs[1])), (second, train(specs[2]))):
        assert member.state == RunState.COMPLETED
        # Other masks than nn.Dropout's, same regulariser: close to the separate run, never equal to no dropout.
        assert history(member, "val_loss") == pytest.approx(history(alone, "val_loss"), rel=0.1)
    assert history(half, "val_loss") != pytest.approx(history(plain, "val_loss"), rel=1e-3)


def test_cnn_members_match_separate_runs():
    specs = [spec(f"optimizer.lr={lr}", f"train.seed={i}", "train.epochs=2", preset="base/digits-cnn")
             for i, lr in enumerate((0.001, 0.003))]
    for s, member in zip(specs, train_ensemble(specs)):
        assert_same_run(train(s), member)


def test_ensemble_key_groups_what_can_train_together():
    base = spec()
    same = [spec("optimizer.lr=0.01"), spec("train.seed=7"), spec("regularization.l2=0.01"),
            spec("model.dropout=0.3"), spec("optimizer.betas=[0.8, 0.9]"), spec("schedule.kind='cosine'"),
            spec("early_stopping.enabled=true"), spec("train.epochs=9"), spec("optimizer.weight_decay=0.1")]
    assert all(ensemble_key(s) == ensemble_key(base) for s in same)
    other = [spec("model.hidden=[128, 128]"), spec("data.batch_size=32"), spec("optimizer.name='sgd'"),
             spec("model.activation='tanh'"), spec("data.train_fraction=0.5"), spec("model.depth=1"),
             spec(preset="base/digits-cnn")]
    keys = [ensemble_key(s) for s in other]
    assert None not in keys and ensemble_key(base) not in keys and len(set(keys)) == len(keys)
    alone = [spec("model.batch_norm='before_activation'"), spec("augment.rotation=10.0"), spec("train.compile=true"),
             spec(preset="aug/light"), spec(preset="reg/batch-norm")]
    assert [ensemble_key(s) for s in alone] == [None] * len(alone)


def test_plan_and_refusals(tmp_path):
    specs = [spec(), spec("optimizer.lr=0.01"), spec("model.batch_norm='before_activation'"),
             spec("model.hidden=[32]"), spec("train.seed=3"), spec("train.seed=4")]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / CHECKPOINT_NAME).write_bytes(b"")
    dirs = [None, None, None, None, resumed, None]
    assert plan_ensembles(specs, dirs) == [[0, 1, 5], [2], [3], [4]]
    assert plan_ensembles(specs, dirs, max_size=2) == [[0, 1], [2], [3], [4], [5]]
    with pytest.raises(ValueError, match="cannot train as one ensemble"):
        train_ensemble([specs[0], specs[3]])
    with pytest.raises(ValueError, match="cannot train as one ensemble"):
        train_ensemble([specs[2], specs[2]])
    with pytest.raises(ValueError, match="holds a checkpoint"):
        train_ensemble([specs[0], specs[4]], run_dirs=[None, resumed])
    assert train_ensemble([]) == []


def checkpoint_val_loss(s, run_dir) -> float:
    payload = load_checkpoint(run_dir / CHECKPOINT_NAME)
    data = load_data(s.data, seed=s.train.seed, device="cpu")
    model = build_model(s.model, data.shape, data.classes)
    model.load_state_dict(payload["model"])
    return evaluate(model, data.x_val, data.y_val)[0]


def test_checkpoints_are_trains_format_and_give_the_recorded_loss(tmp_path):
    specs = [spec("optimizer.name='adam'", "optimizer.lr=0.002"),
             spec("optimizer.name='adam'", "optimizer.lr=0.001", "train.seed=1", "model.dropout=0.2")]
    dirs = run_dirs(tmp_path, "a", "b")
    together = train_ensemble(specs, run_dirs=dirs)
    alone = train(specs[0], run_dir=run_dirs(tmp_path, "alone")[0])
    reference = load_checkpoint(tmp_path / "alone" / CHECKPOINT_NAME)
    for s, d, member in zip(specs, dirs, together):
        assert member.checkpoint == str(d / CHECKPOINT_NAME)
        payload = load_checkpoint(d / CHECKPOINT_NAME)
        assert payload.keys() == reference.keys()
        assert payload["final"] and payload["epoch"] == 2 and payload["config_hash"] == s.content_hash
        assert payload["history"] == [h.to_json() for h in member.history]
        assert checkpoint_val_loss(s, d) == pytest.approx(member.history[-1].val_loss, **TOL)
        # The optimiser state loads into the optimiser train() builds.
        model = build_model(s.model, (1, 8, 8), 10)
        make_optimizer(s, model.parameters()).load_state_dict(payload["optimizer"])
    first = load_checkpoint(dirs[0] / CHECKPOINT_NAME)
    assert first["model"].keys() == reference["model"].keys()
    for k in reference["model"]:
        assert torch.allclose(first["model"][k], reference["model"][k], atol=1e-5)
    assert first["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
    for j, state in reference["optimizer"]["state"].items():
        got = first["optimizer"]["state"][j]
        assert got.keys() == state.keys() and float(got["step"]) == float(state["step"])
        assert torch.allclose(got["exp_avg"], state["exp_avg"], atol=1e-5)
    assert alone.state == together[0].state


def test_an_interrupted_member_resumes_with_train(tmp_path):
    class InterruptAfter2(TrainerCallback):
        def on_epoch(self, record, events):
            return Stop(RunState.INTERRUPTED) if record.epoch == 2 else None

    specs = [spec("optimizer.name='sgd'", "optimizer.lr=0.05", "optimizer.momentum=0.9", "train.epochs=4"),
             spec("optimizer.name='sgd'", "optimizer.lr=0.05", "train.seed=1", "train.epochs=4")]
    dirs = run_dirs(tmp_path, "a", "b")
    interrupted, other = train_ensemble(specs, [InterruptAfter2(), None], run_dirs=dirs)
    assert interrupted.state == RunState.INTERRUPTED and len(interrupted.history) == 2
    assert load_checkpoint(dirs[0] / CHECKPOINT_NAME)["epoch"] == 1
    assert other.state == RunState.COMPLETED
    resumed = train(specs[0], run_dir=dirs[0])
    assert any(e.kind == "resumed" for e in resumed.events)
    resumed.events = [e for e in resumed.events if e.kind != "resumed"]
    assert_same_run(train(specs[0]), resumed)


def test_a_member_stopped_inside_an_epoch_resumes_with_train_at_that_step(tmp_path):
    class InterruptAtThirdPoll(TrainerCallback):
        step_interval, polls = 0.0, 0

        def poll(self):
            self.polls += 1
            return Stop(RunState.INTERRUPTED) if self.polls == 3 else None  # inside epoch 2

    specs = [spec("optimizer.name='adam'", "optimizer.lr=0.002", "train.epochs=4"),
             spec("optimizer.name='adam'", "optimizer.lr=0.001", "train.seed=1", "train.epochs=4")]
    dirs = run_dirs(tmp_path, "a", "b")
    interrupted, other = train_ensemble(specs, [InterruptAtThirdPoll(), None], run_dirs=dirs)
    assert interrupted.state == RunState.INTERRUPTED and len(interrupted.history) == 1
    payload = load_checkpoint(dirs[0] / CHECKPOINT_NAME)
    step = payload["partial"]["step"]
    assert payload["epoch"] == 0 and step % 8 == 0  # polled every 8th step
    assert other.state == RunState.COMPLETED
    resumed = train(specs[0], run_dir=dirs[0])
    [said] = [e.message for e in resumed.events if e.kind == "resumed"]
    assert said.startswith(f"resumed from the checkpoint after epoch 1, at step {step} of ") and said.endswith(" in epoch 2")
    resumed.events = [e for e in resumed.events if e.kind != "resumed"]
    assert_same_run(train(specs[0]), resumed)


def test_callbacks_hear_what_train_tells_them():
    s = spec("optimizer.name='sgd'", "optimizer.lr=0.1", "schedule.kind='step'", "schedule.epochs_drop=2",
             "train.epochs=4")
    alone, member = Recorder(), Recorder()
    train(s, alone)
    train_ensemble([s, spec("optimizer.name='sgd'", "train.seed=1")], [member, None])
    assert set(alone.started) <= set(member.started)
    assert {k: member.started[k] for k in alone.started if k != "device"} == \
        {k: v for k, v in alone.started.items() if k != "device"}
    assert member.epochs == alone.epochs  # same epochs, same events (lr_changed) in each
    assert member.events == alone.events


def test_run_recorders_record_each_member_on_its_own(tmp_path):
    from trialdeck.engine.catalogue.metrics import read_jsonl
    from trialdeck.engine.runtime.runners.recorder import METRICS_NAME, RunRecorder

    class FakeStore:
        """The four calls RunRecorder makes, kept in memory."""

        def __init__(self):
            self.runs: dict[str, dict] = {}
            self.events: dict[str, list] = {}

        def get_run(self, run_id):
            return self.runs.setdefault(run_id, {})

        def update_run(self, run_id, **fields):
            self.get_run(run_id).update(fields)
            return self.runs[run_id]

        def record_epoch_and_events(self, run_id, entry, events):
            self.events.setdefault(run_id, []).extend(events)

        def transition(self, run_id, state, error=None, add_events=(), **fields):
            self.record_epoch_and_events(run_id, None, add_events)
            return self.update_run(run_id, state=state.value, error=error, **fields)

    store = FakeStore()
    specs = [spec("optimizer.name='sgd'", "optimizer.lr=0.05"), spec("optimizer.name='sgd'", "optimizer.lr=90.0")]
    dirs = run_dirs(tmp_path, "r1", "r2")
    recorders = [RunRecorder(store, f"r{i + 1}", d) for i, d in enumerate(dirs)]
    try:
        results = train_ensemble(specs, recorders, run_dirs=dirs)
        finals = [rec.finish(result) for rec, result in zip(recorders, results)]
    finally:
        for rec in recorders:
            rec.close()
    assert [f["state"] for f in finals] == ["completed", "failed"]
    assert len(finals[0]["history"]) == 3 and finals[0]["n_params"] == 64 * 256 + 256 * 256 + 256 * 10 + 256 + 256 + 10
    assert finals[1]["error"].startswith(("NaN loss", "infinite loss"))
    assert [e["kind"] for e in store.events["r2"]] == ["nan_loss", "failed"]
    lines, _ = read_jsonl(dirs[0] / METRICS_NAME)
    assert [line["epoch"] for line in lines if line.get("kind") == "epoch"] == [1, 2, 3]
    assert lines[0]["kind"] == "start" and lines[0]["ensemble_size"] == 2


def test_trial_reporters_report_each_member_to_its_own_trial():
    import optuna

    from trialdeck.engine.presets.schema import TuneConfig
    from trialdeck.engine.tuning.reporter import TrialReporter

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trials = [study.ask() for _ in range(3)]
    specs = [spec("optimizer.name='sgd'", f"optimizer.lr={t.suggest_float('lr', 0.01, 0.1, log=True)}",
                  f"train.seed={t.number}") for t in trials]
    # The study's [tune], as the reporter reads its objectives (and pruner) from it.
    tune = TuneConfig.model_validate({"metric": "val_loss", "space": {"optimizer.lr": {"float": [0.01, 0.1], "log": True}}})
    reporters = [TrialReporter(study, tune, t._trial_id, 3) for t in trials]
    results = train_ensemble(specs, reporters)
    for t, result in zip(trials, results):
        frozen = study._storage.get_trial(t._trial_id)
        assert frozen.intermediate_values == {h.epoch: h.val_loss for h in result.history}


def test_log_lines_of_events_name_the_epoch_only_when_there_is_one():
    from trialdeck.engine.runtime.runners.recorder import _event_line
    from trialdeck.engine.types import RunEvent

    assert _event_line(RunEvent("cancelled", None, "cancelled by the user")) == "cancelled: cancelled by the user"
    assert _event_line(RunEvent("pruned", 4, "median pruner")) == "[epoch 4] pruned: median pruner"
