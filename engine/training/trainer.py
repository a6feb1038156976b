"""The training loop: one RunSpec in, one TrainResult out.

Reads straight through like nanoGPT's train.py: resolve everything once at the
top, then epochs of (shuffle on the device, augment the batch on the device,
step), one evaluation per epoch. The run's bookkeeping between steps (schedule,
early stopping, events, checkpoints, the final state) is its `RunTracker`'s.
The data lives on the training device as tensors; batches are slices of a
device-side randperm. Losses accumulate on the device and are read once per
epoch, so there is no host sync per step (except the throttled per-step report
a callback asks for). Failures become a FAILED result with a reason a person
can act on; only KeyboardInterrupt escapes.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F

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
        return tracker.fail(exc)


def _train(spec: RunSpec, tracker: RunTracker, data_dir: Path | None, resume: bool, device_name: str | None) -> TrainResult:
    # Imported here, not at module top: the dataset and augmentation modules pull in
    # scikit-learn/torchvision, which only a process that trains should pay for.
    from trialdeck.engine.datasets import load_data
    from trialdeck.engine.training.augment import BatchAugment
    from trialdeck.engine.training.models import build_model, penalty, penalty_terms

    t = spec.train
    device = resolve_device(device_name or t.device)
    tracker.result.device = str(device)
    torch.manual_seed(t.seed)
    data = load_data(spec.data, seed=t.seed, device=device, data_dir=data_dir)
    model = build_model(spec.model, data.shape, data.classes).to(device)
    if spec.model.kind == "cnn" and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(spec, model.parameters())
    weights = ModelWeights(model, optimizer)
    terms = penalty_terms(model, spec.regularization.l1, spec.regularization.l2)
    augment = BatchAugment(spec.augment, fill=data.normalize_value(spec.augment.cval)) if spec.augment.active else None
    gen = tracker.generator(device)
    autocast: Any = torch.autocast("cuda", dtype=torch.bfloat16) if t.precision == "bf16" and device.type == "cuda" \
        else contextlib.nullcontext()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # torch.compile wraps the model in a Module (OptimizedModule) that shares its parameters.
    step_model = cast(torch.nn.Module, torch.compile(model)) if t.compile else model

    x_train, y_train, x_val, y_val = data.x_train, data.y_train, data.x_val, data.y_val
    n, bs = x_train.shape[0], spec.data.batch_size
    steps = math.ceil(n / bs)
    # Where a checkpoint written inside an epoch stopped; then where a stop now cuts one short.
    inside: Partial | None = tracker.resume(model, optimizer, device, n, steps) if resume else None
    params = sum(p.numel() for p in model.parameters())
    tracker.begin({"device": str(device), "params": params, "train_samples": n, "val_samples": int(x_val.shape[0]),
                   "steps_per_epoch": steps},
                  f"training {spec.preset or 'preset'} on {device}: {params:,} parameters, "
                  f"{n} train / {x_val.shape[0]} val samples")

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
        for i in range(first, steps):
            idx = perm[i * bs : (i + 1) * bs]
            xb, yb = x_train[idx], y_train[idx]
            if augment is not None:
                xb = augment(xb, gen)
            with autocast:
                loss = F.cross_entropy(step_model(xb), yb)
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

        val_loss, val_acc = evaluate(step_model, x_val, y_val, autocast)
        train_loss = (total / steps).item()  # the epoch's one host sync
        if tracker.end_epoch(epoch, train_loss, val_loss, val_acc, time.perf_counter() - epoch_start, weights):
            break
    return tracker.finish(weights, partial=inside)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: Any = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y), in chunks, read back in one sync."""
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, x.shape[0], EVAL_BATCH):
        xb, yb = x[i : i + EVAL_BATCH], y[i : i + EVAL_BATCH]
        with autocast:
            logits = model(xb)
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    loss, acc = torch.stack([loss_sum, correct.to(loss_sum.dtype)]).tolist()
    n = max(1, x.shape[0])
    return loss / n, acc / n
