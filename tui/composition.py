"""Preset composition for the composer screen, without Textual.

One job: turn "these parents, these key=value overrides" into a validated
RunSpec or one plain error line, exactly as the CLI would (`presets new
--from A --from B --set k=v` and `run PRESET --set k=v`): parents composed
with `trialdeck.engine.presets.compose`, deep-merged left to right like
`write_preset`, overrides applied with `apply_set`, validated with
`validate`; a stored run configuration with overrides as `runs rerun RUN
--set k=v` (`check_config`). Which keys a later parent overrides is said as
`presets new` says it (`parent_overrides`). Composed parents are cached so
validating on every keystroke reads no file.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trialdeck.engine.errors import PresetError, TrialdeckError
from trialdeck.engine.presets import compose, list_presets
from trialdeck.engine.presets.authoring import ParentOverride, config_diff, flatten, parent_overrides
from trialdeck.engine.presets.loader import Composed, apply_set, read_toml, resolve_workdir, validate
from trialdeck.engine.presets.schema import RunSpec

BLOCK_GROUPS = ("reg", "sched", "aug", "es")
"""Preset groups that hold building blocks (one strategy each) rather than whole runs."""


@dataclass(frozen=True)
class Composition:
    """Parents composed left to right, then `sets` ("key=value", as `--set`)."""

    parents: tuple[str, ...]
    sets: tuple[str, ...] = ()
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or " + ".join(self.parents)


@dataclass(frozen=True)
class Check:
    """The outcome of validating a composition."""

    spec: RunSpec | None
    error: str | None = None
    bad_set: int | None = None
    """Index in `sets` of the override the error is about (None: not one override)."""

    @property
    def ok(self) -> bool:
        return self.spec is not None


def merge(dst: dict[str, Any], src: dict[str, Any], prefix: tuple[str, ...] = ()) -> None:
    """Deep merge like the loader's: tables key by key, anything else replaces;
    a search-space entry (`tune.space."key"`) is replaced whole."""
    for key, value in src.items():
        path = (*prefix, key)
        whole = path[:2] == ("tune", "space") and len(path) == 3
        if isinstance(value, dict) and isinstance(dst.get(key), dict) and not whole:
            merge(dst[key], value, path)
        else:
            dst[key] = copy.deepcopy(value)


def dotted_keys() -> list[str]:
    """Every settable key (`train.epochs`, ...), for the override inputs' suggestions."""
    body = RunSpec().model_dump(mode="json", by_alias=True, exclude={"tune", "preset", "description"})
    return sorted(flatten(body))


def value_choices(key: str) -> list[str]:
    """The values the composer offers for `key`, as TOML (`--set` takes them as typed): a fixed
    choice's options (`model.kind`: "mlp", "cnn", "torchvision", "python"; `data.dataset`...),
    and torchvision's classification models for `model.arch`; [] for a free value."""
    import typing

    from trialdeck.engine.presets.inputs import torchvision_archs
    from trialdeck.engine.presets.schema import SECTIONS

    section, _, name = key.strip().partition(".")
    if key.strip() == "model.arch":
        return [f'"{a}"' for a in torchvision_archs()]
    block = SECTIONS.get(section)
    field = block.model_fields.get(name) if block is not None and section != "tune" else None
    if field is None:
        return []
    options: list[Any] = []
    for part in (field.annotation, *typing.get_args(field.annotation)):
        if typing.get_origin(part) is typing.Literal:
            options += typing.get_args(part)
    if field.annotation is bool or bool in typing.get_args(field.annotation):
        options += [True, False]
    return [("true" if o else "false") if isinstance(o, bool) else f'"{o}"' if isinstance(o, str) else str(o)
            for o in options]


class PresetLibrary:
    """The presets under some roots, composed on demand and cached."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self._composed: dict[str, Composed | PresetError] = {}
        self.presets: list[tuple[str, Path]] = []
        self.version = 0
        """Counts reloads, so a screen that was away can tell its list is stale."""
        self.reload()

    def reload(self) -> None:
        self.presets = list_presets(self.roots)
        self._composed.clear()
        self.version += 1

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.presets]

    @property
    def blocks(self) -> list[str]:
        return [n for n in self.names if n.split("/", 1)[0] in BLOCK_GROUPS]

    @property
    def bases(self) -> list[str]:
        return [n for n in self.names if n.split("/", 1)[0] not in BLOCK_GROUPS]

    def composed(self, name: str) -> Composed:
        hit = self._composed.get(name)
        if hit is None:
            try:
                hit = compose(name, self.roots)
            except PresetError as exc:
                hit = exc
            self._composed[name] = hit
        if isinstance(hit, PresetError):
            raise hit
        return hit

    def _base(self, comp: Composition) -> Composed:
        if len(comp.parents) == 1:
            one = self.composed(comp.parents[0])
            out = Composed(copy.deepcopy(one.data), dict(one.origin), list(one.chain))
        else:
            out = Composed()
            for parent in comp.parents:
                sub = self.composed(parent)
                merge(out.data, sub.data)
                out.origin.update(sub.origin)
                out.chain.extend(c for c in sub.chain if c not in out.chain)
        out.data["preset"] = comp.label
        if comp.name or len(comp.parents) > 1:
            # What `presets new NAME --from ...` writes when given no description.
            out.data["description"] = f"{comp.name or 'composed'}: " + " + ".join(comp.parents)
        return out

    def check(self, comp: Composition, *, inputs: bool = True) -> Check:
        """Validate without raising: the spec, or the first error and which override caused it
        (with `inputs`, also what enqueue would say of the files the run names)."""
        if not comp.parents:
            return Check(None, "pick a base preset to compose on")
        try:
            composed = self._base(comp)
        except TrialdeckError as exc:
            return Check(None, exc.message)
        return _check_sets(composed, comp.sets, inputs=inputs)

    def resolve(self, comp: Composition) -> RunSpec:
        result = self.check(comp)
        if result.spec is None:
            raise PresetError(result.error or "invalid composition")
        return result.spec

    def parents_of(self, name: str) -> list[str]:
        path = dict(self.presets).get(name)
        if path is None:
            return []
        parents = read_toml(path).get("extends", [])
        return [parents] if isinstance(parents, str) else [p for p in parents if isinstance(p, str)]

    def tuning(self) -> list[tuple[str, RunSpec]]:
        """The valid presets with a [tune] block (their own or a parent's): what a study starts from."""
        out = []
        for name in self.names:
            try:
                wanted = "tune" in self.composed(name).data
            except TrialdeckError:
                continue
            # Not its own files: a study whose .npz has gone is listed, and starting it says why.
            spec = self.check(Composition((name,)), inputs=False).spec if wanted else None
            if spec is not None and spec.tune is not None:
                out.append((name, spec))
        return out

    def overrides(self, parents: tuple[str, ...] | list[str]) -> list[ParentOverride]:
        """Keys a later parent changes from an earlier one's value (as `presets new` warns);
        none when a parent does not compose (its error is shown elsewhere)."""
        try:
            return parent_overrides([(p, self.composed(p).data) for p in parents])
        except TrialdeckError:
            return []

    def diff(self, name: str) -> tuple[list[str], list[tuple[str, Any, Any]]]:
        """The preset's parents and each resolved key whose value differs from theirs
        (schema defaults when it extends nothing): (key, parents' value, its value)."""
        spec = self.resolve(Composition((name,)))
        parents = self.parents_of(name)
        base = self.resolve(Composition(tuple(parents))) if parents else RunSpec()
        return parents, config_diff(base.config(), spec.config(), skip={"preset", "description"})


def _check_sets(composed: Composed, sets: tuple[str, ...], *, inputs: bool = True) -> Check:
    """Apply `sets` one by one, then validate: the spec, or the first error and its override
    (with `inputs`, also what enqueue would say of the files the run names)."""
    for i, item in enumerate(sets):
        key, _, value = item.partition("=")
        if not value.strip():
            return Check(None, f"--set {key.strip()}: give a value (TOML: 5, 0.1, \"adam\", true, [64, 64])", i)
        try:
            apply_set(composed, [item])
        except TrialdeckError as exc:
            return Check(None, exc.message, i)
    try:
        resolve_workdir(composed)  # as `run` does: own paths (and a script's workdir) from this folder
        spec = validate(composed)
    except TrialdeckError as exc:
        bad = next((i for i, item in enumerate(sets)
                    if exc.message.startswith(f"--set {item.partition('=')[0].strip()}:")), None)
        return Check(None, exc.message, bad)
    # What enqueue would refuse about its own model and data (a missing .npz, an unknown arch, a
    # factory module not found): said now, as each key is typed. Reads headers only, runs nothing.
    from trialdeck.engine.presets.inputs import input_problems

    problems = input_problems(spec) if inputs else []
    if problems:
        bad = next((i for i, item in enumerate(sets) if f"{item.partition('=')[0].strip()} =" in problems[0]), None)
        return Check(None, problems[0], bad)
    return Check(spec)


def check_config(config: dict[str, Any], sets: tuple[str, ...], source: str) -> Check:
    """A stored configuration (a run's) with `--set` overrides, validated as `runs rerun RUN --set`
    validates them (trialdeck.engine.runtime.control.rerun)."""
    return _check_sets(Composed(data=copy.deepcopy(config), chain=[source]), sets)


def lr_curve(spec: RunSpec, limit: int = 2000) -> list[float]:
    """Learning rate per epoch (no plateau reactions), at most `limit` epochs."""
    from trialdeck.engine.training.schedules import preview

    if spec.script is not None:  # a script run's learning rate is its own business
        return []
    epochs = max(1, min(spec.train.epochs, limit))
    return [v for v in preview(spec.schedule, spec.optimizer.lr, epochs) if math.isfinite(v)]


def summary_line(spec: RunSpec) -> str:
    """One line saying what a valid composition will train."""
    if spec.script is not None:  # the user's own program: its command and params, not the trainer's blocks
        from trialdeck.engine.presets.schema import expand

        parts = [" ".join(expand(a, spec.params) for a in spec.script.command)]
        parts += [f"{k} {v}" for k, v in spec.params.items() if not isinstance(v, (dict, list))]
        if spec.early_stopping.enabled:
            parts.append(f"early stop on {spec.early_stopping.monitor} p{spec.early_stopping.patience}")
        return "ok: script: " + ", ".join(parts)
    m, o, s = spec.model, spec.optimizer, spec.schedule
    data = f"{spec.data.dataset} {Path(spec.data.path).name}" if spec.data.path else spec.data.dataset
    model = {"torchvision": f"torchvision {m.arch}" + (f" ({m.weights})" if m.weights else ""),
             "python": f"python {m.factory}"}.get(m.kind, f"{m.kind} {m.hidden_sizes}, {m.activation}")
    parts = [data, model, f"{o.name} lr {o.lr:g}",
             f"{s.kind} schedule", f"{spec.train.epochs} epochs", f"batch {spec.data.batch_size}"]
    if spec.early_stopping.enabled:
        parts.append(f"early stop p{spec.early_stopping.patience}")
    return "ok: " + ", ".join(parts)
