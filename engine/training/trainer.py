"""The training loop: one RunSpec in, one TrainResult out.

Reads straight through like nanoGPT's train.py: resolve everything once at the
top, then epochs of (shuffle on the device, augment the batch on the device,
step), one evaluation per epoch, schedule and early stopping between epochs.
The data lives on the training device as tensors; batches are slices of a
device-side randperm. Losses accumulate on the device and are read once per
epoch, so there is no host sync per step (except the throttled per-step report
a callback asks for). Failures become a FAILED result with a reason a person
can act on; only KeyboardInterrupt escapes.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.training.callbacks import Stop, TrainerCallback
from trialdeck.engine.types import EpochRecord, EventKind, RunEvent, RunState
from trialdeck.engine.workspace import CHECKPOINT_NAME, atomic_write

EVAL_BATCH = 4096


@dataclass(frozen=True)
class Partial:
    """Where a stop cut an epoch short: steps done, its batch order, its summed loss so far."""

    step: int
    perm: torch.Tensor
    total: float


@dataclass
class TrainResult:
    state: RunState
    history: list[EpochRecord] = field(default_factory=list)
    events: list[RunEvent] = field(default_factory=list)
    error: str | None = None
    device: str = "cpu"
    best_epoch: int | None = None
    best_value: float | None = None
    seconds: float = 0.0
    checkpoint: str | None = None
    current_epoch: int | None = None
    """The epoch in progress (1-based), for failure reasons."""

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else None
        return {
            "epochs": len(self.history),
            "val_loss": last.val_loss if last else None,
            "val_acc": last.val_acc if last else None,
            "best_val_loss": min((h.val_loss for h in self.history), default=None),
            "best_val_acc": max((h.val_acc for h in self.history), default=None),
            "best_epoch": self.best_epoch,
            "seconds": round(self.seconds, 3),
        }


class NonFiniteLoss(RuntimeError):
    pass


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


def make_optimizer(spec: RunSpec, params) -> torch.optim.Optimizer:
    o = spec.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    return torch.optim.RMSprop(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def describe_failure(exc: BaseException, epoch: int | None) -> str:
    """A failure reason a person can act on, e.g. "CUDA out of memory at epoch 3"."""
    where = f" at epoch {epoch}" if epoch is not None else " before the first epoch"
    text = str(exc).lower()
    if isinstance(exc, torch.OutOfMemoryError) or "cuda out of memory" in text:
        return f"CUDA out of memory{where}"
    if "can't allocate memory" in text or isinstance(exc, MemoryError):
        return f"out of memory (host RAM){where}"
    if isinstance(exc, NonFiniteLoss):
        return f"{exc}{where}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}{': ' + first if first else ''}{where}"


class EarlyStopper:
    """Keras EarlyStopping semantics: stop once `patience` epochs pass without an
    improvement larger than `min_delta`; optionally restore the best weights."""

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float) -> None:
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0

    def update(self, epoch: int, value: float) -> tuple[bool, bool]:
        """Returns (improved, should_stop)."""
        if self.best is None or (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        ):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True, False
        self.wait += 1
        return False, self.wait >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomic: a kill at any moment leaves either the old or the new checkpoint."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, buffer.getbuffer())


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only: a checkpoint is data, never code (no unpickling of arbitrary objects).
    return torch.load(path, map_location="cpu", weights_only=True)


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
    cb = callback or TrainerCallback()
    started = time.perf_counter()
    result = TrainResult(state=RunState.RUNNING)
    try:
        return _train(spec, cb, run_dir, data_dir, resume, device, result, started)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes the run's reason
        epoch = result.current_epoch
        reason = describe_failure(exc, epoch)
        cb.log("".join(traceback.format_exception(exc)))
        event = RunEvent(EventKind.FAILED.value, epoch, reason)
        result.events.append(event)
        cb.on_event(event)
        result.state, result.error = RunState.FAILED, reason
        result.seconds = time.perf_counter() - started
        return result


def _train(spec, cb, run_dir, data_dir, resume, device_name, result, started) -> TrainResult:
    # Imported here, not at module top: the dataset and augmentation modules pull in
    # scikit-learn/torchvision, which only a process that trains should pay for.
    from trialdeck.engine.datasets import load_data
    from trialdeck.engine.training.augment import BatchAugment
    from trialdeck.engine.training.models import build_model, penalty, penalty_terms
    from trialdeck.engine.training.schedules import make_schedule

    t = spec.train
    device = resolve_device(device_name or t.device)
    result.device = str(device)
    torch.manual_seed(t.seed)
    data = load_data(spec.data, seed=t.seed, device=device, data_dir=data_dir)
    model = build_model(spec.model, data.shape, data.classes).to(device)
    if spec.model.kind == "cnn" and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(spec, model.parameters())
    schedule = make_schedule(spec.schedule, spec.optimizer.lr, t.epochs)
    es = spec.early_stopping
    stopper = EarlyStopper(es.monitor, es.resolved_mode, es.patience, es.min_delta) if es.enabled else None
    terms = penalty_terms(model, spec.regularization.l1, spec.regularization.l2)
    augment = BatchAugment(spec.augment, fill=data.normalize_value(spec.augment.cval)) if spec.augment.active else None
    gen = torch.Generator(device=device)
    gen.manual_seed(t.seed)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if t.precision == "bf16" and device.type == "cuda"
        else contextlib.nullcontext()
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    step_model = torch.compile(model) if t.compile else model

    x_train, y_train, x_val, y_val = data.x_train, data.y_train, data.x_val, data.y_val
    n, bs = x_train.shape[0], spec.data.batch_size
    steps = math.ceil(n / bs)
    start_epoch, best_state, lr_prev = 0, None, None
    inside: Partial | None = None  # where a checkpoint written inside an epoch stopped
    ckpt_path = run_dir / CHECKPOINT_NAME if run_dir is not None else None

    if resume and ckpt_path is not None and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        if ck.get("config_hash") == spec.content_hash:
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            schedule.load_state_dict(ck["schedule"])
            if stopper and ck.get("early_stopping"):
                stopper.load_state_dict(ck["early_stopping"])
            best_state = ck.get("best_model")
            saved = ck["generator"].to("cpu")
            if saved.numel() == gen.get_state().numel():
                gen.set_state(saved)
            else:  # a CUDA generator's state is 16 bytes, a CPU one's 5056: written on the other kind
                cb.log(f"{ckpt_path} was written on another kind of device; the batch order goes on from the seed")
            torch.set_rng_state(ck["cpu_rng"])
            if device.type == "cuda" and ck.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(ck["cuda_rng"], device)  # dropout's masks on the GPU
            result.history = [EpochRecord(**h) for h in ck["history"]]
            start_epoch = ck["epoch"] + 1
            lr_prev = result.history[-1].lr if result.history else None
            where = f"after epoch {start_epoch}"
            if ck.get("partial") and ck["partial"]["perm"].numel() == n:
                inside = Partial(int(ck["partial"]["step"]), ck["partial"]["perm"].to(device), float(ck["partial"]["total"]))
                where = (f"{where}, " if start_epoch else "") + f"at step {inside.step} of {steps} in epoch {start_epoch + 1}"
            event = RunEvent(EventKind.RESUMED.value, start_epoch, f"resumed from the checkpoint {where}")
            result.events.append(event)
            cb.on_event(event)
        else:
            cb.log(f"checkpoint {ckpt_path} is for another configuration; starting from scratch")

    params = sum(p.numel() for p in model.parameters())
    cb.on_start({"device": str(device), "params": params, "train_samples": n, "val_samples": int(x_val.shape[0]),
                 "steps_per_epoch": steps, "start_epoch": start_epoch,
                 "history": [h.to_json() for h in result.history]})
    cb.log(f"training {spec.preset or 'preset'} on {device}: {params:,} parameters, {n} train / {x_val.shape[0]} val samples")

    last_ckpt = time.monotonic()
    last_poll = time.monotonic()
    last_metrics: dict[str, float] | None = (
        {k: getattr(result.history[-1], k) for k in ("train_loss", "val_loss", "val_acc")} if result.history else None
    )
    stop: Stop | None = None
    for epoch in range(start_epoch, t.epochs):
        epoch_start = time.perf_counter()
        result.current_epoch = epoch + 1
        events: list[RunEvent] = []
        lr = schedule.lr_at(epoch, last_metrics)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if schedule.steps and lr_prev is not None and lr != lr_prev:
            events.append(RunEvent(EventKind.LR_CHANGED.value, epoch + 1, f"learning rate {lr_prev:.6g} -> {lr:.6g}",
                                   {"from": lr_prev, "to": lr}))
        lr_prev = lr

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
            objective = loss if not terms else loss + penalty(terms)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            total += loss.detach()
            if (i & 7) == 7:
                now = time.monotonic()
                if now - last_poll >= cb.step_interval:
                    last_poll = now
                    if cb.wants_steps:
                        cb.on_step(epoch + 1, i + 1, loss.item())  # .item() syncs; throttled
                    stop = cb.poll()
                    if stop is not None:
                        inside = Partial(i + 1, perm, float(total))
                        break
        if stop is not None:
            break

        val_loss, val_acc = evaluate(step_model, x_val, y_val, autocast)
        train_loss = (total / steps).item()  # the epoch's one host sync
        if not math.isfinite(train_loss) or not math.isfinite(val_loss):
            event = RunEvent(EventKind.NAN_LOSS.value, epoch + 1, f"loss became {train_loss if not math.isfinite(train_loss) else val_loss} at epoch {epoch + 1}")
            cb.on_event(event)
            result.events.append(event)
            raise NonFiniteLoss("NaN loss" if math.isnan(train_loss) or math.isnan(val_loss) else "infinite loss")
        record = EpochRecord(epoch + 1, train_loss, val_loss, val_acc, lr, time.perf_counter() - epoch_start)
        result.history.append(record)
        last_metrics = {"train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc}

        early = False
        if stopper is not None:
            improved, early = stopper.update(epoch + 1, last_metrics[es.monitor])
            if improved and es.restore_best:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if early:
                restored = es.restore_best and best_state is not None
                if restored:
                    model.load_state_dict(best_state)
                events.append(RunEvent(
                    EventKind.EARLY_STOPPED.value, epoch + 1,
                    f"{es.monitor} did not improve by more than {es.min_delta:g} for {es.patience} epochs; "
                    f"best {stopper.best:.4f} at epoch {stopper.best_epoch}"
                    + ("; restored the best weights" if restored else ""),
                    {"best_epoch": stopper.best_epoch, "best_value": stopper.best, "patience": es.patience,
                     "monitor": es.monitor, "restored": restored},
                ))
        result.events.extend(events)
        stop = cb.on_epoch(record, events)
        if early:
            result.state = RunState.EARLY_STOPPED
            break
        if stop is not None:
            break
        if ckpt_path is not None and (t.checkpoint_seconds == 0 or time.monotonic() - last_ckpt >= t.checkpoint_seconds) \
                and epoch + 1 < t.epochs:
            write_checkpoint(ckpt_path, spec, model, optimizer, schedule, stopper, best_state, gen, epoch, result, cb)
            last_ckpt = time.monotonic()

    if stop is not None:
        result.state = stop.state
        if stop.event is not None:
            result.events.append(stop.event)
            cb.on_event(stop.event)
        if stop.state == RunState.INTERRUPTED and ckpt_path is not None and (result.history or inside):
            write_checkpoint(ckpt_path, spec, model, optimizer, schedule, stopper, best_state, gen,
                             len(result.history) - 1, result, cb, partial=inside)
    elif result.state == RunState.RUNNING:
        result.state = RunState.COMPLETED
    if stopper is not None:
        result.best_epoch, result.best_value = stopper.best_epoch, stopper.best
    elif result.history:
        best = min(result.history, key=lambda h: h.val_loss)
        result.best_epoch, result.best_value = best.epoch, best.val_loss
    if ckpt_path is not None and (result.history or inside) and result.state != RunState.INTERRUPTED:
        write_checkpoint(ckpt_path, spec, model, optimizer, schedule, stopper, best_state, gen,
                         len(result.history) - 1, result, cb, final=True, partial=inside)
    result.seconds = time.perf_counter() - started
    return result


@torch.no_grad()
def evaluate(model, x, y, autocast=contextlib.nullcontext()) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y), in chunks, read back in one sync."""
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


def write_checkpoint(path, spec, model, optimizer, schedule, stopper, best_state, gen, epoch, result, cb, final=False,
                     partial: Partial | None = None):
    """`epoch`: the last whole epoch (0-based; -1 for none). `partial`: where in the next one
    a stop cut it short, so a resume goes on from that step in the same batch order."""
    payload = {
        "config": spec.config(),
        "config_hash": spec.content_hash,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "early_stopping": stopper.state_dict() if stopper else None,
        "best_model": best_state,
        "generator": gen.get_state(),
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(gen.device) if gen.device.type == "cuda" else None,
        "history": [h.to_json() for h in result.history],
        "final": final,
        "partial": {"step": partial.step, "perm": partial.perm.cpu(), "total": partial.total} if partial else None,
    }
    save_checkpoint(path, payload)
    where = f"after epoch {epoch + 1}"
    if partial:
        where = (f"{where}, " if epoch >= 0 else "") + f"at step {partial.step} of epoch {epoch + 2}"
    event = RunEvent(EventKind.CHECKPOINT.value, epoch + 1 or None, f"checkpoint written {where}", {"path": str(path)})
    result.checkpoint = str(path)
    if not final:
        result.events.append(event)
        cb.on_event(event)

