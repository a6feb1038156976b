"""Build the network a preset describes: an MLP or a small CNN.

Layer order follows the preset exactly (the article's Dense, BatchNormalization,
Activation is `batch_norm = "before_activation"`). `weight_layers(model)` lists
the Linear/Conv layers whose weights the L1/L2 penalties cover, in order:
conv blocks, hidden dense layers, then the output layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trialdeck.engine.presets.schema import ModelConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def _block(layer: nn.Module, width: int, cfg: ModelConfig, norm: type[nn.Module]) -> list[nn.Module]:
    act = ACTIVATIONS[cfg.activation]()
    if cfg.batch_norm == "before_activation":
        return [layer, norm(width), act]
    if cfg.batch_norm == "after_activation":
        return [layer, act, norm(width)]
    return [layer, act]


def build_model(cfg: ModelConfig, shape: tuple[int, ...], classes: int) -> nn.Sequential:
    """shape is one sample's (C, H, W); the model returns logits of size `classes`."""
    layers: list[nn.Module] = []
    if cfg.kind == "cnn":
        channels, height, width = shape
        for out in cfg.channels:
            layers += _block(nn.Conv2d(channels, out, 3, padding=1), out, cfg, nn.BatchNorm2d)
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out
        features = channels * height * width
    else:
        features = math.prod(shape)
    layers.append(nn.Flatten())
    for width_, rate in zip(cfg.hidden_sizes, cfg.dropout_rates, strict=True):
        layers += _block(nn.Linear(features, width_), width_, cfg, nn.BatchNorm1d)
        if rate > 0:
            layers.append(nn.Dropout(rate))
        features = width_
    layers.append(nn.Linear(features, classes))
    return nn.Sequential(*layers)


def weight_layers(model: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def dense_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def penalty_terms(model: nn.Module, l1: float | list[float], l2: float | list[float]) -> list[tuple[torch.Tensor, float, float]]:
    """(weight, l1, l2) per penalised layer. A single value covers every weight layer; a list
    gives one value per dense layer (hidden layers, then output), matching Keras' per-Dense
    kernel_regularizer; conv layers then take no penalty."""
    layers: list[nn.Linear | nn.Conv2d]
    if isinstance(l1, list) or isinstance(l2, list):
        layers = list(dense_layers(model))
    else:
        layers = weight_layers(model)
    n = len(layers)
    l1s = l1 if isinstance(l1, list) else [l1] * n
    l2s = l2 if isinstance(l2, list) else [l2] * n
    return [(m.weight, a, b) for m, a, b in zip(layers, l1s, l2s, strict=True) if a or b]


def penalty(terms: list[tuple[torch.Tensor, float, float]]) -> torch.Tensor | None:
    """sum(l1 * |w|) + sum(l2 * w^2) over the penalised weights (biases are never penalised)."""
    total: torch.Tensor | None = None
    for weight, a, b in terms:
        term = a * weight.abs().sum() if a else None
        if b:
            l2 = b * weight.pow(2).sum()
            term = l2 if term is None else term + l2
        if term is not None:  # penalty_terms keeps only layers with a or b
            total = term if total is None else total + term
    return total
