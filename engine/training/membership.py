"""Which runs train together as one ensemble (training.ensemble): the one place that decides it.

The engine's queue (`queue_groups`), its workers (`split_group`), the study
driver (`group_id`) and the ensemble trainer (`ensemble_key`, `has_checkpoint`)
all ask here. Light (no torch), so the engine and the driver pay nothing for it.

Invariants: runs with equal keys may train together, at most `max_size` to a
group, grouped in first-seen (queue) order; a run whose key is None trains
alone with train(): one that cannot join (augmentation, batch norm,
torch.compile, a user's own model or data) or one that resumes from a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from trialdeck.engine.kinds import BUILTIN_MODELS, USER_DATASETS
from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.workspace import CHECKPOINT_NAME

MAX_MEMBERS = 32
"""Default cap on one ensemble's size in `plan_ensembles` (memory grows with K)."""

T = TypeVar("T")


def ensemble_key(spec: RunSpec) -> tuple[Any, ...] | None:
    """Specs with equal keys can train as one ensemble; None: this spec trains alone.

    Equal: the data block (dataset, fractions, batch size), the architecture
    (kind, hidden sizes, channels, activation), the optimiser's name (the state
    it keeps), the device and precision. Free per member: lr, momentum,
    nesterov, weight_decay, betas, l1, l2, dropout rates, seed, epochs, the
    schedule and early stopping (host-side objects, one per member).
    """
    m, t = spec.model, spec.train
    if spec.script is not None:  # a script run is its own program in its own process
        return None
    # A user's own model (torchvision, a python factory) or data (arrays may be a regression,
    # either may be larger than the device): the ensemble trainer stacks built-in models over
    # device tensors of class labels, so these train alone, as does data given a device budget.
    if m.kind not in BUILTIN_MODELS or spec.data.dataset in USER_DATASETS or spec.data.device_budget_mb is not None:
        return None
    if spec.augment.active or m.batch_norm != "none" or t.compile:
        return None
    arch = (m.kind, tuple(m.hidden_sizes), tuple(m.channels) if m.kind == "cnn" else (), m.activation)
    data = json.dumps(spec.data.model_dump(mode="json"), sort_keys=True)
    return ("ensemble/1", data, arch, spec.optimizer.name, t.device, t.precision)


def group_id(study: str, spec: RunSpec) -> str | None:
    """The `ensemble` field of a trial's run record: queued runs with equal values may train
    as one ensemble (a short, JSON-safe form of `ensemble_key`); None: this trial trains alone."""
    key = ensemble_key(spec)
    if key is None:
        return None
    return f"{study}:" + hashlib.sha1(repr(key).encode()).hexdigest()[:12]


def has_checkpoint(run_dir: Path | str | None) -> bool:
    """A run with a checkpoint resumes from it, which only train() does."""
    return run_dir is not None and (Path(run_dir) / CHECKPOINT_NAME).exists()


def member_key(spec: RunSpec, run_dir: Path | str | None) -> tuple[Any, ...] | None:
    """The key this run would train under as an ensemble member now; None: it trains alone."""
    return None if has_checkpoint(run_dir) else ensemble_key(spec)


def plan(keys: Sequence[Hashable | None], max_size: int) -> list[list[int]]:
    """Indices grouped by equal keys, in first-seen order, at most `max_size` to a group (a
    full group starts another); each None key is a group of its own."""
    groups: dict[Hashable, list[int]] = {}
    out: list[list[int]] = []
    for i, key in enumerate(keys):
        if key is None:
            out.append([i])
            continue
        group = groups.get(key)
        if group is None or len(group) >= max_size:
            group = groups[key] = []
            out.append(group)
        group.append(i)
    return out


def plan_ensembles(specs: Sequence[RunSpec], run_dirs: Sequence[Path | None] | None = None,
                   max_size: int = MAX_MEMBERS) -> list[list[int]]:
    """Indices of `specs` grouped into ensembles by `plan`; a group of one trains with train()."""
    dirs = list(run_dirs) if run_dirs is not None else [None] * len(specs)
    return plan([member_key(s, d) for s, d in zip(specs, dirs, strict=True)], max_size)


Record = TypeVar("Record", bound=Mapping[str, Any])


def queue_groups(queued: Sequence[Record], max_size: int,
                 checkpoint_path: Callable[[str], Path]) -> list[list[Record]]:
    """The engine's queue (records in dispatch order) as what each dispatch takes: a run alone,
    or trials with equal `ensemble` fields (`group_id`), none resuming a checkpoint."""
    def key(run: Mapping[str, Any]) -> str | None:
        # A run never started has no checkpoint: no file to look for.
        resumes = bool(run.get("attempts")) and checkpoint_path(run["id"]).exists()
        return None if resumes else run.get("ensemble") or None

    return [[queued[i] for i in group] for group in plan([key(r) for r in queued], max_size)]


def split_group(keys: Sequence[T | None]) -> tuple[list[int], list[int]]:
    """The runs the engine sent as one ensemble, as (members, alone): members share the first
    non-None key; the rest (keys differ, or None: cannot join or resume now) train alone.
    A lone member is no ensemble: it trains alone too."""
    first = next((k for k in keys if k is not None), None)
    members = [i for i, k in enumerate(keys) if k is not None and k == first]
    if len(members) < 2:
        return [], list(range(len(keys)))
    return members, [i for i in range(len(keys)) if i not in members]
