"""The training loop: one RunSpec in, one TrainResult out.

Reads straight through like nanoGPT's train.py: resolve everything once at the
top, then epochs of (shuffle on the device, augment the batch on the device,
step), one evaluation per epoch. The run's bookkeeping between steps (schedule,
early stopping, events, checkpoints, the final state) is its `RunTracker`'s.
Data that fits the device budget lives on the training device as tensors and
batches are slices of a device-side randperm; larger data streams from host
memory through a DataLoader in the same batch order (datasets.load_feed), and
the run records which (`data_path`). Losses accumulate on the device and are
read once per epoch, so there is no host sync per step (except the throttled
per-step report a callback asks for). Integer targets train a classifier
(cross-entropy, val_acc), float targets a regression (MSE, val_mae).
Failures become a FAILED result with a reason a person can act on (a user's
model code is named by file and line); only KeyboardInterrupt escapes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F

from trialdeck.engine.errors import PresetError
from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.training.callbacks import TrainerCallback
from trialdeck.engine.training.checkpoint import CHECKPOINT_NAME, Partial, load_checkpoint, save_checkpoint
from trialdeck.engine.training.optimizers import make_optimizer
from trialdeck.engine.training.tracker import (
    EarlyStopper,
    NonFiniteLoss,
    RunTracker,
    StateDict,
    TrainResult,
    describe_failure,
)

__all__ = [  # the names callers (and tests) import from here
    "CHECKPOINT_NAME", "EVAL_BATCH", "EarlyStopper", "NonFiniteLoss", "TrainResult", "describe_failure", "evaluate",
    "evaluate_batches",
    "load_checkpoint", "make_optimizer", "resolve_device", "save_checkpoint", "train",
]

EVAL_BATCH = 4096


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available on this machine")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device 'mps' was asked for but MPS is not available on this machine")
    return torch.device(name)


class ModelWeights:
    """A plain model and its optimiser, as the tracker sees them."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def model_state(self, copy: bool) -> StateDict:
        state = self.model.state_dict()
        return {k: v.detach().clone() for k, v in state.items()} if copy else state

    def optimizer_state(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def restore(self, state: StateDict) -> None:
        self.model.load_state_dict(state)


def train(
    spec: RunSpec,
    callback: TrainerCallback | None = None,
    *,
    run_dir: Path | None = None,
    data_dir: Path | None = None,
    resume: bool = True,
    device: str | None = None,
) -> TrainResult:
    """Train `spec` to completion (or early stop, prune, cancel, failure)."""
    tracker = RunTracker(spec, callback, run_dir)
    try:
        return _train(spec, tracker, data_dir, resume, device)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes the run's reason
        if spec.model.kind == "python" and spec.model.path:
            from trialdeck.engine.training.usercode import blame

            return tracker.fail(blame(exc, Path(spec.model.path)))  # an error in the user's forward names their line
        return tracker.fail(exc)


def _train(spec: RunSpec, tracker: RunTracker, data_dir: Path | None, resume: bool, device_name: str | None) -> TrainResult:
    # Imported here, not at module top: the dataset and augmentation modules pull in
    # scikit-learn/torchvision, which only a process that trains should pay for.
    from trialdeck.engine.datasets import load_feed
    from trialdeck.engine.training.augment import BatchAugment
    from trialdeck.engine.training.models import build, penalty, penalty_terms
    from trialdeck.engine.training.usercode import check_output

    t = spec.train
    device = resolve_device(device_name or t.device)
    tracker.result.device = str(device)
    torch.manual_seed(t.seed)
    with load_feed(spec.data, seed=t.seed, device=device, data_dir=data_dir) as feed:
        regression = feed.task == "regression"
        _check_metrics(spec, regression)
        if spec.augment.active and len(feed.shape) != 3:
            raise PresetError(f"[augment] needs images (N, C, H, W); the data's samples have shape {feed.shape}")
        model, code_hash = build(spec.model, feed.shape, feed.classes)
        model = model.to(device)
        n, bs = feed.n_train, spec.data.batch_size
        if spec.model.kind == "python":  # its output shape is the factory's promise: check it before step 1
            xb, _ = feed.sample(min(bs, n))
            check_output(model, xb, (xb.shape[0], feed.classes), f"model.factory {spec.model.factory}",
                         Path(str(spec.model.path)))
        if spec.model.kind in ("cnn", "torchvision") and device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(spec, model.parameters())
        weights = ModelWeights(model, optimizer)
        terms = penalty_terms(model, spec.regularization.l1, spec.regularization.l2)
        augment = BatchAugment(spec.augment, fill=feed.normalize_value(spec.augment.cval)) if spec.augment.active else None
        loss_fn = F.mse_loss if regression else F.cross_entropy
        gen = tracker.generator(device)
        autocast: Any = torch.autocast("cuda", dtype=torch.bfloat16) if t.precision == "bf16" and device.type == "cuda" \
            else contextlib.nullcontext()
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        # torch.compile wraps the model in a Module (OptimizedModule) that shares its parameters.
        step_model = cast(torch.nn.Module, torch.compile(model)) if t.compile else model

        steps = math.ceil(n / bs)
        # Where a checkpoint written inside an epoch stopped; then where a stop now cuts one short.
        inside: Partial | None = tracker.resume(model, optimizer, device, n, steps) if resume else None
        params = sum(p.numel() for p in model.parameters())
        info = {"device": str(device), "params": params, "train_samples": n, "val_samples": feed.n_val,
                "steps_per_epoch": steps, "data_path": feed.path}
        if code_hash:
            info["code_hash"] = code_hash
        if feed.note:
            tracker.cb.log(feed.note)
        tracker.begin(info, f"training {spec.preset or 'preset'} on {device}: {params:,} parameters, "
                            f"{n} train / {feed.n_val} val samples"
                            + (", streamed from host memory" if feed.path == "stream" else "")
                            + (f", model code {code_hash}" if code_hash else ""))

        for epoch in range(tracker.first_epoch, t.epochs):
            epoch_start = time.perf_counter()
            lr = tracker.start_epoch(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            if inside is not None:  # the rest of the epoch a stop cut short, in its batch order
                first, perm, total = inside.step, inside.perm, torch.full((), inside.total, device=device)
                inside = None
            else:
                first, perm, total = 0, torch.randperm(n, device=device, generator=gen), torch.zeros((), device=device)
            for i, (xb, yb) in enumerate(feed.batches(perm, first, steps, bs), start=first):
                if augment is not None:
                    xb = augment(xb, gen)
                with autocast:
                    loss = loss_fn(step_model(xb), yb)
                objective = loss if (extra := penalty(terms)) is None else loss + extra
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                optimizer.step()
                total += loss.detach()
                if (i & 7) == 7 and tracker.poll_due():
                    # .item() syncs the device: only at this throttled report.
                    if tracker.poll(epoch, i + 1, loss.item() if tracker.wants_steps else None):
                        inside = Partial(i + 1, perm, float(total))
                        break
            if tracker.stop is not None:
                break

            val_loss, val_metric = evaluate(step_model, feed.val_batches(EVAL_BATCH), None, autocast,
                                            regression=regression, n=feed.n_val)
            train_loss = (total / steps).item()  # the epoch's one host sync
            seconds = time.perf_counter() - epoch_start
            if regression:
                ended = tracker.end_epoch(epoch, train_loss, val_loss, None, seconds, weights, val_mae=val_metric)
            else:
                ended = tracker.end_epoch(epoch, train_loss, val_loss, val_metric, seconds, weights)
            if ended:
                break
        return tracker.finish(weights, partial=inside)


def _check_metrics(spec: RunSpec, regression: bool) -> None:
    """A regression records val_mae and no val_acc, a classifier the reverse: a monitor or an
    objective naming the one not recorded fails the run now, not at its first epoch's end."""
    wrong = "val_acc" if regression else "val_mae"
    for loc, value in spec._metric_uses():
        if value == wrong:
            kind = "float targets (a regression: it records val_mae)" if regression else \
                "integer labels (classes: it records val_acc)"
            raise PresetError(f"{'.'.join(loc)} = {value!r}: the data has {kind}")


def evaluate(model: torch.nn.Module, x: torch.Tensor | Iterable[tuple[torch.Tensor, torch.Tensor]],
             y: torch.Tensor | None = None, autocast: Any = None, *, regression: bool | None = None,
             n: int | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the validation data (mean squared error and mean
    absolute error for float targets), read back in one sync: tensors (x, y) in chunks of
    EVAL_BATCH, or `x` an iterable of (xb, yb) batches of `n` samples in all."""
    if isinstance(x, torch.Tensor):
        assert y is not None, "evaluate(model, x, y): y is needed with a tensor x"
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = (
            (x[i : i + EVAL_BATCH], y[i : i + EVAL_BATCH]) for i in range(0, x.shape[0], EVAL_BATCH))
        n, regression = x.shape[0], y.is_floating_point() if regression is None else regression
    else:
        batches = x
    return evaluate_batches(model, batches, int(n or 0), autocast, bool(regression))


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int,
                     autocast: Any = None, regression: bool = False) -> tuple[float, float]:
    """(mean loss, accuracy) over the batches of `n` samples, or (mean squared error, mean
    absolute error) per target value for a regression; one host sync at the end."""
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    model.eval()
    loss_sum: torch.Tensor | None = None
    score: torch.Tensor | None = None
    values = 0
    for xb, yb in batches:
        with autocast:
            out = model(xb)
        if regression:
            diff = out.float() - yb
            loss, part = diff.square().sum(), diff.abs().sum()
            values += yb.numel()
        else:
            loss, part = F.cross_entropy(out.float(), yb, reduction="sum"), (out.argmax(1) == yb).sum().float()
            values += yb.shape[0]
        loss_sum = loss if loss_sum is None else loss_sum + loss
        score = part if score is None else score + part
    if loss_sum is None or score is None:
        return math.nan, math.nan
    loss_v, score_v = torch.stack([loss_sum, score]).tolist()
    count = max(1, values if regression else n)
    return loss_v / count, score_v / count
