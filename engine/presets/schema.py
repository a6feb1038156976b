"""The typed preset model: one pydantic block per strategy, and the RunSpec.

Key names and meanings are a contract (shared/DESIGN.md "Preset files"):
people write them in TOML and pass them to `--set`. Every block forbids
unknown keys so a typo is an error with a suggestion, never silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "synthetic")
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "elu", "silu", "tanh", "sigmoid")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "exponential", "cosine", "plateau")
SAMPLERS = ("grid", "random", "tpe", "cmaes", "qmc")
PRUNERS = ("none", "median", "hyperband", "successive_halving")
METRICS = ("val_loss", "val_acc", "train_loss")
"""The per-epoch metrics a run records; monitors and tuning objectives pick one."""


def _check_metric(value: str) -> str:
    if value not in METRICS:
        import difflib

        hint = difflib.get_close_matches(value, METRICS, n=1)
        tip = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"{value!r} is not a recorded metric; allowed: {', '.join(METRICS)}{tip}")
    return value

Prob = Annotated[float, Field(ge=0.0, lt=1.0)]
Penalty = Annotated[float, Field(ge=0.0, le=1e3)]
Width = Annotated[int, Field(ge=1, le=1_000_000)]


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Block):
    dataset: Literal["digits", "mnist", "fashion_mnist", "cifar10", "synthetic"] = "digits"
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    """The "larger dataset" knob: fraction of the training split used."""
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Fraction held out for validation (stratified) when the dataset has no test split we use."""
    batch_size: int = Field(64, ge=1, le=1_000_000)
    synthetic_shape: list[Width] = Field(default_factory=lambda: [1, 28, 28], min_length=1, max_length=4)
    """synthetic only: shape of one sample, channels first."""
    synthetic_classes: int = Field(10, ge=2, le=100_000)
    synthetic_size: int = Field(4096, ge=2, le=100_000_000)


class ModelConfig(Block):
    kind: Literal["mlp", "cnn"] = "mlp"
    hidden: list[Width] = Field(default_factory=lambda: [256, 256], max_length=64)
    """Width of each hidden dense layer."""
    depth: int | None = Field(None, ge=0, le=64)
    """Use only the first `depth` entries of `hidden` (and of a per-layer `dropout`); unset = all.
    Lets a search space choose the number of layers (the article's two-or-three layers)."""
    channels: list[Width] = Field(default_factory=lambda: [32, 64], max_length=16)
    """cnn only: output channels of each 3x3 conv block (conv, [bn], act, 2x2 max-pool)."""
    activation: Literal["relu", "leaky_relu", "gelu", "elu", "silu", "tanh", "sigmoid"] = "relu"
    batch_norm: Literal["none", "before_activation", "after_activation"] = "none"
    dropout: Prob | list[Prob] = 0.0
    """One rate for every hidden layer, or one per hidden layer. Inverted dropout: kept units
    are scaled by 1/(1-p) during training, nothing is scaled at inference."""

    @model_validator(mode="after")
    def _check_layers(self) -> ModelConfig:
        if self.depth is not None and self.depth > len(self.hidden):
            raise ValueError(f"depth {self.depth} is more than the {len(self.hidden)} entries of hidden")
        if isinstance(self.dropout, list) and len(self.dropout) != len(self.hidden):
            raise ValueError(
                f"dropout has {len(self.dropout)} rates but hidden has {len(self.hidden)} layers; "
                "give one rate, or one per hidden layer"
            )
        return self

    @property
    def hidden_sizes(self) -> list[int]:
        return list(self.hidden[: self.depth] if self.depth is not None else self.hidden)

    @property
    def dropout_rates(self) -> list[float]:
        n = len(self.hidden_sizes)
        if isinstance(self.dropout, list):
            return list(self.dropout[:n])
        return [float(self.dropout)] * n


class RegularizationConfig(Block):
    l1: Penalty | list[Penalty] = 0.0
    """L1 penalty added to the loss: l1 * sum(|w|) over each layer's weights (not biases),
    like Keras' kernel_regularizer=l1(...). One value for all layers, or one per weight layer
    (hidden layers, then the output layer)."""
    l2: Penalty | list[Penalty] = 0.0
    """L2 penalty added to the loss: l2 * sum(w**2), Keras semantics. For decoupled weight
    decay instead, use optimizer.weight_decay (with optimizer.name = "adamw" it is decoupled)."""


class OptimizerConfig(Block):
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0.0, le=100.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    """sgd and rmsprop."""
    nesterov: bool = False
    """sgd only; needs momentum > 0."""
    weight_decay: float = Field(0.0, ge=0.0, le=10.0)
    """Passed to the torch optimizer: decoupled for adamw, added to the gradient for the others."""
    betas: tuple[float, float] = (0.9, 0.999)

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ValueError("nesterov needs name = \"sgd\" and momentum > 0")
        for b in self.betas:
            if not 0.0 <= b < 1.0:
                raise ValueError(f"betas must each be in [0, 1), got {list(self.betas)}")
        return self


class ScheduleConfig(Block):
    kind: Literal["constant", "step", "exponential", "cosine", "plateau"] = "constant"
    drop: float = Field(0.5, gt=0.0, le=1.0)
    """step: lr = lr0 * drop ** floor((1 + epoch) / epochs_drop), epoch counted from 0."""
    epochs_drop: float = Field(10.0, gt=0.0, le=1e6)
    gamma: float = Field(0.95, gt=0.0, le=1.0)
    """exponential: lr = lr0 * gamma ** epoch."""
    t_max: int | None = Field(None, ge=1, le=10_000_000)
    """cosine: period in epochs (default: train.epochs)."""
    min_lr: float = Field(0.0, ge=0.0)
    """cosine and plateau: the floor."""
    factor: float = Field(0.1, gt=0.0, lt=1.0)
    """plateau: multiply lr by this after `patience` epochs without improvement."""
    patience: int = Field(3, ge=0, le=1_000_000)
    monitor: str = "val_loss"
    """plateau: the metric watched (any history field)."""

    _monitor = field_validator("monitor")(classmethod(lambda cls, v: _check_metric(v)))
    threshold: float = Field(1e-4, ge=0.0)


class AugmentConfig(Block):
    """The article's ImageDataGenerator knobs, with Keras' meanings, applied batched on
    the training device with fresh random parameters per sample."""

    rotation: float = Field(0.0, ge=0.0, le=180.0)
    """Degrees: each image turns by a uniform angle in [-rotation, rotation]."""
    width_shift: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction of the width: shift by a uniform amount in [-w, w] * width."""
    height_shift: float = Field(0.0, ge=0.0, lt=1.0)
    shear: float = Field(0.0, ge=0.0, le=89.0)
    """Shear angle in degrees, uniform in [-shear, shear] (Keras' shear_range is in degrees,
    so the article's 0.2 is a very slight shear)."""
    zoom: float = Field(0.0, ge=0.0, lt=1.0)
    """Zoom factor drawn uniformly in [1 - zoom, 1 + zoom], independently for x and y."""
    horizontal_flip: bool = False
    """Mirror left-right with probability 0.5."""
    fill_mode: Literal["nearest", "constant", "reflect"] = "nearest"
    cval: float = 0.0
    """constant: the fill value, in raw pixel units (0 = black)."""

    @property
    def active(self) -> bool:
        return bool(
            self.rotation or self.width_shift or self.height_shift or self.shear or self.zoom or self.horizontal_flip
        )


class EarlyStoppingConfig(Block):
    enabled: bool = False
    monitor: str = "val_loss"
    """Any recorded metric: val_loss, val_acc, train_loss."""

    _monitor = field_validator("monitor")(classmethod(lambda cls, v: _check_metric(v)))
    mode: Literal["auto", "min", "max"] = "auto"
    """auto: max for accuracies, min otherwise."""
    patience: int = Field(5, ge=0, le=1_000_000)
    min_delta: float = Field(0.0, ge=0.0)
    restore_best: bool = True

    @property
    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "max" if "acc" in self.monitor else "min"


class TrainConfig(Block):
    epochs: int = Field(20, ge=1, le=1_000_000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: str = "auto"
    """auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocast; used on CUDA only."""
    compile: bool = False
    """torch.compile the model: worth it for long runs only."""
    checkpoint_seconds: float = Field(60.0, ge=0.0)
    """Write a resumable checkpoint when this long has passed since the last one (0: every
    epoch), and always at the end."""

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "mps"):
            return v
        if v.startswith("cuda:") and v[5:].isdigit():
            return v
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {v!r}")


Scalar = bool | int | float | str
Choice = Scalar | list[Any]


class SpaceEntry(Block):
    """One dimension of a search space: exactly one of float, int or choices."""

    float_: list[float] | None = Field(None, alias="float", min_length=2, max_length=2)
    int_: list[int] | None = Field(None, alias="int", min_length=2, max_length=2)
    choices: list[Choice] | None = Field(None, min_length=1)
    log: bool = False
    step: float | None = Field(None, gt=0)
    when: dict[str, Choice] | None = None
    """Conditional entry: sampled only when every named space key has the given value
    (or one of the values, when a list is given)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> SpaceEntry:
        kinds = [k for k, v in (("float", self.float_), ("int", self.int_), ("choices", self.choices)) if v is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of float = [low, high], int = [low, high] or choices = [...]")
        bounds = self.float_ if self.float_ is not None else self.int_
        if bounds is not None:
            low, high = bounds
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError(f"bounds must be finite, got {bounds}")
            if low > high:
                raise ValueError(f"low {low} is greater than high {high}")
            if self.log and low <= 0:
                raise ValueError(f"log scale needs low > 0, got {low}")
            if self.log and self.step is not None:
                raise ValueError("log and step cannot be combined")
        elif self.log or self.step is not None:
            raise ValueError("log and step apply to float and int entries only")
        return self

    @property
    def kind(self) -> str:
        return "float" if self.float_ is not None else "int" if self.int_ is not None else "choices"


class TuneConfig(Block):
    sampler: Literal["grid", "random", "tpe", "cmaes", "qmc"] = "tpe"
    pruner: Literal["none", "median", "hyperband", "successive_halving"] = "median"
    metric: str = "val_loss"
    direction: Literal["minimize", "maximize"] = "minimize"

    _metric = field_validator("metric")(classmethod(lambda cls, v: _check_metric(v)))
    reduce: Literal["best", "last"] = "best"
    """The trial's value: the best epoch's metric (the article's np.amin(val_loss)) or the last."""
    trials: int = Field(50, ge=1, le=1_000_000)
    timeout: float | None = Field(None, gt=0)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    ensemble: bool = True
    """Grid and random studies: train trials that share an architecture as one vmapped
    ensemble per worker (trialdeck.engine.training.ensemble); false: one run per trial."""
    space: dict[str, SpaceEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        if not self.space:
            raise ValueError("space is empty; give at least one key to search over")
        for key, entry in self.space.items():
            for cond in entry.when or {}:
                if cond not in self.space:
                    raise ValueError(f"space.{key}: when names {cond!r}, which is not a key of the space")
                if cond == key:
                    raise ValueError(f"space.{key}: an entry cannot depend on itself")
        if self.sampler == "grid":
            bad = [k for k, e in self.space.items() if e.kind != "choices" and not (e.kind == "int" and not e.log)]
            if bad:
                kind = self.space[bad[0]].kind
                raise ValueError(f"grid sampler needs choices (or plain int ranges); {bad[0]!r} is a {kind} range")
        return self


SECTIONS: dict[str, type[Block]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "regularization": RegularizationConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "augment": AugmentConfig,
    "early_stopping": EarlyStoppingConfig,
    "train": TrainConfig,
    "tune": TuneConfig,
}
TOP_LEVEL_KEYS = ("description", "extends", *SECTIONS)


def _missing_key(body: dict[str, Any], parts: list[str]) -> str | None:
    """Why a dotted search-space key does not name a preset value (None when it does)."""
    import difflib

    node: Any = body
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the preset"
        if isinstance(node, dict):
            if part not in node:
                hint = difflib.get_close_matches(part, list(node), n=1)
                return f"{where} has no {part!r}" + (f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {', '.join(node)}")
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return f"{where} is a list of {len(node)}; {part!r} is not an index into it"
            node = node[int(part)]
        else:
            return f"{where} is a single value, not a list; write it as a list to search its elements"
    return None


class RunSpec(Block):
    """A fully resolved, frozen run configuration: what the trainer needs and nothing else
    to look up. Its `content_hash` identifies the configuration (not the run)."""

    preset: str = ""
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    regularization: RegularizationConfig = RegularizationConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: AugmentConfig = AugmentConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig | None = None

    @model_validator(mode="after")
    def _check_cross(self) -> RunSpec:
        n_weights = len(self.model.hidden_sizes) + 1
        for name in ("l1", "l2"):
            value = getattr(self.regularization, name)
            if isinstance(value, list) and len(value) != n_weights:
                raise ValueError(
                    f"regularization.{name} has {len(value)} values but the model has {n_weights} weight layers "
                    "(hidden layers then output); give one value, or one per weight layer"
                )
        if self.tune is not None:
            body = self.model_dump(mode="json", by_alias=True, exclude={"tune", "preset", "description"})
            for key in self.tune.space:
                problem = _missing_key(body, key.split("."))
                if problem:
                    raise ValueError(f"tune.space: {key!r} is not a preset key: {problem}")
        return self

    def config(self) -> dict[str, Any]:
        """The resolved configuration as plain JSON data (what records and checkpoints store)."""
        return self.model_dump(mode="json", by_alias=True, exclude={"tune"} if self.tune is None else set())

    @property
    def content_hash(self) -> str:
        body = self.model_dump(mode="json", by_alias=True, exclude={"preset", "description"})
        blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
