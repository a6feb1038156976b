"""The typed preset model: one pydantic block per strategy, and the RunSpec.

Key names and meanings are a contract (shared/DESIGN.md "Preset files"):
people write them in TOML and pass them to `--set`. Every block forbids
unknown keys so a typo is an error with a suggestion, never silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Annotated, Any, Literal, NoReturn

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from trialdeck.engine.kinds import (
    BUILTIN_MODELS,
    METRICS,
    SAMPLERS,
    USER_DATASETS,
    Activation,
    BatchNorm,
    Dataset,
    Direction,
    FillMode,
    ModelKind,
    Optimizer,
    Precision,
    Pruner,
    Sampler,
    Schedule,
)

SINGLE_OBJECTIVE_SAMPLERS: dict[Sampler, str] = {"cmaes": "CMA-ES adapts one search distribution to one objective's ranking"}
"""Samplers that cannot take several objectives, and why."""
PRUNER_SETTINGS: dict[Pruner, tuple[str, ...]] = {
    "none": (),
    "median": ("n_startup_trials", "n_warmup_steps"),
    "hyperband": ("min_resource", "reduction_factor"),
    "successive_halving": ("min_resource", "reduction_factor"),
    "pareto_halving": ("n_startup_trials", "min_resource", "reduction_factor"),
}
"""The settings of `[tune.pruner]` each kind takes."""
RUN_FACTS = ("parameters", "seconds", "peak_memory_mb")
"""Objectives that are facts of a run rather than a recorded metric: its parameter count, its
training time (the sum of its epochs' seconds), its peak device memory (CUDA only)."""
PER_EPOCH_FACTS = ("parameters", "seconds")
"""Run facts known at every epoch (the pareto_halving pruner compares objectives per epoch)."""
FACTORY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
"""`model.factory`: "package.module:function"."""


def _check_metric(value: str) -> str:
    if value not in METRICS:
        import difflib

        hint = difflib.get_close_matches(value, METRICS, n=1)
        tip = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"{value!r} is not a recorded metric; allowed: {', '.join(METRICS)}{tip}")
    return value


METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")


def _check_metric_name(value: str) -> str:
    """A monitor or study metric names any metric a script may report; RunSpec checks it
    against METRICS for built-in runs, which record exactly those."""
    if not METRIC_NAME.match(value) or value == "epoch":
        raise ValueError(f"{value!r} is not a metric name; allowed: {', '.join(METRICS)}, or for a script run "
                         "any name it reports (letters, digits, '_', '.', '-'; not 'epoch')")
    return value


def _fail_at(loc: tuple[str | int, ...], value: Any, message: str) -> NoReturn:
    """Raise `message` as a validation error at `loc`: a model validator's own ValueError would
    point at the whole preset, not at the key a person has to fix (and at the file that set it)."""
    from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

    error = PydanticCustomError("value_error", "{message}", {"message": message})
    raise ValidationError.from_exception_data("RunSpec", [InitErrorDetails(type=error, loc=loc, input=value)])

Prob = Annotated[float, Field(ge=0.0, lt=1.0)]
Penalty = Annotated[float, Field(ge=0.0, le=1e3)]
Width = Annotated[int, Field(ge=1, le=1_000_000)]
Side = Annotated[int, Field(ge=1, le=8192)]
"""An image side in pixels."""


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Block):
    dataset: Dataset = "digits"
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    """The "larger dataset" knob: fraction of the training split used."""
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Fraction held out for validation (stratified) when the dataset has no test split we use."""
    batch_size: int = Field(64, ge=1, le=1_000_000)
    synthetic_shape: list[Width] = Field(default_factory=lambda: [1, 28, 28], min_length=1, max_length=4)
    """synthetic only: shape of one sample, channels first."""
    synthetic_classes: int = Field(10, ge=2, le=100_000)
    synthetic_size: int = Field(4096, ge=2, le=100_000_000)
    path: str | None = None
    """arrays: an .npz file (x, y, optional x_val, y_val); imagefolder: a folder of <class>/ image
    folders, or of train/ and val/ each holding them. Relative: to the folder the run is queued
    from (made absolute when the preset is resolved)."""
    image_size: Side | list[Side] | None = None
    """imagefolder: every image is resized to this (one side, or [height, width]); unset: 32."""
    channels: Literal[1, 3] | None = None
    """imagefolder: 1 (grey) or 3 (RGB); unset: 3."""
    device_budget_mb: float | None = Field(None, ge=0.0)
    """Data larger than this (float32 train + validation tensors, in MiB) streams from host memory
    through a DataLoader instead of living on the training device. Unset: a quarter of the
    device's memory (GPU memory on CUDA, RAM on the CPU). Per run, so it travels with the run."""
    workers: int | None = Field(None, ge=0, le=64)
    """Streaming only: DataLoader worker processes (0: load in the training process); unset: 2."""

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, v: int | list[int] | None) -> int | list[int] | None:
        if isinstance(v, list) and len(v) != 2:
            raise ValueError(f"give one side or [height, width], got {v}")
        return v

    @property
    def image_hw(self) -> tuple[int, int]:
        """imagefolder: (height, width) every image is resized to."""
        size = 32 if self.image_size is None else self.image_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])


def _check_args(value: Any, path: str) -> None:
    """`model.args` values reach a Python function as keyword arguments and are stored in the
    run record (JSON): TOML values only, finite numbers."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_args(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_args(item, f"{path}.{i}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path} = {value} is not a finite number")
    elif not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"{path}: a {type(value).__name__} cannot be an argument; allowed: strings, numbers, "
                         "booleans, lists and tables")


class ModelConfig(Block):
    kind: ModelKind = "mlp"
    """mlp and cnn are built by trialdeck; torchvision: `arch` from torchvision.models; python:
    your own `factory`."""
    hidden: list[Width] = Field(default_factory=lambda: [256, 256], max_length=64)
    """Width of each hidden dense layer."""
    depth: int | None = Field(None, ge=0, le=64)
    """Use only the first `depth` entries of `hidden` (and of a per-layer `dropout`); unset = all.
    Lets a search space choose the number of layers (the article's two-or-three layers)."""
    channels: list[Width] = Field(default_factory=lambda: [32, 64], max_length=16)
    """cnn only: output channels of each 3x3 conv block (conv, [bn], act, 2x2 max-pool)."""
    activation: Activation = "relu"
    batch_norm: BatchNorm = "none"
    dropout: Prob | list[Prob] = 0.0
    """One rate for every hidden layer, or one per hidden layer. Inverted dropout: kept units
    are scaled by 1/(1-p) during training, nothing is scaled at inference."""
    arch: str | None = None
    """torchvision: a classification model constructor of torchvision.models, e.g. "resnet18"."""
    weights: str | None = None
    """torchvision: a weights name ("DEFAULT", "IMAGENET1K_V1"); unset: random initialisation.
    Read from torch's cache ($TORCH_HOME/hub/checkpoints), never downloaded by a run."""
    factory: str | None = None
    """python: "package.module:function", called as function(input_shape, num_classes, **args)
    and returning a torch.nn.Module that maps (N, *input_shape) to (N, num_classes)."""
    args: dict[str, Any] | None = None
    """python: keyword arguments for the factory (a search space can sample model.args.X)."""
    path: str | None = None
    """python: the folder the factory's module is imported from; unset: the folder the run is
    queued from. Relative: to that folder (made absolute when the preset is resolved)."""

    @field_validator("args", mode="before")
    @classmethod
    def _args(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, dict):
            raise ValueError(f"must be a table of keyword arguments, like args = {{ width = 64 }}; got {v!r}")
        for key in v:
            if not isinstance(key, str) or not key.isidentifier():
                raise ValueError(f"{key!r} is not a Python keyword argument name (letters, digits and '_')")
        _check_args(v, "model.args")
        return v

    @field_validator("factory")
    @classmethod
    def _factory(cls, v: str | None) -> str | None:
        if v is not None and not FACTORY.match(v):
            raise ValueError(f"{v!r} is not of the form 'package.module:function' (a module found in the run's "
                             "folder or model.path, then the function in it)")
        return v

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
    name: Optimizer = "adam"
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
    kind: Schedule = "constant"
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
    fill_mode: FillMode = "nearest"
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
    """Any recorded metric: val_loss, val_acc, train_loss (a script run: any metric it reports)."""

    _monitor = field_validator("monitor")(classmethod(lambda cls, v: _check_metric_name(v)))
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
    precision: Precision = "fp32"
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


class ObjectiveConfig(Block):
    """One objective of `[tune] objectives`: a recorded metric or a run fact, and its direction."""

    metric: str
    direction: Direction

    _metric = field_validator("metric")(classmethod(lambda cls, v: _check_metric_name(v)))


class PrunerConfig(Block):
    """`[tune.pruner]`: a kind and its own settings; `pruner = "median"` is the kind alone.
    Settings left out keep the defaults trialdeck always used (engine/tuning/samplers.py)."""

    kind: Pruner = "median"
    n_startup_trials: int | None = Field(None, ge=0, le=100_000)
    """Trials that finish before the pruner prunes (median), or that reach a rung before it
    compares there (pareto_halving)."""
    n_warmup_steps: int | None = Field(None, ge=0, le=100_000)
    """Epochs of a trial before the median pruner looks at it."""
    min_resource: int | None = Field(None, ge=1, le=100_000)
    """Epochs to the first rung of a halving pruner."""
    reduction_factor: int | None = Field(None, ge=2, le=100)
    """A halving pruner keeps 1 in `reduction_factor` trials at each rung."""

    @model_validator(mode="after")
    def _check(self) -> PrunerConfig:
        takes = PRUNER_SETTINGS[self.kind]
        for key in ("n_startup_trials", "n_warmup_steps", "min_resource", "reduction_factor"):
            if getattr(self, key) is not None and key not in takes:
                allowed = ", ".join(takes) if takes else "no settings"
                raise ValueError(f"{key} does not apply to the {self.kind} pruner; it takes {allowed}")
        return self

    @property
    def settings(self) -> dict[str, int]:
        return {k: v for k in PRUNER_SETTINGS[self.kind] if (v := getattr(self, k)) is not None}


class TuneConfig(Block):
    sampler: Sampler = "tpe"
    pruner: PrunerConfig = PrunerConfig()
    """A kind (`pruner = "median"`) or a table with `kind` and its settings."""
    metric: str = "val_loss"
    direction: Direction = "minimize"

    _metric = field_validator("metric")(classmethod(lambda cls, v: _check_metric_name(v)))
    objectives: list[ObjectiveConfig] | None = Field(None, min_length=1, max_length=8)
    """Several objectives (a multi-objective study); unset: the one of `metric`/`direction`."""
    reduce: Literal["best", "last"] = "best"
    """The trial's value: the best epoch's metric (the article's np.amin(val_loss)) or the last."""
    trials: int = Field(50, ge=1, le=1_000_000)
    timeout: float | None = Field(None, gt=0)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    ensemble: bool = True
    """Grid and random studies: train trials that share an architecture as one vmapped
    ensemble per worker (trialdeck.engine.training.ensemble); false: one run per trial."""
    space: dict[str, SpaceEntry] = Field(default_factory=dict)

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_kind(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _first_objective(cls, data: Any) -> Any:
        """With `objectives`, `metric`/`direction` mirror the first one (what one-objective code
        and older readers of a study see); set apart, they must agree with it."""
        if isinstance(data, dict) and isinstance(data.get("objectives"), list) and data["objectives"]:
            first = data["objectives"][0]
            if isinstance(first, dict):
                data = dict(data)
                if "pruner" not in data and len(data["objectives"]) > 1:
                    # The median pruner compares one objective: several are pruned by dominance, when
                    # every one of them is known at each epoch.
                    late = any(isinstance(o, dict) and o.get("metric") in RUN_FACTS and
                               o.get("metric") not in PER_EPOCH_FACTS for o in data["objectives"])
                    data["pruner"] = "none" if late else "pareto_halving"
                for key in ("metric", "direction"):
                    if key in data and key in first and data[key] != first[key]:
                        raise ValueError(f"{key} = {data[key]!r} and objectives[0].{key} = {first[key]!r}: give "
                                         "the objectives alone (the first one is the study's metric)")
                    if key in first:
                        data[key] = first[key]
        return data

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """One objective and a pruner without settings dump as they always did (`pruner = "median"`,
        no `objectives`), so configs and content hashes of existing studies stay the same."""
        out = handler(self)
        if self.objectives is None:
            out.pop("objectives", None)
        settings = self.pruner.settings
        out["pruner"] = {"kind": self.pruner.kind, **settings} if settings else self.pruner.kind
        return out

    @property
    def objective_list(self) -> list[ObjectiveConfig]:
        """The study's objectives in order: `objectives`, or the one of `metric`/`direction`."""
        return list(self.objectives) if self.objectives else [ObjectiveConfig(metric=self.metric,
                                                                               direction=self.direction)]

    @property
    def directions(self) -> list[Direction]:
        return [o.direction for o in self.objective_list]

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objective_list]

    @property
    def multi(self) -> bool:
        return len(self.objective_list) > 1

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
        self._check_objectives()
        return self

    def _check_objectives(self) -> None:
        metrics = self.metrics
        dup = next((m for i, m in enumerate(metrics) if m in metrics[:i]), None)
        if dup is not None:
            _fail_at(("objectives",), metrics, f"{dup!r} is named twice; each objective names another metric")
        if self.multi and self.sampler in SINGLE_OBJECTIVE_SAMPLERS:
            several = ", ".join(s for s in SAMPLERS if s not in SINGLE_OBJECTIVE_SAMPLERS)
            _fail_at(("sampler",), self.sampler,
                     f"the {self.sampler} sampler takes one objective ({SINGLE_OBJECTIVE_SAMPLERS[self.sampler]}); "
                     f"with {len(metrics)} objectives use one of {several}")
        if self.multi and self.pruner.kind not in ("none", "pareto_halving"):
            _fail_at(("pruner",), self.pruner.kind,
                     f"the {self.pruner.kind} pruner compares one objective; with {len(metrics)} objectives use "
                     "\"pareto_halving\" (dominated at a rung -> pruned) or \"none\"")
        if self.pruner.kind == "pareto_halving":
            late = [m for m in metrics if m in RUN_FACTS and m not in PER_EPOCH_FACTS]
            if late:
                _fail_at(("pruner",), self.pruner.kind,
                         f"pareto_halving compares the objectives at every epoch, and {late[0]} is known only when a "
                         "run ends; use pruner \"none\" with it")


PLACEHOLDER = re.compile(r"\{params\.([A-Za-z0-9_][A-Za-z0-9_.-]*?)(:py)?\}|\{run_dir\}")
"""`{params.NAME}` in a script's command, env or resume_args (NAME may be dotted, into a table of
params); `{params.NAME:py}` spells it as Python would (True/False); `{run_dir}` is the run's own
folder (TRIALDECK_RUN_DIR)."""
RUN_DIR = "{run_dir}"
PARAM_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,99}$")
ENGINE_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
"""Variables the engine sets for a script's slot; `script.env` may not name them (nor TRIALDECK_*)."""


def lookup_param(params: dict[str, Any], name: str) -> Any:
    """The value `{params.NAME}` stands for (NAME dotted into tables); KeyError when none."""
    node: Any = params
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(name)
        node = node[part]
    return node


def format_param(value: Any, python: bool = False) -> str:
    """A param as one command-line argument: TOML spellings for booleans, the shortest
    round-tripping form for floats, JSON for lists and tables; `python`: as Python writes them
    (`True`, `[1, 'a']`), for a program that reads its arguments with `ast.literal_eval`."""
    if isinstance(value, bool):
        return str(value) if python else "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(value)
    return repr(value) if python else json.dumps(value, separators=(",", ":"))


def expand(text: str, params: dict[str, Any], run_dir: str | None = None) -> str:
    """`text` with each `{params.NAME}` replaced by its value (no shell: it stays one argument),
    and `{run_dir}` by `run_dir` (left as it is when None: a preview before the run exists)."""
    def one(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return match.group(0) if run_dir is None else run_dir
        return format_param(lookup_param(params, match.group(1)), python=bool(match.group(2)))

    return PLACEHOLDER.sub(one, text)


CAPTURE_OUTPUT = ("auto", "patterns", "off")
TENSORBOARD_INSTALL = "pip install 'trialdeck[tensorboard]'"
"""What `[script.capture] tensorboard` needs installed (refused at enqueue without it)."""
STEP_GROUPS = ("epoch", "step", "iter")
"""Named groups of a capture pattern that give the step, not a value."""


class CaptureConfig(Block):
    """Metrics read from a program as it is: its output, TensorBoard event files, a CSV log, a
    stand-in W&B (DESIGN "Metrics from a program as it is")."""

    output: Literal["auto", "patterns", "off"] = "auto"
    """auto: name/value pairs on each output line (and `patterns`); patterns: only `patterns`;
    off: none. With tensorboard, csv or wandb set, auto reads `patterns` only: those sources
    carry the metrics, and two sources would number their steps differently."""
    patterns: list[str] = Field(default_factory=list, max_length=100)
    """Regexes with named groups: epoch/step/iter give the step, every other group a value."""
    rename: dict[str, str] = Field(default_factory=dict)
    """Captured name -> recorded name (`valid_loss = "val_loss"`)."""
    tensorboard: str | None = None
    """Follow the TensorBoard event files under this folder (relative to the workdir, `{run_dir}`
    allowed); needs the extra: pip install 'trialdeck[tensorboard]'."""
    csv: str | None = None
    """Follow this CSV log as it grows (relative to the workdir, `{run_dir}` and `*` allowed)."""
    wandb: bool = False
    """Put a stand-in `wandb` module first on the program's PYTHONPATH: its log() calls are recorded."""

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for i, text in enumerate(v):
            try:
                compiled = re.compile(text)
            except re.error as exc:
                raise ValueError(f"patterns[{i}] {text!r} is not a regular expression: {exc}") from None
            names = list(compiled.groupindex)
            if not names:
                raise ValueError(f"patterns[{i}] {text!r} has no named group; name what it captures, "
                                 r"e.g. 'valid loss\s+(?P<val_loss>[\d.]+)'")
            for name in names:
                if name not in STEP_GROUPS and not METRIC_NAME.match(name):
                    raise ValueError(f"patterns[{i}]: group {name!r} is not a metric name")
        return v

    @field_validator("rename")
    @classmethod
    def _rename(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not METRIC_NAME.match(value) or value in STEP_GROUPS:
                raise ValueError(f"rename.{key} = {value!r} is not a metric name (letters, digits, '_', '.', '-'; "
                                 "not epoch, step or iter)")
        return v

    @field_validator("tensorboard", "csv")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "\0" in v):
            raise ValueError("give a path, relative to the script's workdir ({run_dir} allowed)")
        return v

    @model_validator(mode="after")
    def _check(self) -> CaptureConfig:
        if self.output == "patterns" and not self.patterns:
            raise ValueError('output = "patterns" reads only the patterns, and there are none; add patterns = '
                             r"['valid loss\s+(?P<val_loss>[\d.]+)'], or use output = \"auto\"")
        return self

    @property
    def files(self) -> bool:
        """It follows a file source (TensorBoard, CSV, W&B)."""
        return bool(self.tensorboard or self.csv or self.wandb)

    @property
    def reads_output(self) -> bool:
        """Whether the program's output is scanned at all (else it goes to the log unread)."""
        return self.output != "off" and (bool(self.patterns) or (self.output == "auto" and not self.files))

    @property
    def auto_output(self) -> bool:
        """Whether the scan uses the automatic rules (else the patterns alone)."""
        return self.output == "auto" and not self.files


class ScriptConfig(Block):
    """A user's own training program, run by the engine in a device slot (DESIGN "Script runs")."""

    command: list[str] = Field(min_length=1, max_length=10_000)
    """The program and its arguments, no shell; `{params.NAME}` and `{run_dir}` placeholders are replaced."""
    program: str | None = None
    """Where `command`'s program was found when the run was queued: a program named without a `/`
    (`python`, `torchrun`) is looked up on the PATH of the shell that queues it, not the engine's."""
    workdir: str | None = None
    """Where it runs. Relative: to the folder of the preset file that sets it (`--set`: the
    folder the run is queued from). Unset: the folder the run is queued from."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables (values may hold placeholders)."""
    resume_args: list[str] = Field(default_factory=list, max_length=1000)
    """Appended to the command when an interrupted run starts again (`["--init_from=resume"]`)."""
    grace_seconds: float = Field(10.0, ge=0.0, le=3600.0)
    """After SIGTERM (cancel, prune, early stop, engine stop), how long before SIGKILL."""
    capture: CaptureConfig = CaptureConfig()
    """Metrics read from the program as it is (its output by default)."""

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if not v[0].strip():
            raise ValueError("the program (its first element) is empty; give it and its arguments, "
                             'e.g. ["python3", "train.py", "--lr", "{params.lr}"]')
        if any("\0" in part for part in v):
            raise ValueError("an argument holds a NUL character")
        return v

    @field_validator("resume_args")
    @classmethod
    def _resume_args(cls, v: list[str]) -> list[str]:
        if any("\0" in part for part in v):
            raise ValueError("an argument holds a NUL character")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise ValueError(f"{key!r} is not an environment variable name")
            if key.startswith("TRIALDECK_") or key in ENGINE_ENV:
                raise ValueError(f"{key} is set by the engine for each run; it cannot be overridden")
        return v

    def argv(self, params: dict[str, Any], run_dir: str | None = None, resume: bool = False) -> list[str]:
        """The command to start, placeholders filled: the program found when it was queued, and
        `resume_args` on a resume."""
        argv = [expand(part, params, run_dir) for part in self.command]
        if self.program:
            argv[0] = self.program
        if resume:
            argv += [expand(part, params, run_dir) for part in self.resume_args]
        return argv


NOT_FOR_SCRIPTS = ("data", "model", "regularization", "optimizer", "schedule", "augment")
"""Sections of the built-in trainer that a script run refuses: the script has its own."""
SCRIPT_TRAIN_KEYS = ("device",)
OWN_DATA_KEYS = ("path", "image_size", "channels", "device_budget_mb", "workers")
OWN_MODEL_KEYS = ("arch", "weights", "factory", "args", "path")
"""Keys for a user's own data and models: left out of a config while unset (RunSpec._excluded)."""
"""What [train] means for a script: the slot it asks for."""


def _check_params(value: Any, path: tuple[str | int, ...]) -> None:
    """Params are TOML values that JSON can carry (TRIALDECK_PARAMS, the run record)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not PARAM_KEY.match(key):
                _fail_at((*path, key), item, f"{key!r} is not a param name; use letters, digits, '_' and '-'")
            _check_params(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_params(item, (*path, i))
    elif isinstance(value, float) and not math.isfinite(value):
        _fail_at(path, value, f"{value} is not a finite number")
    elif not isinstance(value, (str, int, float, bool)):
        _fail_at(path, str(value), f"a {type(value).__name__} cannot be a param; allowed: strings, numbers, "
                                   "booleans, lists and tables (write a date as a string)")


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
    "script": ScriptConfig,
}
TOP_LEVEL_KEYS = ("description", "extends", *SECTIONS, "params")
"""`params` is a free-form table (a script's own hyperparameters), so it is no Block."""


def _param_names(params: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in params.items():
        out.append(prefix + key)
        if isinstance(value, dict):
            out += _param_names(value, f"{prefix}{key}.")
    return out


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
    script: ScriptConfig | None = None
    """Set: a script run, which trains with its own program instead of the built-in trainer."""
    params: dict[str, Any] = Field(default_factory=dict)
    """A script's own hyperparameters (any TOML values), for `{params.NAME}` and TRIALDECK_PARAMS."""

    @model_validator(mode="after")
    def _check_cross(self) -> RunSpec:
        if self.script is not None:
            return self._check_script()
        if self.params:
            _fail_at(("params",), self.params, "[params] are a script's own hyperparameters; add a [script] table "
                                               "with the command that reads them")
        watched: list[tuple[tuple[str | int, ...], str | None, tuple[str, ...]]] = [
            (("early_stopping", "monitor"), self.early_stopping.monitor, METRICS)]
        if self.tune is not None:
            # An objective may also be a run fact (parameters, seconds, peak_memory_mb).
            objectives = self.tune.objective_list
            watched += [((("tune", "objectives", i, "metric") if self.tune.objectives else ("tune", "metric")),
                         o.metric, METRICS + RUN_FACTS) for i, o in enumerate(objectives)]
        for loc, value, allowed in watched:
            if value is not None and value not in allowed:
                import difflib

                hint = difflib.get_close_matches(value, allowed, n=1)
                tip = f"; did you mean {hint[0]!r}?" if hint else ""
                what = "a recorded metric" if allowed == METRICS else "a recorded metric or run fact"
                _fail_at(loc, value, f"{value!r} is not {what}; allowed: {', '.join(allowed)}{tip}")
        self._check_own_model_and_data()
        n_weights = len(self.model.hidden_sizes) + 1
        for name in ("l1", "l2"):
            value = getattr(self.regularization, name)
            if isinstance(value, list) and self.model.kind not in BUILTIN_MODELS:
                _fail_at(("regularization", name), value, f"one value per layer applies to kind = \"mlp\" or \"cnn\"; "
                         f"for a {self.model.kind} model give one value (it covers every weight tensor)")
            if isinstance(value, list) and len(value) != n_weights:
                raise ValueError(
                    f"regularization.{name} has {len(value)} values but the model has {n_weights} weight layers "
                    "(hidden layers then output); give one value, or one per weight layer"
                )
        self._check_space()
        return self

    def _check_own_model_and_data(self) -> None:
        """The keys of a torchvision or python model and of a user's data that go together. What
        needs the files (the .npz's arrays, the factory's module) is checked at enqueue
        (presets.inputs)."""
        m, d = self.model, self.data
        if m.kind == "torchvision" and not m.arch:
            _fail_at(("model", "arch"), None, 'kind = "torchvision" needs arch, a torchvision.models classification '
                                              'model, e.g. arch = "resnet18"')
        if m.kind == "python" and not m.factory:
            _fail_at(("model", "factory"), None, 'kind = "python" needs factory = "package.module:function", called '
                                                 "as function(input_shape, num_classes, **args)")
        for key, kinds in (("arch", ("torchvision",)), ("weights", ("torchvision",)), ("factory", ("python",)),
                           ("args", ("python",))):
            if getattr(m, key) is not None and m.kind not in kinds:
                _fail_at(("model", key), getattr(m, key), f'model.{key} applies to kind = "{kinds[0]}" only '
                                                          f'(this model is kind = "{m.kind}")')
        if d.dataset in USER_DATASETS and not d.path:
            what = "an .npz file with arrays x and y" if d.dataset == "arrays" else "a folder of <class>/ image folders"
            _fail_at(("data", "path"), None, f'dataset = "{d.dataset}" needs path, {what} (relative to the folder '
                                             "the run is queued from)")
        if d.dataset != "arrays":
            for loc, value in self._metric_uses():
                if value == "val_mae":
                    _fail_at(loc, value, "val_mae is recorded for regression only (dataset = \"arrays\" with float y); "
                                         f"{d.dataset} records val_acc")

    def _metric_uses(self) -> list[tuple[tuple[str, ...], str]]:
        """The metrics this run is asked to watch: early stopping's monitor, the plateau
        schedule's, the study's objective."""
        uses: list[tuple[tuple[str, ...], str]] = []
        if self.early_stopping.enabled:
            uses.append((("early_stopping", "monitor"), self.early_stopping.monitor))
        if self.schedule.kind == "plateau":
            uses.append((("schedule", "monitor"), self.schedule.monitor))
        if self.tune is not None:
            uses += [((("tune", "objectives", str(i), "metric") if self.tune.objectives else ("tune", "metric")), m)
                     for i, m in enumerate(self.tune.metrics)]
        return uses

    def _check_space(self) -> None:
        if self.tune is not None:
            body = self.model_dump(mode="json", by_alias=True, exclude=self._excluded("tune", "preset", "description"))
            for key in self.tune.space:
                problem = _missing_key(body, key.split("."))
                if problem:
                    raise ValueError(f"tune.space: {key!r} is not a preset key: {problem}")

    def _check_script(self) -> RunSpec:
        """A script run: no built-in trainer section, [train] only for its device, every
        placeholder naming a param."""
        # By value, not by which keys were written: `--set train.device=cpu` fills [train] with
        # its defaults, and a section equal to its defaults changes nothing anyway.
        for name in NOT_FOR_SCRIPTS:
            block = getattr(self, name)
            changed = [k for k in type(block).model_fields if getattr(block, k) != getattr(type(block)(), k)]
            if changed:
                _fail_at((name, changed[0]), getattr(block, changed[0]),
                         f"[{name}] does not apply to script runs (the script has its own); "
                         "a script preset takes [script], [params], [early_stopping], [tune] and [train] device")
        defaults = TrainConfig()
        for key in TrainConfig.model_fields:
            if key not in SCRIPT_TRAIN_KEYS and getattr(self.train, key) != getattr(defaults, key):
                _fail_at(("train", key), getattr(self.train, key),
                         f"train.{key} does not apply to script runs (the script runs its own loop); "
                         f"allowed in [train]: {', '.join(SCRIPT_TRAIN_KEYS)}")
        _check_params(self.params, ("params",))
        assert self.script is not None
        texts: list[tuple[tuple[str | int, ...], str]] = [
            (("script", "command", i), part) for i, part in enumerate(self.script.command)]
        texts += [(("script", "env", key), value) for key, value in self.script.env.items()]
        texts += [(("script", "resume_args", i), part) for i, part in enumerate(self.script.resume_args)]
        for loc, text in texts:
            for match in PLACEHOLDER.finditer(text):
                if match.group(1) is None:
                    continue  # {run_dir}
                try:
                    lookup_param(self.params, match.group(1))
                except KeyError:
                    import difflib

                    known = _param_names(self.params)
                    hint = difflib.get_close_matches(match.group(1), known, n=1)
                    has = f"params has {', '.join(known)}" if known else "there is no [params] table"
                    tip = f"; did you mean {{params.{hint[0]}}}?" if hint else ""
                    _fail_at(loc, text, f"{match.group(0)} names no param; {has}{tip}")
        self._check_space()
        return self

    def _excluded(self, *names: str) -> dict[str, Any]:
        """What a dump leaves out: `names`, and for a script run the trainer's sections (and
        [train] but its device); a built-in run's dump has no script keys, so its config and
        content hash are what they were before scripts existed."""
        out: dict[str, Any] = {name: True for name in names}
        if self.script is None:
            out.update(script=True, params=True)
            # Keys of a user's own model and data, while unset: the configs and content hashes of
            # runs that use none of them stay what they were before these keys existed.
            for section, keys in (("data", OWN_DATA_KEYS), ("model", OWN_MODEL_KEYS)):
                unset = {k: True for k in keys if getattr(getattr(self, section), k) is None}
                if unset and section not in out:
                    out[section] = unset
        else:
            out.update({name: True for name in NOT_FOR_SCRIPTS})
            out["train"] = {k: True for k in TrainConfig.model_fields if k not in SCRIPT_TRAIN_KEYS}
            assert self.script is not None
            # Keys added with [script.capture], while unset: older script runs keep their configs.
            unset = {k: True for k, default in (("program", None), ("resume_args", []), ("capture", CaptureConfig()))
                     if getattr(self.script, k) == default}
            if unset and "script" not in out:
                out["script"] = unset
        return out

    def config(self) -> dict[str, Any]:
        """The resolved configuration as plain JSON data (what records and checkpoints store)."""
        return self.model_dump(mode="json", by_alias=True, exclude=self._excluded(*(("tune",) if self.tune is None else ())))

    @property
    def content_hash(self) -> str:
        body = self.model_dump(mode="json", by_alias=True, exclude=self._excluded("preset", "description"))
        blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
