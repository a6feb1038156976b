"""RunTracker: one run's bookkeeping around a training loop, for train() and each ensemble member.

A loop computes (steps, evaluation); the tracker owns everything else a run
has: its learning-rate schedule and lr_changed events, its early stopper (the
best weights, the early_stopped message, restoring them), the NaN check at the
end of an epoch, its `TrainResult` (history, events, best and kept epoch), its
checkpoint, its final state and its failure reason. A loop asks `start_epoch`
for the rate, reports each epoch to `end_epoch`, and ends the run with
`finish` or `fail`; train() holds one tracker, an ensemble one per member.

Invariants:
- The callback hears what it would hear from any loop, in the same order:
  epoch events (lr_changed, early_stopped) with `on_epoch`, the rest
  (checkpoint, nan_loss, a stop's own event, failed, resumed) with `on_event`.
- An early stop ends the run EARLY_STOPPED even when the callback asks for a
  stop at that same epoch: the run has its result.
- `kept_epoch` is the epoch whose weights the run ends with: the monitor's
  best when early stopping restored them, else the last whole epoch (None
  when a stop left weights from inside an epoch, or the run failed).
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from trialdeck.engine.errors import TrialdeckError
from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.training.callbacks import Stop, TrainerCallback
from trialdeck.engine.training.checkpoint import CHECKPOINT_NAME, CheckpointState, Partial, read_checkpoint, save_checkpoint
from trialdeck.engine.training.schedules import BaseSchedule, make_schedule
from trialdeck.engine.types import EpochRecord, EventKind, RunEvent, RunState, run_summary

StateDict = dict[str, torch.Tensor]


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class TrainResult:
    state: RunState
    history: list[EpochRecord] = field(default_factory=list)
    events: list[RunEvent] = field(default_factory=list)
    error: str | None = None
    device: str = "cpu"
    monitor: str = "val_loss"
    """The metric `best_epoch` is best in (early stopping's monitor, else val_loss)."""
    best_epoch: int | None = None
    best_value: float | None = None
    kept_epoch: int | None = None
    """The epoch whose weights the run ended with (see the module docstring)."""
    seconds: float = 0.0
    checkpoint: str | None = None
    current_epoch: int | None = None
    """The epoch in progress (1-based), for failure reasons."""

    def summary(self) -> dict[str, Any]:
        """The run record's `summary` (types.run_summary: the same for a script's run)."""
        return run_summary([h.to_json() for h in self.history], monitor=self.monitor, best_epoch=self.best_epoch,
                           best_value=self.best_value, kept_epoch=self.kept_epoch, seconds=self.seconds)


class Weights(Protocol):
    """The trained state of one run, as its tracker sees it."""

    def model_state(self, copy: bool) -> StateDict:
        """The weights now; `copy`: tensors the tracker may keep while training goes on."""
        ...

    def optimizer_state(self) -> dict[str, Any]:
        """The optimiser's state in torch's own state_dict format (train() loads it on resume)."""
        ...

    def restore(self, state: StateDict) -> None:
        """Put the best weights back (early stopping with restore_best)."""
        ...


def describe_failure(exc: BaseException, epoch: int | None) -> str:
    """A failure reason a person can act on, e.g. "CUDA out of memory at epoch 3"."""
    where = f" at epoch {epoch}" if epoch is not None else " before the first epoch"
    text = str(exc).lower()
    if isinstance(exc, torch.OutOfMemoryError) or "cuda out of memory" in text:
        return f"CUDA out of memory{where}"
    if "can't allocate memory" in text or isinstance(exc, MemoryError):
        return f"out of memory (host RAM){where}"
    if isinstance(exc, (NonFiniteLoss, TrialdeckError)):  # its message is the whole reason
        return f"{exc}{where}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}{': ' + first if first else ''}{where}"


def _metrics(record: EpochRecord) -> dict[str, float]:
    """The epoch's metrics a monitor can watch (val_acc or val_mae, whichever it recorded)."""
    out = {"train_loss": record.train_loss, "val_loss": record.val_loss}
    for key in ("val_acc", "val_mae"):
        value = getattr(record, key)
        if value is not None:
            out[key] = value
    return out


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


class RunTracker:
    """One run's schedule, early stopper, events, result and checkpoint (see the module docstring)."""

    def __init__(self, spec: RunSpec, callback: TrainerCallback | None, run_dir: Path | None,
                 started: float | None = None) -> None:
        self.spec = spec
        self.cb = callback or TrainerCallback()
        self.result = TrainResult(state=RunState.RUNNING)
        self.started = time.perf_counter() if started is None else started
        self.ckpt_path = Path(run_dir) / CHECKPOINT_NAME if run_dir is not None else None
        t, es = spec.train, spec.early_stopping
        self.schedule: BaseSchedule = make_schedule(spec.schedule, spec.optimizer.lr, t.epochs)
        self.stopper = EarlyStopper(es.monitor, es.resolved_mode, es.patience, es.min_delta) if es.enabled else None
        self.gen: torch.Generator | None = None
        self.first_epoch = 0
        """0-based epoch the loop starts at (after a resume, the one after the checkpoint's)."""
        self.lr = spec.optimizer.lr
        self.lr_prev: float | None = None
        self.last_metrics: dict[str, float] | None = None
        self.best_state: StateDict | None = None
        self.restored = False
        self.events: list[RunEvent] = []
        """The epoch in progress's events (told with on_epoch)."""
        self.stop: Stop | None = None
        self.done = False
        """Ended: its result is final."""
        self.last_ckpt = time.monotonic()
        self.last_poll = time.monotonic()

    # -- set-up ------------------------------------------------------------------------------

    def generator(self, device: torch.device) -> torch.Generator:
        """The run's own batch-order generator, seeded with train.seed (a resume replaces its state)."""
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(self.spec.train.seed)
        return self.gen

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
               n: int, steps: int) -> Partial | None:
        """Load the run's checkpoint, if it has one for this configuration, into the model, the
        optimiser, the schedule, the stopper and the random streams; returns where inside an
        epoch it stopped (None: at an epoch's end, or no checkpoint)."""
        path = self.ckpt_path
        if path is None or not path.exists():
            return None
        ck = read_checkpoint(path)
        if ck.config_hash != self.spec.content_hash:
            self.cb.log(f"checkpoint {path} is for another configuration; starting from scratch")
            return None
        assert self.gen is not None, "generator() comes before resume()"
        model.load_state_dict(ck.model)
        optimizer.load_state_dict(ck.optimizer)
        self.schedule.load_state_dict(ck.schedule)
        if self.stopper and ck.early_stopping:
            self.stopper.load_state_dict(ck.early_stopping)
        self.best_state = ck.best_model
        saved = ck.generator.to("cpu")
        if saved.numel() == self.gen.get_state().numel():
            self.gen.set_state(saved)
        else:  # a CUDA generator's state is 16 bytes, a CPU one's 5056: written on the other kind
            self.cb.log(f"{path} was written on another kind of device; the batch order goes on from the seed")
        torch.set_rng_state(ck.cpu_rng)
        if device.type == "cuda" and ck.cuda_rng is not None:
            torch.cuda.set_rng_state(ck.cuda_rng, device)  # dropout's masks on the GPU
        history = self.result.history = [EpochRecord.from_json(h) for h in ck.history]
        self.first_epoch = ck.epoch + 1
        self.lr_prev = history[-1].lr if history else None
        self.last_metrics = _metrics(history[-1]) if history else None
        inside = None
        where = f"after epoch {self.first_epoch}"
        if ck.partial is not None and ck.partial.perm.numel() == n:
            inside = Partial(ck.partial.step, ck.partial.perm.to(device), ck.partial.total)
            at = f"at step {inside.step} of {steps} in epoch {self.first_epoch + 1}"
            where = f"{where}, {at}" if self.first_epoch else at
        self._tell(RunEvent(EventKind.RESUMED.value, self.first_epoch, f"resumed from the checkpoint {where}"))
        return inside

    def begin(self, info: dict[str, Any], line: str) -> None:
        """Tell the callback the run starts (`info`: device, parameter and sample counts) and log `line`."""
        self.cb.on_start({**info, "start_epoch": self.first_epoch, "history": [h.to_json() for h in self.result.history]})
        self.cb.log(line)
        self.last_ckpt = self.last_poll = time.monotonic()

    # -- during training ---------------------------------------------------------------------

    def start_epoch(self, epoch: int) -> float:
        """The learning rate of 0-based `epoch` (an lr_changed event when a stepped schedule moves it)."""
        self.result.current_epoch = epoch + 1
        self.events = []
        lr = self.lr = self.schedule.lr_at(epoch, self.last_metrics)
        if self.schedule.steps and self.lr_prev is not None and lr != self.lr_prev:
            self.events.append(RunEvent(EventKind.LR_CHANGED.value, epoch + 1, f"learning rate {self.lr_prev:.6g} -> {lr:.6g}",
                                        {"from": self.lr_prev, "to": lr}))
        self.lr_prev = lr
        return lr

    @property
    def wants_steps(self) -> bool:
        return self.cb.wants_steps

    def poll_due(self) -> bool:
        """Whether `step_interval` has passed since the last poll (checked every 8th step)."""
        now = time.monotonic()
        if now - self.last_poll < self.cb.step_interval:
            return False
        self.last_poll = now
        return True

    def poll(self, epoch: int, step: int, loss: float | None) -> bool:
        """Report a throttled step loss (when the callback wants it) and ask whether to stop; True: stop now."""
        if loss is not None and self.cb.wants_steps:
            self.cb.on_step(epoch + 1, step, loss)
        self.stop = self.cb.poll()
        return self.stop is not None

    def end_epoch(self, epoch: int, train_loss: float, val_loss: float, val_acc: float | None, seconds: float,
                  weights: Weights, *, val_mae: float | None = None) -> bool:
        """Record 0-based `epoch`'s results (a classifier's val_acc, or a regression's val_mae);
        True when the run has ended (early stop, a stop the callback asked for, its last
        epoch); else write a checkpoint when one is due.
        Raises NonFiniteLoss (after its nan_loss event) on a NaN or infinite loss."""
        r, es = self.result, self.spec.early_stopping
        if not math.isfinite(train_loss) or not math.isfinite(val_loss):
            bad = train_loss if not math.isfinite(train_loss) else val_loss
            self._tell(RunEvent(EventKind.NAN_LOSS.value, epoch + 1, f"loss became {bad} at epoch {epoch + 1}"))
            raise NonFiniteLoss("NaN loss" if math.isnan(train_loss) or math.isnan(val_loss) else "infinite loss")
        record = EpochRecord(epoch + 1, train_loss, val_loss, val_acc, self.lr, seconds, val_mae)
        r.history.append(record)
        self.last_metrics = _metrics(record)
        early = False
        if self.stopper is not None:
            improved, early = self.stopper.update(epoch + 1, self.last_metrics[es.monitor])
            if improved and es.restore_best:
                self.best_state = weights.model_state(copy=True)
            if early:
                self.restored = es.restore_best and self.best_state is not None
                if self.restored and self.best_state is not None:
                    weights.restore(self.best_state)
                self.events.append(self._early_stopped(epoch))
        r.events.extend(self.events)
        stop = self.cb.on_epoch(record, self.events)
        if early:
            r.state = RunState.EARLY_STOPPED
            return True
        if stop is not None:
            self.stop = stop
            return True
        if epoch + 1 >= self.spec.train.epochs:
            return True
        every = self.spec.train.checkpoint_seconds
        if self.ckpt_path is not None and (every == 0 or time.monotonic() - self.last_ckpt >= every):
            self._save(weights)
            self.last_ckpt = time.monotonic()
        return False

    def _early_stopped(self, epoch: int) -> RunEvent:
        es, stopper = self.spec.early_stopping, self.stopper
        assert stopper is not None and stopper.best is not None
        return RunEvent(
            EventKind.EARLY_STOPPED.value, epoch + 1,
            f"{es.monitor} did not improve by more than {es.min_delta:g} for {es.patience} epochs; "
            f"best {stopper.best:.4f} at epoch {stopper.best_epoch}" + ("; restored the best weights" if self.restored else ""),
            {"best_epoch": stopper.best_epoch, "best_value": stopper.best, "patience": es.patience,
             "monitor": es.monitor, "restored": self.restored},
        )

    # -- the end -----------------------------------------------------------------------------

    def finish(self, weights: Weights, partial: Partial | None = None) -> TrainResult:
        """End the run after its loop: its final state (early stopped, the stop asked for, or
        completed), best and kept epoch, and its checkpoint (`partial`: where inside an epoch
        a stop came). An interrupted run's checkpoint is a resumable one, with its event."""
        r, stop = self.result, self.stop
        if r.state == RunState.RUNNING and stop is not None:
            r.state = stop.state
            if stop.event is not None:
                self._tell(stop.event)
        elif r.state == RunState.RUNNING:
            r.state = RunState.COMPLETED
        saves = self.ckpt_path is not None and bool(r.history or partial)
        if saves and r.state == RunState.INTERRUPTED:
            self._save(weights, partial=partial)
        if self.stopper is not None:
            r.monitor, r.best_epoch, r.best_value = self.stopper.monitor, self.stopper.best_epoch, self.stopper.best
        elif r.history:
            best = min(r.history, key=lambda h: h.val_loss)
            r.best_epoch, r.best_value = best.epoch, best.val_loss
        if self.restored and self.stopper is not None:
            r.kept_epoch = self.stopper.best_epoch
        elif partial is None and r.history:
            r.kept_epoch = r.history[-1].epoch
        if saves and r.state != RunState.INTERRUPTED:
            self._save(weights, final=True, partial=partial)
        r.seconds = time.perf_counter() - self.started
        self.done = True
        return r

    def fail(self, exc: BaseException) -> TrainResult:
        """End the run FAILED with a reason a person can act on (the traceback goes to its log)."""
        r = self.result
        self.done = True
        reason = describe_failure(exc, r.current_epoch)
        r.state, r.error, r.kept_epoch = RunState.FAILED, reason, None
        r.seconds = time.perf_counter() - self.started
        self.cb.log("".join(traceback.format_exception(exc)))
        self._tell(RunEvent(EventKind.FAILED.value, r.current_epoch, reason))
        return r

    def _tell(self, event: RunEvent) -> None:
        """An event outside an epoch's summary: into the result, and to the callback."""
        self.result.events.append(event)
        self.cb.on_event(event)

    def _save(self, weights: Weights, *, final: bool = False, partial: Partial | None = None) -> None:
        """The run's checkpoint now. Its `epoch` is the last whole one; `partial` says where in
        the next one a stop cut it short, so a resume goes on from that step in the same order."""
        assert self.ckpt_path is not None and self.gen is not None
        r, gen = self.result, self.gen
        epoch = len(r.history) - 1
        state = CheckpointState(
            config=self.spec.config(), config_hash=self.spec.content_hash, epoch=epoch,
            model=self.best_state if self.restored and self.best_state is not None else weights.model_state(copy=False),
            optimizer=weights.optimizer_state(), schedule=self.schedule.state_dict(),
            early_stopping=self.stopper.state_dict() if self.stopper else None, best_model=self.best_state,
            generator=gen.get_state(), cpu_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state(gen.device) if gen.device.type == "cuda" else None,
            history=[h.to_json() for h in r.history], final=final, partial=partial,
        )
        save_checkpoint(self.ckpt_path, state)
        r.checkpoint = str(self.ckpt_path)
        if not final:
            where = f"after epoch {epoch + 1}"
            if partial:
                where = (f"{where}, " if epoch >= 0 else "") + f"at step {partial.step} of epoch {epoch + 2}"
            self._tell(RunEvent(EventKind.CHECKPOINT.value, epoch + 1 or None, f"checkpoint written {where}",
                                {"path": str(self.ckpt_path)}))
