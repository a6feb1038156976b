"""Build the network a preset describes: an MLP, a small CNN, a torchvision model or your own.

Layer order of the built-in kinds follows the preset exactly (the article's
Dense, BatchNormalization, Activation is `batch_norm = "before_activation"`).
`kind = "torchvision"` is any classification constructor of torchvision.models
by name (`arch`), with `num_classes` from the data; `kind = "python"` is a
user's factory (training.usercode). The L1/L2 penalties cover every weight
tensor (ndim > 1) of any model, in parameter order: for the built-in kinds,
conv blocks, hidden dense layers, then the output layer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trialdeck.engine.errors import PresetError, TrialdeckError
from trialdeck.engine.kinds import Activation
from trialdeck.engine.presets.schema import ModelConfig

ACTIVATIONS: dict[Activation, type[nn.Module]] = {
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


class WeightsUnavailable(TrialdeckError):
    """A torchvision weights file is not in torch's cache (a run never downloads one)."""


def build(cfg: ModelConfig, shape: tuple[int, ...], classes: int) -> tuple[nn.Module, str | None]:
    """The model for one sample of `shape` with `classes` outputs (classes, or regression
    targets), and the code hash of a user's factory (None for the other kinds)."""
    if cfg.kind == "python":
        from trialdeck.engine.training.usercode import build_from_factory

        return build_from_factory(cfg, shape, classes)
    if cfg.kind == "torchvision":
        return torchvision_model(cfg, shape, classes), None
    return sequential_model(cfg, shape, classes), None


def build_model(cfg: ModelConfig, shape: tuple[int, ...], classes: int) -> nn.Module:
    """The model of any kind (see `build`, which also gives a python factory's code hash)."""
    return build(cfg, shape, classes)[0]


def sequential_model(cfg: ModelConfig, shape: tuple[int, ...], classes: int) -> nn.Sequential:
    """An mlp or cnn: shape is one sample's (C, H, W) (any shape for an MLP); the model returns
    logits of size `classes`."""
    layers: list[nn.Module] = []
    if cfg.kind == "cnn":
        if len(shape) != 3:
            raise PresetError(f'model.kind = "cnn" needs images (C, H, W); the data\'s samples have shape {tuple(shape)}; '
                              'use kind = "mlp", or your own model')
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


_AUX_HEADS = ("googlenet", "inception_v3")
"""Models that return auxiliary outputs in training unless asked not to."""


def torchvision_model(cfg: ModelConfig, shape: tuple[int, ...], classes: int) -> nn.Module:
    """torchvision.models' `arch` for `classes` outputs: random weights, or `weights` from torch's
    cache with the classifier replaced when the data has another number of classes. Grey
    images (1 channel) are repeated to the 3 channels these models take."""
    # Deferred: torchvision costs seconds to import and only this kind needs it.
    import torchvision.models as tvm

    arch = str(cfg.arch)
    if arch not in tvm.list_models(module=tvm):
        import difflib

        hint = difflib.get_close_matches(arch, tvm.list_models(module=tvm), n=1)
        raise PresetError(f"model.arch = {arch!r} is not a torchvision.models classification model"
                          + (f"; did you mean {hint[0]!r}?" if hint else ""))
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise PresetError(f"model.arch = {arch!r} takes images of 1 or 3 channels (C, H, W); the data's samples "
                          f"have shape {tuple(shape)}")
    extra = {"aux_logits": False} if arch in _AUX_HEADS else {}
    if cfg.weights:
        weights = _cached_weights(tvm, arch, cfg.weights)
        model = tvm.get_model(arch, weights=weights, **extra)
        if len(weights.meta.get("categories") or ()) != classes:
            _replace_head(model, classes, arch)
    else:
        if arch in _AUX_HEADS:
            extra["init_weights"] = True  # torchvision warns when left unset
        model = tvm.get_model(arch, weights=None, num_classes=classes, **extra)
    if shape[0] == 1:
        model.register_forward_pre_hook(_grey_to_rgb)
    return model


def _grey_to_rgb(module: nn.Module, args: tuple) -> tuple:
    return (args[0].expand(-1, 3, *args[0].shape[2:]), *args[1:])


def _cached_weights(tvm: Any, arch: str, name: str) -> Any:  # torchvision ships no types
    """The weights enum member `name` of `arch` (a member name, "DEFAULT", or "Enum.MEMBER"),
    whose file must already be in torch's hub cache."""
    enum = tvm.get_model_weights(arch)
    member = name.split(".")[-1]
    try:
        weights = enum.DEFAULT if member == "DEFAULT" else enum[member]
    except KeyError:
        allowed = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise PresetError(f"model.weights = {name!r}: {arch} has no such weights; allowed: {allowed}") from None
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url.split("?")[0]).name
    if not file.is_file():
        raise WeightsUnavailable(
            f"model.weights = {name!r}: {arch}'s {weights.name} weights are not cached: {file} is missing "
            f"(a run never downloads weights; TORCH_HOME sets the folder); download {weights.url} to that file")
    return weights


def _replace_head(model: nn.Module, classes: int, arch: str) -> None:
    """A new last Linear layer for `classes` outputs (fine-tuning pretrained weights)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name, module
    if last is None:
        raise PresetError(f"model.weights: {arch} has no Linear classifier to replace for {classes} classes; "
                          "train it without weights")
    name, old = last
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(old.in_features, classes, bias=old.bias is not None))


def dense_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def penalty_terms(model: nn.Module, l1: float | list[float], l2: float | list[float]) -> list[tuple[torch.Tensor, float, float]]:
    """(weight, l1, l2) per penalised tensor. A single value covers every weight tensor of the
    model (every parameter with ndim > 1: Linear and conv kernels, embeddings; never a bias or
    a norm's scale), whatever built it; a list gives one value per dense layer of a built-in
    model (hidden layers, then output), matching Keras' per-Dense kernel_regularizer; conv
    layers then take no penalty."""
    if isinstance(l1, list) or isinstance(l2, list):
        weights = [m.weight for m in dense_layers(model)]
    else:
        weights = [p for p in model.parameters() if p.ndim > 1]
    n = len(weights)
    l1s = l1 if isinstance(l1, list) else [l1] * n
    l2s = l2 if isinstance(l2, list) else [l2] * n
    return [(w, a, b) for w, a, b in zip(weights, l1s, l2s, strict=True) if a or b]


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
