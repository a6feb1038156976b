"""K optimisers as one: torch's SGD, Adam, AdamW and RMSprop steps on the rows of a (K, P) tensor.

`trialdeck.engine.training.ensemble` keeps each member's parameters flattened into one row of a
(K, P) tensor; `StackedOptimizer` applies each member's own step, with its own
learning rate, momentum, betas and weight decay, to its row. Each update is
torch's single-tensor implementation with (K, 1) hyperparameter columns, in
place on the fresh gradient and one scratch buffer: on a CPU, a fresh (K, P)
temporary per op costs more than the op (large allocations go back to the OS
and fault in again). A member whose value is 0 gets exactly torch's result for
0 (x * 0 adds nothing), so torch's `if weight_decay != 0` branches become "if
any member's is".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trialdeck.engine.presets.schema import OptimizerConfig

RMSPROP_ALPHA, RMSPROP_EPS, ADAM_EPS = 0.99, 1e-8, 1e-8
"""torch's defaults, which make_optimizer leaves in place."""


class StackedOptimizer:
    """One optimiser kind (every member's `optimizer.name` is the same) over K rows.

    `state` holds torch's state tensors (exp_avg, square_avg, momentum_buffer, ...), each
    (K, P) like the parameters; `t` counts steps (the same for every row).
    """

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.adam = name in ("adam", "adamw")
        self.device = device
        self.state: dict[str, torch.Tensor] = {}
        self.t = 0
        self.col: dict[str, torch.Tensor] = {}
        """(K, 1) per-row hyperparameters, broadcast against the (K, P) parameters."""
        self.flags: dict[str, bool] = {}
        """Whether any row's value is non-zero (torch's `if weight_decay != 0` and the like)."""
        self._work: dict[str, torch.Tensor] = {}
        self._rows: list[tuple[float, OptimizerConfig]] = []

    def set_rows(self, lrs: Sequence[float], opts: Sequence[OptimizerConfig]) -> None:
        """Each row's learning rate and settings, in stack order: one host-to-device copy, at the
        start of an epoch (the learning rate moves) and when a member leaves."""
        self._rows = list(zip(lrs, opts, strict=True))
        columns: dict[str, list[float]] = {
            "momentum": [o.momentum for o in opts],
            "nesterov": [float(o.nesterov) for o in opts],
            "wd": [o.weight_decay for o in opts],
            "b2": [o.betas[1] for o in opts],
            # AdamW's decoupled decay factor, computed in double like torch's `1 - lr * weight_decay`.
            "decay": [1 - lr * o.weight_decay for lr, o in self._rows],
            "one_minus_b1": [1 - o.betas[0] for o in opts],
            "one_minus_b2": [1 - o.betas[1] for o in opts],
            "neg_lr": [-lr for lr in lrs],
        }
        table = torch.tensor(list(columns.values()), dtype=torch.float32).to(self.device)
        self.col = {name: values.unsqueeze(1) for name, values in zip(columns, table.unbind(0))}
        self.flags = {name: any(v != 0 for v in values) for name, values in columns.items()}
        self.mixed_momentum = self.flags["momentum"] and not all(o.momentum > 0 for o in opts)

    def plan_epoch(self, steps: int) -> None:
        """Adam's per-row bias corrections for the next `steps` steps, in double on the host like
        torch's single-tensor Adam (`lr / (1 - beta1**t)`, `(1 - beta2**t) ** 0.5`): one copy per
        epoch. Call after `set_rows`; step `i` of the epoch then uses column `i`."""
        if not self.adam:
            return
        neg_size, bc2 = [], []
        for lr, o in self._rows:
            b1, b2 = o.betas
            ts = range(self.t + 1, self.t + steps + 1)
            neg_size.append([-(lr / (1 - b1**t)) for t in ts])
            bc2.append([(1 - b2**t) ** 0.5 for t in ts])
        table = torch.tensor([neg_size, bc2], dtype=torch.float32).to(self.device)
        self.neg_step_size, self.bc2_sqrt = table[0], table[1]

    def keep(self, rows: torch.Tensor, lrs: Sequence[float], opts: Sequence[OptimizerConfig]) -> None:
        """Keep only `rows` (the members still in the stack), whose settings are now `lrs`, `opts`."""
        self.state = {k: t.index_select(0, rows) for k, t in self.state.items()}
        self.set_rows(lrs, opts)
        if self.adam and hasattr(self, "neg_step_size"):
            self.neg_step_size = self.neg_step_size.index_select(0, rows)
            self.bc2_sqrt = self.bc2_sqrt.index_select(0, rows)

    def scratch(self, like: torch.Tensor, name: str = "scratch") -> torch.Tensor:
        """A persistent work buffer shaped like `like`, reallocated only when a member leaves."""
        buffer = self._work.get(name)
        if buffer is None or buffer.shape != like.shape:
            buffer = self._work[name] = torch.empty_like(like)
        return buffer

    def step(self, p: torch.Tensor, g: torch.Tensor, i: int) -> None:
        """Update the (K, P) parameters `p` in place from the (K, P) gradient `g` (which it
        overwrites); `i` is the step's index within the epoch (for Adam's tables)."""
        self.t += 1
        if self.name == "sgd":
            self._sgd(p, g)
        elif self.adam:
            self._adam(p, g, i, decoupled=self.name == "adamw")
        else:
            self._rmsprop(p, g)

    def row_state(self, row: int, offset: int, numel: int, shape: torch.Size, momentum: float) -> dict[str, Any]:
        """One parameter's state for one row, as torch's optimiser keeps it (for a state_dict)."""
        keys = [k for k in self.state if not (k == "momentum_buffer" and momentum == 0)]
        entry: dict[str, Any] = {k: self.state[k][row, offset : offset + numel].view(shape).clone() for k in keys}
        if entry and self.name != "sgd":
            entry["step"] = torch.tensor(float(self.t))
        return entry

    def _sgd(self, p: torch.Tensor, g: torch.Tensor) -> None:
        c, st = self.col, self.state
        if self.flags["wd"]:
            g.addcmul_(p, c["wd"])
        if self.flags["momentum"]:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = g.clone()
            else:
                buf.mul_(c["momentum"]).add_(g)
            if self.flags["nesterov"]:
                g = torch.where(c["nesterov"] > 0, g.addcmul_(buf, c["momentum"]), buf)
            else:
                g = buf
        p.addcmul_(g, c["neg_lr"])

    def _adam(self, p: torch.Tensor, g: torch.Tensor, i: int, decoupled: bool) -> None:
        c, st = self.col, self.state
        if not st:
            st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        if self.flags["wd"]:
            if decoupled:
                p.mul_(c["decay"])
            else:
                g.addcmul_(p, c["wd"])
        exp_avg, exp_avg_sq, tmp = st["exp_avg"], st["exp_avg_sq"], self.scratch(p)
        exp_avg.lerp_(g, c["one_minus_b1"])
        exp_avg_sq.mul_(c["b2"]).addcmul_(torch.mul(g, c["one_minus_b2"], out=tmp), g)
        denom = torch.sqrt(exp_avg_sq, out=tmp).div_(self.bc2_sqrt[:, i : i + 1]).add_(ADAM_EPS)
        p.addcdiv_(torch.mul(exp_avg, self.neg_step_size[:, i : i + 1], out=g), denom)

    def _rmsprop(self, p: torch.Tensor, g: torch.Tensor) -> None:
        c, st = self.col, self.state
        if not st:
            st["square_avg"] = torch.zeros_like(p)
            if self.flags["momentum"]:
                st["momentum_buffer"] = torch.zeros_like(p)
        if self.flags["wd"]:
            g.addcmul_(p, c["wd"])
        square_avg = st["square_avg"]
        square_avg.mul_(RMSPROP_ALPHA).addcmul_(g, g, value=1 - RMSPROP_ALPHA)
        avg = torch.sqrt(square_avg, out=self.scratch(p)).add_(RMSPROP_EPS)
        if not self.flags["momentum"]:
            p.addcdiv_(g.mul_(c["neg_lr"]), avg)
            return
        buf = st["momentum_buffer"]
        buf.mul_(c["momentum"]).addcdiv_(g, avg)
        if self.mixed_momentum:  # torch takes another path for momentum 0; keep its rounding
            p.copy_(torch.where(c["momentum"] > 0, p.addcmul(buf, c["neg_lr"]), p.addcdiv(g * c["neg_lr"], avg)))
        else:
            p.addcmul_(buf, c["neg_lr"])
