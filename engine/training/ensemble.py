"""Ensemble trials: train K runs that share one architecture in one process, as one vmapped model.

Trials of a grid or random study often differ only in optimiser settings, seed,
dropout rate or regularisation. For small models one such run leaves a device
mostly idle (per-step overhead dominates), so `train_ensemble` stacks the K
members' weights (one row each of a (K, P) tensor), computes every member's
loss and gradient at once with `torch.func.functional_call` under `torch.vmap`,
and applies each member's own optimiser step to its row.

Invariants:
- Member i starts from exactly the weights `train(specs[i])` starts from (same
  RNG order: manual_seed(seed), load_data, build_model), trains on its own
  split (the split depends on the seed) in its own batch order (its own seeded
  generator), and takes the step torch's SGD / Adam / AdamW / RMSprop would
  take with its own hyperparameters and its own schedule. Without dropout its
  history equals train()'s up to float rounding (batched matmuls round
  differently). Dropout masks come from another random stream than
  nn.Dropout's: same distribution, not the same masks.
- Each member is reported, stopped and recorded on its own: its callback gets
  the calls train() makes, and its run_dir the checkpoint train() writes (so
  train() can resume it). A member that ends (early stop, prune, cancel,
  interrupt, NaN loss) leaves the stack; the others go on. An error no member
  can be blamed for (out of memory, a dataset that cannot load) fails every
  member still running, each with train()'s reason text.
- What cannot join gets `ensemble_key(spec) is None`: augmentation, batch norm
  (running statistics are per-call state that does not vmap honestly),
  torch.compile. A member whose run_dir holds a checkpoint is a resume:
  `train_ensemble` refuses it and `plan_ensembles` leaves it to train().
- No host sync per step: losses accumulate on the device and are read once per
  epoch for the whole stack, except the throttled per-step report.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.training.callbacks import Stop, TrainerCallback
from trialdeck.engine.training.membership import ensemble_key
from trialdeck.engine.training.stacked_optim import StackedOptimizer
from trialdeck.engine.training.trainer import (
    CHECKPOINT_NAME,
    EVAL_BATCH,
    EarlyStopper,
    NonFiniteLoss,
    Partial,
    TrainResult,
    describe_failure,
    make_optimizer,
    resolve_device,
    write_checkpoint,
)
from trialdeck.engine.types import EpochRecord, EventKind, RunEvent, RunState

MAX_MEMBERS = 32
"""Default cap on one ensemble's size in `plan_ensembles` (memory grows with K)."""


def has_checkpoint(run_dir: Path | None) -> bool:
    return run_dir is not None and (Path(run_dir) / CHECKPOINT_NAME).exists()


def plan_ensembles(specs: Sequence[RunSpec], run_dirs: Sequence[Path | None] | None = None,
                   max_size: int = MAX_MEMBERS) -> list[list[int]]:
    """Indices of `specs` grouped into ensembles (first-seen order), at most `max_size` each.

    A group of one trains with train(): specs that cannot join, resumes (a
    checkpoint in the run_dir) and specs with no partner.
    """
    dirs = list(run_dirs) if run_dirs is not None else [None] * len(specs)
    groups: dict[Any, list[int]] = {}
    plan: list[list[int]] = []
    for i, spec in enumerate(specs):
        key = ensemble_key(spec)
        if key is None or has_checkpoint(dirs[i]):
            plan.append([i])
            continue
        group = groups.get(key)
        if group is None or len(group) >= max_size:
            group = groups[key] = []
            plan.append(group)
        group.append(i)
    return plan


class _MemberDropout(nn.Module):
    """Inverted dropout whose rate is a buffer, so each member of a functional_call stack
    has its own rate (nn.Dropout's rate is one Python float for every member). A rate of 0
    is the identity exactly: every mask entry is 1 and the scale is 1."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("p", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * (torch.rand_like(x) >= self.p) / (1 - self.p)


class _Snapshot:
    """Duck-types the `.state_dict()` that trainer.write_checkpoint calls, for one member's slice."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


@dataclass(eq=False)
class _Member:
    index: int
    spec: RunSpec
    cb: TrainerCallback
    run_dir: Path | None
    result: TrainResult
    gen: torch.Generator | None = None
    schedule: Any = None
    stopper: EarlyStopper | None = None
    best_state: dict[str, torch.Tensor] | None = None
    restored: bool = False
    lr: float = 0.0
    lr_prev: float | None = None
    last_metrics: dict[str, float] | None = None
    last_ckpt: float = 0.0
    names: list[str] = field(default_factory=list)
    """The member's own parameter names (its nn.Sequential indices), in template order."""
    events: list[RunEvent] = field(default_factory=list)
    done: bool = False
    """Ended (its result is final); set before its callbacks hear of it."""

    @property
    def ckpt_path(self) -> Path | None:
        return Path(self.run_dir) / CHECKPOINT_NAME if self.run_dir is not None else None


def train_ensemble(
    specs: Sequence[RunSpec],
    callbacks: Sequence[TrainerCallback | None] | None = None,
    *,
    run_dirs: Sequence[Path | None] | None = None,
    data_dir: Path | None = None,
    device: str | None = None,
    on_end: Callable[[int, TrainResult], None] | None = None,
) -> list[TrainResult]:
    """Train `specs` (equal, non-None `ensemble_key`s) as one ensemble; one TrainResult each.

    `on_end(i, result)` is called as soon as member i's result is final (a pruned
    member is recorded at once, not when the last member ends); an exception it
    raises is logged to that member and does not stop the others.
    Raises ValueError (before training anything) when the specs cannot train
    together or a run_dir holds a checkpoint: callers train those with train().
    """
    specs = list(specs)
    n = len(specs)
    cbs = list(callbacks) if callbacks is not None else [None] * n
    dirs = list(run_dirs) if run_dirs is not None else [None] * n
    if len(cbs) != n or len(dirs) != n:
        raise ValueError(f"{n} specs but {len(cbs)} callbacks and {len(dirs)} run_dirs")
    keys = {ensemble_key(s) for s in specs}
    if None in keys or len(keys) > 1:
        raise ValueError("these specs cannot train as one ensemble (see ensemble_key); train them with train()")
    for spec, run_dir in zip(specs, dirs):
        if has_checkpoint(run_dir):
            raise ValueError(f"{run_dir} holds a checkpoint: resume {spec.preset or 'that run'} with train()")
    members = [_Member(i, s, cb or TrainerCallback(), d, TrainResult(state=RunState.RUNNING))
               for i, (s, cb, d) in enumerate(zip(specs, cbs, dirs))]
    if not members:
        return []
    started = time.perf_counter()
    ensemble = _Ensemble(members, started, on_end)
    try:
        ensemble.setup(data_dir, device)
        ensemble.train()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes the runs' reason
        for m in members:
            if not m.done:
                ensemble.fail(m, exc)
    return [m.result for m in members]


class _Ensemble:
    """The stack: K members' parameters, optimiser state and hyperparameters, one row each.

    Parameters live in one flat (K, P) tensor (`flat`; `params` are views into it), and so
    does each optimiser state, so one update is a handful of ops whatever the layer count
    (on a GPU, kernel launches are the cost of a small model). `active` is the stack's row
    order; a member that ends is dropped from every stacked tensor at once (between steps),
    so rows always match `active`.
    """

    def __init__(self, members: list[_Member], started: float,
                 on_end: Callable[[int, TrainResult], None] | None = None) -> None:
        self.members = members
        self.on_end = on_end
        self.active = list(members)
        self.started = started
        self.flat = torch.empty(0)
        self.params: dict[str, torch.Tensor] = {}
        self.layout: list[tuple[str, torch.Size, int, int]] = []
        """(name, shape, offset, numel) of each parameter within a row of `flat`."""
        self.buffers: dict[str, torch.Tensor] = {}
        self.coeffs: dict[str, torch.Tensor] = {}
        """(K,) per-member L1/L2 coefficients ("l1:<param>", "l2:<param>") the vmapped objective takes."""
        self.flags: dict[str, bool] = {}
        """Whether any member uses each coefficient (train()'s `if a` / `if b`)."""

    # -- set-up ------------------------------------------------------------------------------

    def setup(self, data_dir: Path | None, device_name: str | None) -> None:
        # Imported here, not at module top: the dataset modules pull in scikit-learn and
        # torchvision, which only a process that trains should pay for.
        from trialdeck.engine.datasets import load_data
        from trialdeck.engine.training.models import build_model, penalty_terms
        from trialdeck.engine.training.schedules import make_schedule

        spec0 = self.members[0].spec
        device = resolve_device(device_name or spec0.train.device)
        self.device = device
        self.opt = StackedOptimizer(spec0.optimizer.name, device)
        datasets: list[Any] = []
        rows: list[int] = []
        stacks: list[list[torch.Tensor]] = []
        self.penalised: dict[str, list[tuple[float, float]]] = {}
        for m in self.members:
            t = m.spec.train
            m.result.device = str(device)
            torch.manual_seed(t.seed)  # the order train() uses, so member i starts where train() does
            data = load_data(m.spec.data, seed=t.seed, device=device, data_dir=data_dir)
            model = build_model(m.spec.model, data.shape, data.classes).to(device)
            named = list(model.named_parameters())
            m.names = [name for name, _ in named]
            stacks.append([p.detach() for _, p in named])
            slot = {id(p): j for j, (_, p) in enumerate(named)}
            for weight, a, b in penalty_terms(model, m.spec.regularization.l1, m.spec.regularization.l2):
                coeffs = self.penalised.setdefault(slot[id(weight)], [(0.0, 0.0)] * len(self.members))
                coeffs[m.index] = (a, b)
            same = next((j for j, d in enumerate(datasets) if d is data), None)
            if same is None:
                datasets.append(data)
                same = len(datasets) - 1
            rows.append(same)
            m.gen = torch.Generator(device=device)
            m.gen.manual_seed(t.seed)
            m.schedule = make_schedule(m.spec.schedule, m.spec.optimizer.lr, t.epochs)
            es = m.spec.early_stopping
            m.stopper = EarlyStopper(es.monitor, es.resolved_mode, es.patience, es.min_delta) if es.enabled else None
            del model

        self._stack_data(datasets, rows)
        self.template = self._template(datasets[0].shape, datasets[0].classes)
        offset = 0
        for (name, param), own in zip(self.template.named_parameters(), stacks[0], strict=True):
            if param.shape != own.shape:
                raise ValueError(f"parameter {name} is {tuple(param.shape)} in the template, "
                                 f"{tuple(own.shape)} in a member")
            self.layout.append((name, param.shape, offset, param.numel()))
            offset += param.numel()
        self.flat = torch.stack([torch.cat([t.reshape(-1) for t in s]) for s in stacks])
        del stacks
        self._views()
        self.penalised = {self.layout[j][0]: coeffs for j, coeffs in self.penalised.items()}
        self.n_params = offset
        precision = spec0.train.precision
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" and device.type == "cuda"
                         else contextlib.nullcontext())
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        # torch.func.grad rather than .backward() on the stack: autograd's AccumulateGrad would copy
        # every batched weight gradient into the parameter's layout (measured: 20% of a CPU step).
        self._grad = torch.vmap(torch.func.grad_and_value(self._member_objective, has_aux=True),
                                randomness="different")

    def _views(self) -> None:
        k = self.flat.shape[0]
        self.params = {name: self.flat[:, o : o + n].view(k, *shape) for name, shape, o, n in self.layout}

    def _stack_data(self, datasets: list[Any], rows: list[int]) -> None:
        """One (D, N, ...) tensor per split over the D distinct datasets (members with the same
        seed share one); `rows` maps each stack row to its dataset. Costs D copies of the data."""
        first = datasets[0]
        for d in datasets[1:]:
            if d.x_train.shape != first.x_train.shape or d.x_val.shape != first.x_val.shape:
                raise ValueError("members' data splits differ in size; train them with train()")
        self.shared = len(datasets) == 1
        if self.shared:  # views, no copy
            self.x_train, self.y_train = first.x_train.unsqueeze(0), first.y_train.unsqueeze(0)
            self.x_val, self.y_val = first.x_val.unsqueeze(0), first.y_val.unsqueeze(0)
        else:
            self.x_train = torch.stack([d.x_train for d in datasets])
            self.y_train = torch.stack([d.y_train for d in datasets])
            self.x_val = torch.stack([d.x_val for d in datasets])
            self.y_val = torch.stack([d.y_val for d in datasets])
        self.rows = torch.tensor(rows, device=self.device)

    def _template(self, shape: tuple[int, int, int], classes: int) -> nn.Sequential:
        """The members' architecture on the meta device (functional_call supplies every tensor),
        with a dropout slot wherever any member has a rate above 0. Members differ in module
        structure there (build_model leaves out a Dropout of rate 0, shifting the indices), which
        is why the stack is built by parameter order, not with stack_module_state."""
        from trialdeck.engine.training.models import build_model

        cfg = self.members[0].spec.model
        per_layer = [m.spec.model.dropout_rates for m in self.members]
        widest = [max(rates) for rates in zip(*per_layer)]
        cfg = cfg.model_copy(update={"hidden": cfg.hidden_sizes, "depth": None, "dropout": widest})
        with torch.device("meta"):
            model = build_model(cfg, shape, classes)
            slots = [i for i, mod in enumerate(model) if isinstance(mod, nn.Dropout)]
            for i in slots:
                model[i] = _MemberDropout()
        layers = [h for h, rate in enumerate(widest) if rate > 0]
        for i, h in zip(slots, layers, strict=True):
            self.buffers[f"{i}.p"] = torch.tensor([m.spec.model.dropout_rates[h] for m in self.members],
                                                  device=self.device)
        return model

    def _member_objective(self, params, buffers, x, y, coeffs):
        """One member's loss plus its L1/L2 penalty (train()'s objective), and the loss alone."""
        loss = F.cross_entropy(functional_call(self.template, (params, buffers), (x,)), y)
        total = None
        for name in self.penalised:
            # Only the terms some member uses, like penalty()'s `if a` / `if b` (0 * |w| adds nothing).
            term = None
            if self.flags[f"l1:{name}"]:
                term = coeffs[f"l1:{name}"] * params[name].abs().sum()
            if self.flags[f"l2:{name}"]:
                l2 = coeffs[f"l2:{name}"] * params[name].pow(2).sum()
                term = l2 if term is None else term + l2
            if term is not None:
                total = term if total is None else total + term
        return (loss if total is None else loss + total), loss

    def _member_eval(self, params, buffers, x, y):
        logits = functional_call(self.template, (params, buffers), (x,))
        return F.cross_entropy(logits.float(), y, reduction="sum"), (logits.argmax(1) == y).sum()

    # -- hyperparameters ---------------------------------------------------------------------

    def _sync_hyper(self) -> None:
        """Each active member's hyperparameters, in stack order: the optimiser's, and the L1/L2
        coefficients of the objective. At the start of an epoch (the learning rate moves) and
        when a member leaves."""
        self.opt.set_rows([m.lr for m in self.active], [m.spec.optimizer for m in self.active])
        self._sync_penalties()

    def _sync_penalties(self) -> None:
        columns: dict[str, list[float]] = {}
        for name, coeffs in self.penalised.items():
            columns[f"l1:{name}"] = [coeffs[m.index][0] for m in self.active]
            columns[f"l2:{name}"] = [coeffs[m.index][1] for m in self.active]
        self.flags = {name: any(v != 0 for v in values) for name, values in columns.items()}
        if columns:
            table = torch.tensor(list(columns.values()), dtype=torch.float32).to(self.device)
            self.coeffs = dict(zip(columns, table.unbind(0)))

    # -- one step ----------------------------------------------------------------------------

    def _step(self, idx: torch.Tensor, i: int) -> torch.Tensor:
        """One optimiser step for every member on its (B,) batch indices `idx[k]`; (K,) losses."""
        if self.shared:
            xb, yb = self.x_train[0][idx], self.y_train[0][idx]
        else:
            row = self.rows.unsqueeze(1)
            xb, yb = self.x_train[row, idx], self.y_train[row, idx]
        with self.autocast:
            grads, (_, losses) = self._grad(self.params, self.buffers, xb, yb, self.coeffs)
        k = self.flat.shape[0]
        g = torch.cat([grads[name].reshape(k, -1) for name, _, _, _ in self.layout], dim=1,
                      out=self.opt.scratch(self.flat, "grad"))
        self.opt.step(self.flat, g, i)
        return losses

    # -- membership --------------------------------------------------------------------------

    def _drop(self, ended: set[int]) -> None:
        """Remove the members at stack rows `ended` from every stacked tensor."""
        if not ended:
            return
        keep_rows = [r for r in range(len(self.active)) if r not in ended]
        self.active = [self.active[r] for r in keep_rows]
        if not self.active:
            return
        keep = torch.tensor(keep_rows, device=self.device)
        self.flat = self.flat.index_select(0, keep)
        self._views()
        self.buffers = {k: b.index_select(0, keep) for k, b in self.buffers.items()}
        self.rows = self.rows.index_select(0, keep)
        self.perms = self.perms.index_select(0, keep)
        self.total = self.total.index_select(0, keep)
        self.opt.keep(keep, [m.lr for m in self.active], [m.spec.optimizer for m in self.active])
        self._sync_penalties()

    def _member_model(self, row: int, m: _Member) -> dict[str, torch.Tensor]:
        return {own: self.params[name][row].clone() for own, (name, _, _, _) in zip(m.names, self.layout)}

    def _member_optimizer(self, row: int, m: _Member) -> dict[str, Any]:
        """The member's optimiser state in torch's own state_dict format (train() loads it on resume)."""
        placeholders = [torch.zeros(0) for _ in m.names]
        reference = make_optimizer(m.spec, placeholders).state_dict()
        reference["param_groups"][0]["lr"] = m.lr
        momentum = m.spec.optimizer.momentum
        # torch keeps no state for a parameter before its first step, nor for SGD without momentum.
        reference["state"] = {j: entry for j, (_, shape, offset, numel) in enumerate(self.layout)
                              if (entry := self.opt.row_state(row, offset, numel, shape, momentum))}
        return reference

    def _save(self, m: _Member, epoch: int, final: bool = False, partial: Partial | None = None) -> None:
        """train()'s checkpoint for one member, written by train()'s own writer."""
        row = self.active.index(m)
        model = m.best_state if m.restored else self._member_model(row, m)
        write_checkpoint(m.ckpt_path, m.spec, _Snapshot(model), _Snapshot(self._member_optimizer(row, m)), m.schedule,
                    m.stopper, m.best_state, m.gen, epoch, m.result, m.cb, final=final, partial=partial)

    def finish(self, m: _Member, stop: Stop | None, partial: Partial | None = None) -> None:
        """End a member still in the stack, as train() ends after its epoch loop (`partial`:
        where inside an epoch it stopped)."""
        r = m.result
        m.done = True
        if stop is not None:
            r.state = stop.state
            if stop.event is not None:
                r.events.append(stop.event)
                m.cb.on_event(stop.event)
            if stop.state == RunState.INTERRUPTED and m.ckpt_path is not None and (r.history or partial):
                self._save(m, len(r.history) - 1, partial=partial)
        elif r.state == RunState.RUNNING:
            r.state = RunState.COMPLETED
        if m.stopper is not None:
            r.best_epoch, r.best_value = m.stopper.best_epoch, m.stopper.best
        elif r.history:
            best = min(r.history, key=lambda h: h.val_loss)
            r.best_epoch, r.best_value = best.epoch, best.val_loss
        if m.ckpt_path is not None and (r.history or partial) and r.state != RunState.INTERRUPTED:
            self._save(m, len(r.history) - 1, final=True, partial=partial)
        r.seconds = time.perf_counter() - self.started
        self._ended(m)

    def _ended(self, m: _Member) -> None:
        if self.on_end is None:
            return
        try:
            self.on_end(m.index, m.result)
        except Exception:  # noqa: BLE001 - recording one member must not stop the others
            m.cb.log(traceback.format_exc())

    def fail(self, m: _Member, exc: BaseException) -> None:
        """End a member as FAILED with train()'s reason text."""
        r = m.result
        m.done = True
        reason = describe_failure(exc, r.current_epoch)
        event = RunEvent(EventKind.FAILED.value, r.current_epoch, reason)
        r.events.append(event)
        r.state, r.error = RunState.FAILED, reason
        r.seconds = time.perf_counter() - self.started
        m.cb.log("".join(traceback.format_exception(exc)))
        m.cb.on_event(event)
        self._ended(m)

    # -- the loop ----------------------------------------------------------------------------

    def train(self) -> None:
        n, bs = self.x_train.shape[1], self.members[0].spec.data.batch_size
        steps = math.ceil(n / bs)
        n_val = max(1, self.x_val.shape[1])
        size = len(self.members)
        for m in self.members:
            m.cb.on_start({"device": str(self.device), "params": self.n_params, "train_samples": n,
                           "val_samples": int(self.x_val.shape[1]), "steps_per_epoch": steps, "start_epoch": 0,
                           "history": [], "ensemble_size": size})
            m.cb.log(f"training {m.spec.preset or 'preset'} on {self.device}: {self.n_params:,} parameters, "
                     f"{n} train / {self.x_val.shape[1]} val samples (member {m.index + 1} of an ensemble of {size})")
            m.last_ckpt = time.monotonic()
        last_poll = time.monotonic()
        epoch = 0
        while self.active:
            epoch_start = time.perf_counter()
            for m in self.active:
                m.result.current_epoch = epoch + 1
                m.events = []
                m.lr = m.schedule.lr_at(epoch, m.last_metrics)
                if m.schedule.steps and m.lr_prev is not None and m.lr != m.lr_prev:
                    m.events.append(RunEvent(EventKind.LR_CHANGED.value, epoch + 1,
                                             f"learning rate {m.lr_prev:.6g} -> {m.lr:.6g}",
                                             {"from": m.lr_prev, "to": m.lr}))
                m.lr_prev = m.lr
            self._sync_hyper()
            self.opt.plan_epoch(steps)

            self.template.train()
            self.perms = torch.stack([torch.randperm(n, device=self.device, generator=m.gen) for m in self.active])
            self.total = torch.zeros(len(self.active), device=self.device)
            for i in range(steps):
                losses = self._step(self.perms[:, i * bs : (i + 1) * bs], i)
                self.total += losses
                if (i & 7) == 7:
                    now = time.monotonic()
                    if now - last_poll >= min(m.cb.step_interval for m in self.active):
                        last_poll = now
                        self._poll(epoch, i, losses)
                        if not self.active:
                            return

            val_sum, correct = self._evaluate()
            train_loss, val_loss, val_acc = torch.stack(
                [self.total / steps, val_sum, correct.to(val_sum.dtype)]).tolist()  # the epoch's one host sync
            seconds = time.perf_counter() - epoch_start
            ended: set[int] = set()
            for row, m in enumerate(self.active):
                try:
                    if self._end_epoch(m, epoch, train_loss[row], val_loss[row] / n_val, val_acc[row] / n_val,
                                       seconds):
                        ended.add(row)
                except Exception as exc:  # noqa: BLE001 - a member's callback or checkpoint fails it alone
                    if not m.done:
                        self.fail(m, exc)
                    ended.add(row)
            self._drop(ended)
            epoch += 1

    def _poll(self, epoch: int, i: int, losses: torch.Tensor) -> None:
        values = losses.tolist() if any(m.cb.wants_steps for m in self.active) else None  # .item() syncs; throttled
        ended: set[int] = set()
        for row, m in enumerate(self.active):
            try:
                if values is not None and m.cb.wants_steps:
                    m.cb.on_step(epoch + 1, i + 1, values[row])
                stop = m.cb.poll()
                if stop is not None:
                    self.finish(m, stop, Partial(i + 1, self.perms[row], float(self.total[row])))
                    ended.add(row)
            except Exception as exc:  # noqa: BLE001 - a member's callback fails it alone
                if not m.done:
                    self.fail(m, exc)
                ended.add(row)
        self._drop(ended)

    @torch.no_grad()
    def _evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member summed cross-entropy and correct count over each member's validation split."""
        self.template.eval()
        k = len(self.active)
        loss_sum = torch.zeros(k, device=self.device)
        correct = torch.zeros(k, device=self.device, dtype=torch.long)
        fn = torch.vmap(self._member_eval, in_dims=(0, 0, None, None) if self.shared else 0, randomness="different")
        for i in range(0, self.x_val.shape[1], EVAL_BATCH):
            if self.shared:
                xb, yb = self.x_val[0, i : i + EVAL_BATCH], self.y_val[0, i : i + EVAL_BATCH]
            else:
                xb, yb = self.x_val[:, i : i + EVAL_BATCH][self.rows], self.y_val[:, i : i + EVAL_BATCH][self.rows]
            with self.autocast:
                chunk_loss, chunk_correct = fn(self.params, self.buffers, xb, yb)
            loss_sum += chunk_loss
            correct += chunk_correct
        return loss_sum, correct

    def _end_epoch(self, m: _Member, epoch: int, train_loss: float, val_loss: float, val_acc: float,
                   seconds: float) -> bool:
        """train()'s end of an epoch for one member; True when the member has ended."""
        r, es = m.result, m.spec.early_stopping
        if not math.isfinite(train_loss) or not math.isfinite(val_loss):
            bad = train_loss if not math.isfinite(train_loss) else val_loss
            event = RunEvent(EventKind.NAN_LOSS.value, epoch + 1, f"loss became {bad} at epoch {epoch + 1}")
            m.cb.on_event(event)
            r.events.append(event)
            nan = math.isnan(train_loss) or math.isnan(val_loss)
            self.fail(m, NonFiniteLoss("NaN loss" if nan else "infinite loss"))
            return True
        record = EpochRecord(epoch + 1, train_loss, val_loss, val_acc, m.lr, seconds)
        r.history.append(record)
        m.last_metrics = {"train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc}
        early = False
        if m.stopper is not None:
            improved, early = m.stopper.update(epoch + 1, m.last_metrics[es.monitor])
            if improved and es.restore_best:
                m.best_state = self._member_model(self.active.index(m), m)
            if early:
                m.restored = es.restore_best and m.best_state is not None
                m.events.append(RunEvent(
                    EventKind.EARLY_STOPPED.value, epoch + 1,
                    f"{es.monitor} did not improve by more than {es.min_delta:g} for {es.patience} epochs; "
                    f"best {m.stopper.best:.4f} at epoch {m.stopper.best_epoch}"
                    + ("; restored the best weights" if m.restored else ""),
                    {"best_epoch": m.stopper.best_epoch, "best_value": m.stopper.best, "patience": es.patience,
                     "monitor": es.monitor, "restored": m.restored},
                ))
        r.events.extend(m.events)
        stop = m.cb.on_epoch(record, m.events)
        if early:
            r.state = RunState.EARLY_STOPPED
            self.finish(m, None)
            return True
        if stop is not None or epoch + 1 >= m.spec.train.epochs:
            self.finish(m, stop)
            return True
        t = m.spec.train
        due = t.checkpoint_seconds == 0 or time.monotonic() - m.last_ckpt >= t.checkpoint_seconds
        if m.ckpt_path is not None and due:
            self._save(m, epoch)
            m.last_ckpt = time.monotonic()
        return False
