"""The optimiser a preset's `optimizer.name` names, by registry: one constructor per name.

Every constructor leaves torch's defaults for what a preset does not set (Adam's
eps, RMSprop's alpha), which `stacked_optim` relies on to take the same steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from trialdeck.engine.kinds import Optimizer
from trialdeck.engine.presets.schema import OptimizerConfig, RunSpec

Params = Iterable[torch.Tensor]
OptimizerFactory = Callable[[OptimizerConfig, Params], torch.optim.Optimizer]


def _sgd(o: OptimizerConfig, params: Params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)


def _adam(o: OptimizerConfig, params: Params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def _adamw(o: OptimizerConfig, params: Params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def _rmsprop(o: OptimizerConfig, params: Params) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


OPTIMIZERS: dict[Optimizer, OptimizerFactory] = {"sgd": _sgd, "adam": _adam, "adamw": _adamw, "rmsprop": _rmsprop}


def make_optimizer(spec: RunSpec, params: Params) -> torch.optim.Optimizer:
    return OPTIMIZERS[spec.optimizer.name](spec.optimizer, params)
