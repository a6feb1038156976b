"""The names of every pluggable kind a preset can pick, each named once.

A dataset, model kind, activation, optimizer, schedule, sampler or pruner is
named here and nowhere else: the preset schema's `Literal` types are these
aliases, and each implementation registry (datasets.DATASET_REGISTRY,
training.models.ACTIVATIONS, training.optimizers.OPTIMIZERS,
training.schedules.SCHEDULES, tuning.samplers.SAMPLERS/PRUNERS) is keyed by
them; tests/test_contracts.py holds every registry to its names. Adding a kind
is one line here and its implementation there.

Torch-free and pydantic-free (the bottom import layer): the CLI's completion,
the TUI's composer and the schema read these without loading a trainer.
"""

from __future__ import annotations

from typing import Literal, get_args

Dataset = Literal["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "synthetic", "arrays", "imagefolder"]
UserDataset = Literal["arrays", "imagefolder"]
"""Datasets read from a user's own files (`data.path`)."""
ModelKind = Literal["mlp", "cnn", "torchvision", "python"]
BuiltinModel = Literal["mlp", "cnn"]
"""Models trialdeck builds itself: hidden, channels, activation, batch_norm and dropout apply to these."""
Activation = Literal["relu", "leaky_relu", "gelu", "elu", "silu", "tanh", "sigmoid"]
BatchNorm = Literal["none", "before_activation", "after_activation"]
Optimizer = Literal["sgd", "adam", "adamw", "rmsprop"]
Schedule = Literal["constant", "step", "exponential", "cosine", "plateau"]
FillMode = Literal["nearest", "constant", "reflect"]
Precision = Literal["fp32", "bf16"]
Sampler = Literal["grid", "random", "tpe", "cmaes", "qmc", "nsga2", "nsga3"]
"""`tune.sampler`: the Optuna samplers a preset names (tuning/samplers.py builds each)."""
Pruner = Literal["none", "median", "hyperband", "successive_halving", "pareto_halving"]
"""`tune.pruner` (or its `kind`); pareto_halving is trialdeck's own multi-objective successive halving."""
Direction = Literal["minimize", "maximize"]
Metric = Literal["val_loss", "val_acc", "train_loss", "val_mae"]
"""The per-epoch metrics a built-in run records; monitors and tuning objectives pick one. A
classifier records val_acc, a regression (`dataset = "arrays"` with float targets) val_mae instead."""

DATASETS: tuple[Dataset, ...] = get_args(Dataset)
USER_DATASETS: tuple[UserDataset, ...] = get_args(UserDataset)
MODEL_KINDS: tuple[ModelKind, ...] = get_args(ModelKind)
BUILTIN_MODELS: tuple[BuiltinModel, ...] = get_args(BuiltinModel)
ACTIVATIONS: tuple[Activation, ...] = get_args(Activation)
OPTIMIZERS: tuple[Optimizer, ...] = get_args(Optimizer)
SCHEDULES: tuple[Schedule, ...] = get_args(Schedule)
SAMPLERS: tuple[Sampler, ...] = get_args(Sampler)
PRUNERS: tuple[Pruner, ...] = get_args(Pruner)
METRICS: tuple[Metric, ...] = get_args(Metric)

REGISTRIES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS, "model kind": MODEL_KINDS, "activation": ACTIVATIONS, "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES, "sampler": SAMPLERS, "pruner": PRUNERS,
}
"""Each kind's names by what a person calls the kind (tests hold every implementation to these)."""
