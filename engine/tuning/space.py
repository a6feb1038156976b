"""Search spaces: sample a preset's [tune.space] on an Optuna trial and apply the values.

Define-by-run, in an order where every `when` condition names entries sampled
before it, so conditional entries (the article's units3/dropout3, only with
three layers) are sampled only when their condition holds. Categorical choices
that Optuna cannot store (lists such as hidden sizes) travel as JSON strings
and are decoded before they reach the preset.
"""

from __future__ import annotations

import json
from typing import Any

from trialdeck.engine.errors import PresetError
from trialdeck.engine.presets.loader import Composed, apply_override, validate
from trialdeck.engine.presets.schema import RunSpec, SpaceEntry, TuneConfig

_OPTUNA_SCALARS = (type(None), bool, int, float, str)


def ordered_keys(space: dict[str, SpaceEntry]) -> list[str]:
    """Keys in declaration order, each after the entries its `when` names."""
    done: list[str] = []
    pending = list(space)
    while pending:
        progressed = False
        for key in list(pending):
            if all(dep in done for dep in (space[key].when or {})):
                done.append(key)
                pending.remove(key)
                progressed = True
        if not progressed:
            raise PresetError(f"tune.space: the `when` conditions of {', '.join(pending)} form a cycle")
    return done


def encode_choice(value: Any) -> Any:
    return value if isinstance(value, _OPTUNA_SCALARS) else json.dumps(value)


def decode_choice(entry: SpaceEntry, value: Any) -> Any:
    if isinstance(value, str) and any(not isinstance(c, _OPTUNA_SCALARS) for c in entry.choices or []):
        for choice in entry.choices or []:
            if encode_choice(choice) == value:
                return choice
    return value


def condition_holds(entry: SpaceEntry, values: dict[str, Any]) -> bool:
    for key, wanted in (entry.when or {}).items():
        if key not in values:
            return False
        options = wanted if isinstance(wanted, list) else [wanted]
        if values[key] not in options:
            return False
    return True


def sample(trial, tune: TuneConfig) -> dict[str, Any]:
    """Ask the trial for a value of every active entry; returns {preset key: value}."""
    values: dict[str, Any] = {}
    for key in ordered_keys(tune.space):
        entry = tune.space[key]
        if not condition_holds(entry, values):
            continue
        if entry.float_ is not None:
            low, high = entry.float_
            values[key] = trial.suggest_float(key, low, high, log=entry.log, step=entry.step)
        elif entry.int_ is not None:
            ilow, ihigh = entry.int_
            values[key] = trial.suggest_int(key, ilow, ihigh, log=entry.log, step=int(entry.step or 1))
        else:
            raw = trial.suggest_categorical(key, [encode_choice(c) for c in entry.choices or ()])
            values[key] = decode_choice(entry, raw)
    return values


def decode_params(tune: TuneConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's stored params back to preset values (JSON-encoded choices decoded)."""
    return {k: decode_choice(tune.space[k], v) if k in tune.space and tune.space[k].choices else v
            for k, v in params.items()}


def grid(tune: TuneConfig) -> dict[str, list[Any]]:
    """The GridSampler search space: choices as they are, plain int ranges expanded."""
    out: dict[str, list[Any]] = {}
    for key, entry in tune.space.items():
        if entry.choices is not None:
            out[key] = [encode_choice(c) for c in entry.choices]
        else:
            assert entry.int_ is not None, "TuneConfig admits only choices and int ranges to a grid"
            low, high = entry.int_
            out[key] = list(range(low, high + 1, int(entry.step or 1)))
    return out


def grid_size(tune: TuneConfig) -> int:
    size = 1
    for values in grid(tune).values():
        size *= len(values)
    return size


def apply_params(base: dict[str, Any], params: dict[str, Any], source: str) -> RunSpec:
    """The trial's RunSpec: the study's base config with the sampled values set, validated."""
    composed = Composed(data=json.loads(json.dumps(base)), chain=[source])
    for key, value in params.items():
        apply_override(composed, key.split("."), value, f"{source} param {key}")
    return validate(composed)
