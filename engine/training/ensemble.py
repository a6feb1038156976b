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
- Which runs may train together is `trialdeck.engine.training.membership`'s
  to say (the engine's queue, its workers and the tuning driver ask it too):
  not augmentation, batch norm (running statistics are per-call state that
  does not vmap honestly) or torch.compile, nor a run whose run_dir holds a
  checkpoint (a resume, which train() does): `train_ensemble` refuses those.
- Each member's bookkeeping (schedule, early stopping, events, checkpoint,
  final state, failure) is its own `RunTracker`, the one train() uses.
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
from trialdeck.engine.training.callbacks import TrainerCallback
from trialdeck.engine.training.checkpoint import Partial
from trialdeck.engine.training.membership import MAX_MEMBERS, ensemble_key, has_checkpoint, plan_ensembles
from trialdeck.engine.training.optimizers import make_optimizer
from trialdeck.engine.training.stacked_optim import StackedOptimizer
from trialdeck.engine.training.tracker import RunTracker, StateDict, TrainResult
from trialdeck.engine.training.trainer import EVAL_BATCH, resolve_device

__all__ = ["MAX_MEMBERS", "ensemble_key", "plan_ensembles", "train_ensemble"]

Tensors = dict[str, torch.Tensor]


class _MemberDropout(nn.Module):
    """Inverted dropout whose rate is a buffer, so each member of a functional_call stack
    has its own rate (nn.Dropout's rate is one Python float for every member). A rate of 0
    is the identity exactly: every mask entry is 1 and the scale is 1."""

    p: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("p", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * (torch.rand_like(x) >= self.p) / (1 - self.p)


@dataclass(eq=False)
class _Member:
    index: int
    tracker: RunTracker
    """The member's own run: schedule, early stopping, events, result, checkpoint."""
    names: list[str] = field(default_factory=list)
    """The member's own parameter names (its nn.Sequential indices), in template order."""

    @property
    def spec(self) -> RunSpec:
        return self.tracker.spec


class _MemberWeights:
    """One member's row of the stack, as its tracker sees it (train()'s state_dict formats)."""

    def __init__(self, ensemble: _Ensemble, member: _Member) -> None:
        self.ensemble, self.member = ensemble, member

    def model_state(self, copy: bool) -> StateDict:
        # Always copies: a view into the stack would keep (and save) every member's weights.
        return self.ensemble.member_model(self.member)

    def optimizer_state(self) -> dict[str, Any]:
        return self.ensemble.member_optimizer(self.member)

    def restore(self, state: StateDict) -> None:
        pass  # an early-stopped member leaves the stack; its checkpoint holds the best weights


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
    started = time.perf_counter()
    members = [_Member(i, RunTracker(s, cb, d, started)) for i, (s, cb, d) in enumerate(zip(specs, cbs, dirs))]
    if not members:
        return []
    ensemble = _Ensemble(members, on_end)
    try:
        ensemble.setup(data_dir, device)
        ensemble.train()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes the runs' reason
        for m in members:
            if not m.tracker.done:
                ensemble.fail(m, exc)
    return [m.tracker.result for m in members]


class _Ensemble:
    """The stack: K members' parameters, optimiser state and hyperparameters, one row each.

    Parameters live in one flat (K, P) tensor (`flat`; `params` are views into it), and so
    does each optimiser state, so one update is a handful of ops whatever the layer count
    (on a GPU, kernel launches are the cost of a small model). `active` is the stack's row
    order; a member that ends is dropped from every stacked tensor at once (between steps),
    so rows always match `active`.
    """

    def __init__(self, members: list[_Member], on_end: Callable[[int, TrainResult], None] | None = None) -> None:
        self.members = members
        self.on_end = on_end
        self.active = list(members)
        self.flat = torch.empty(0)
        self.params: dict[str, torch.Tensor] = {}
        self.layout: list[tuple[str, torch.Size, int, int]] = []
        """(name, shape, offset, numel) of each parameter within a row of `flat`."""
        self.buffers: dict[str, torch.Tensor] = {}
        self.coeffs: dict[str, torch.Tensor] = {}
        """(K,) per-member L1/L2 coefficients ("l1:<param>", "l2:<param>") the vmapped objective takes."""
        self.flags: dict[str, bool] = {}
        """Whether any member uses each coefficient (train()'s `if a` / `if b`)."""
        self.penalised: dict[str, list[tuple[float, float]]] = {}
        """Each penalised parameter's (l1, l2) per member, by member index."""
        self.perms = torch.empty(0, dtype=torch.long)
        """(K, N) this epoch's batch order of each member in the stack."""
        self.total = torch.empty(0)
        """(K,) this epoch's summed training loss of each member in the stack."""

    # -- set-up ------------------------------------------------------------------------------

    def setup(self, data_dir: Path | None, device_name: str | None) -> None:
        # Imported here, not at module top: the dataset modules pull in scikit-learn and
        # torchvision, which only a process that trains should pay for.
        from trialdeck.engine.datasets import load_data
        from trialdeck.engine.training.models import build_model, penalty_terms

        spec0 = self.members[0].spec
        device = resolve_device(device_name or spec0.train.device)
        self.device = device
        self.opt = StackedOptimizer(spec0.optimizer.name, device)
        datasets: list[Any] = []
        rows: list[int] = []
        stacks: list[list[torch.Tensor]] = []
        by_slot: dict[int, list[tuple[float, float]]] = {}  # parameter index -> (l1, l2) per member
        for m in self.members:
            t = m.spec.train
            m.tracker.result.device = str(device)
            torch.manual_seed(t.seed)  # the order train() uses, so member i starts where train() does
            data = load_data(m.spec.data, seed=t.seed, device=device, data_dir=data_dir)
            model = build_model(m.spec.model, data.shape, data.classes).to(device)
            named = list(model.named_parameters())
            m.names = [name for name, _ in named]
            stacks.append([p.detach() for _, p in named])
            slot = {id(p): j for j, (_, p) in enumerate(named)}
            for weight, a, b in penalty_terms(model, m.spec.regularization.l1, m.spec.regularization.l2):
                coeffs = by_slot.setdefault(slot[id(weight)], [(0.0, 0.0)] * len(self.members))
                coeffs[m.index] = (a, b)
            same = next((j for j, d in enumerate(datasets) if d is data), None)
            if same is None:
                datasets.append(data)
                same = len(datasets) - 1
            rows.append(same)
            m.tracker.generator(device)
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
        self.penalised = {self.layout[j][0]: coeffs for j, coeffs in by_slot.items()}
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
        from trialdeck.engine.training.models import sequential_model

        cfg = self.members[0].spec.model
        per_layer = [m.spec.model.dropout_rates for m in self.members]
        widest = [max(rates) for rates in zip(*per_layer)]
        cfg = cfg.model_copy(update={"hidden": cfg.hidden_sizes, "depth": None, "dropout": widest})
        with torch.device("meta"):
            model = sequential_model(cfg, shape, classes)
            slots = [i for i, mod in enumerate(model) if isinstance(mod, nn.Dropout)]
            for i in slots:
                model[i] = _MemberDropout()
        layers = [h for h, rate in enumerate(widest) if rate > 0]
        for i, h in zip(slots, layers, strict=True):
            self.buffers[f"{i}.p"] = torch.tensor([m.spec.model.dropout_rates[h] for m in self.members],
                                                  device=self.device)
        return model

    def _member_objective(self, params: Tensors, buffers: Tensors, x: torch.Tensor, y: torch.Tensor,
                          coeffs: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
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

    def _member_eval(self, params: Tensors, buffers: Tensors, x: torch.Tensor,
                     y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = functional_call(self.template, (params, buffers), (x,))
        return F.cross_entropy(logits.float(), y, reduction="sum"), (logits.argmax(1) == y).sum()

    # -- hyperparameters ---------------------------------------------------------------------

    def _sync_hyper(self) -> None:
        """Each active member's hyperparameters, in stack order: the optimiser's, and the L1/L2
        coefficients of the objective. At the start of an epoch (the learning rate moves) and
        when a member leaves."""
        self.opt.set_rows([m.tracker.lr for m in self.active], [m.spec.optimizer for m in self.active])
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
        self.opt.keep(keep, [m.tracker.lr for m in self.active], [m.spec.optimizer for m in self.active])
        self._sync_penalties()

    def member_model(self, m: _Member) -> StateDict:
        row = self.active.index(m)
        return {own: self.params[name][row].clone() for own, (name, _, _, _) in zip(m.names, self.layout)}

    def member_optimizer(self, m: _Member) -> dict[str, Any]:
        """The member's optimiser state in torch's own state_dict format (train() loads it on resume)."""
        row = self.active.index(m)
        placeholders = [torch.zeros(0) for _ in m.names]
        reference = make_optimizer(m.spec, placeholders).state_dict()
        reference["param_groups"][0]["lr"] = m.tracker.lr
        momentum = m.spec.optimizer.momentum
        # torch keeps no state for a parameter before its first step, nor for SGD without momentum.
        reference["state"] = {j: entry for j, (_, shape, offset, numel) in enumerate(self.layout)
                              if (entry := self.opt.row_state(row, offset, numel, shape, momentum))}
        return reference

    def finish(self, m: _Member, partial: Partial | None = None) -> None:
        """End a member still in the stack, as train() ends after its loop (`partial`: where
        inside an epoch a stop came)."""
        m.tracker.finish(_MemberWeights(self, m), partial)
        self._ended(m)

    def fail(self, m: _Member, exc: BaseException) -> None:
        """End a member as FAILED with train()'s reason text."""
        m.tracker.fail(exc)
        self._ended(m)

    def _ended(self, m: _Member) -> None:
        if self.on_end is None:
            return
        try:
            self.on_end(m.index, m.tracker.result)
        except Exception:  # noqa: BLE001 - recording one member must not stop the others
            m.tracker.cb.log(traceback.format_exc())

    # -- the loop ----------------------------------------------------------------------------

    def train(self) -> None:
        n, bs = self.x_train.shape[1], self.members[0].spec.data.batch_size
        steps = math.ceil(n / bs)
        n_val = max(1, self.x_val.shape[1])
        size = len(self.members)
        for m in self.members:
            m.tracker.begin({"device": str(self.device), "params": self.n_params, "train_samples": n,
                             "val_samples": int(self.x_val.shape[1]), "steps_per_epoch": steps, "ensemble_size": size,
                             "data_path": "device"},  # an ensemble stacks its members' data on the device
                            f"training {m.spec.preset or 'preset'} on {self.device}: {self.n_params:,} parameters, "
                            f"{n} train / {self.x_val.shape[1]} val samples (member {m.index + 1} of an ensemble of {size})")
        last_poll = time.monotonic()
        epoch = 0
        while self.active:
            epoch_start = time.perf_counter()
            for m in self.active:
                m.tracker.start_epoch(epoch)
            self._sync_hyper()
            self.opt.plan_epoch(steps)

            self.template.train()
            self.perms = torch.stack([torch.randperm(n, device=self.device, generator=m.tracker.gen)
                                      for m in self.active])
            self.total = torch.zeros(len(self.active), device=self.device)
            for i in range(steps):
                losses = self._step(self.perms[:, i * bs : (i + 1) * bs], i)
                self.total += losses
                if (i & 7) == 7:
                    now = time.monotonic()
                    if now - last_poll >= min(m.tracker.cb.step_interval for m in self.active):
                        last_poll = now
                        self._poll(epoch, i, losses)
                        if not self.active:
                            return

            val_sum, correct = self._evaluate()
            train_loss, val_loss, val_acc = torch.stack(
                [self.total / steps, val_sum, correct.to(val_sum.dtype)]).tolist()  # the epoch's one host sync
            seconds = time.perf_counter() - epoch_start
            self._each(self._end_epoch, epoch, train_loss, [v / n_val for v in val_loss], [a / n_val for a in val_acc],
                       seconds)
            epoch += 1

    def _each(self, fn: Callable[..., bool], *args: Any) -> None:
        """`fn(row, member, *args)` for each member in the stack; those it ends (True), or whose
        call raises (which fails that member alone), leave the stack after the last call."""
        ended: set[int] = set()
        for row, m in enumerate(self.active):
            try:
                if fn(row, m, *args):
                    ended.add(row)
            except Exception as exc:  # noqa: BLE001 - a member's callback or checkpoint fails it alone
                if not m.tracker.done:
                    self.fail(m, exc)
                ended.add(row)
        self._drop(ended)

    def _end_epoch(self, row: int, m: _Member, epoch: int, train_loss: list[float], val_loss: list[float],
                   val_acc: list[float], seconds: float) -> bool:
        if not m.tracker.end_epoch(epoch, train_loss[row], val_loss[row], val_acc[row], seconds, _MemberWeights(self, m)):
            return False
        self.finish(m)
        return True

    def _poll(self, epoch: int, i: int, losses: torch.Tensor) -> None:
        # .tolist() syncs the device: only at this throttled report, and only when someone listens.
        values = losses.tolist() if any(m.tracker.wants_steps for m in self.active) else None
        self._each(self._poll_member, epoch, i, values)

    def _poll_member(self, row: int, m: _Member, epoch: int, i: int, values: list[float] | None) -> bool:
        if not m.tracker.poll(epoch, i + 1, values[row] if values is not None else None):
            return False
        self.finish(m, Partial(i + 1, self.perms[row], float(self.total[row])))
        return True

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
