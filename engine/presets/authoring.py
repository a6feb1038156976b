"""Write new presets into the workspace: compose parents + overrides, validate, save TOML.

The saved file keeps the composition (`extends` and only the overridden keys),
so it stays small and follows later changes to its parents. A resolved
configuration (a study's best trial) is saved whole instead (`save_config`):
it is the exact configuration that was measured. Nothing is written unless it
validates, and an existing preset is overwritten only with `force`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from trialdeck.engine.errors import PresetError
from trialdeck.engine.presets.loader import Composed, apply_set, check_name, compose, parse_set, validate
from trialdeck.engine.presets.schema import RunSpec


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 5}} -> {"train.epochs": 5}; lists stay whole, and so does each
    search-space entry (`tune.space.<key>`), without its unset fields."""
    if prefix.startswith("tune.space.") and isinstance(value, dict):
        return {prefix: {k: v for k, v in value.items() if v not in (None, False)}}
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def config_diff(before: dict[str, Any], after: dict[str, Any], skip: Collection[str] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in `before`, value in `after`) for each key (see `flatten`) whose
    value differs, a missing key counting as None; sorted by key, `skip` left out."""
    old, new = flatten(before), flatten(after)
    return [(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if k not in skip and old.get(k) != new.get(k)]


@dataclass(frozen=True)
class ParentOverride:
    """A key a later parent of a composition set to another value than an earlier one had."""

    parent: str
    """The later parent, whose value wins."""
    key: str
    old: Any
    new: Any
    earlier: str
    """The parent whose value it replaced."""


_NOT_OVERRIDES = frozenset({"preset", "description"})


def parent_overrides(parents: Sequence[tuple[str, dict[str, Any]]]) -> list[ParentOverride]:
    """For parents composed left to right ((name, composed data) each), every key a later
    parent changes: `--from base/digits-cnn --from seed/dropout` ends as an MLP because
    seed/dropout's own base sets `model.kind = "mlp"`, which a person should be told."""
    seen: dict[str, tuple[Any, str]] = {}
    out = []
    for name, data in parents:
        for key, value in flatten({k: v for k, v in data.items() if k not in _NOT_OVERRIDES}).items():
            if key in seen and seen[key][0] != value:
                out.append(ParentOverride(name, key, seen[key][0], value, seen[key][1]))
            seen[key] = (value, name)
    return out


def describe_overrides(overrides: Sequence[ParentOverride]) -> list[str]:
    """One line per overriding parent: "seed/dropout overrides model.kind (cnn -> mlp),
    model.hidden ([128] -> [256, 256]) from base/digits-cnn"."""
    lines = []
    for parent in dict.fromkeys(o.parent for o in overrides):
        mine = [o for o in overrides if o.parent == parent]
        groups = [", ".join(f"{o.key} ({_short(o.old)} -> {_short(o.new)})" for o in mine if o.earlier == earlier)
                  + f" from {earlier}" for earlier in dict.fromkeys(o.earlier for o in mine)]
        lines.append(f"{parent} overrides " + "; ".join(groups))
    return lines


def _short(value: Any) -> str:
    """A value as a person writes it in TOML: strings bare, the rest as JSON (true, [64, 64])."""
    return value if isinstance(value, str) else json.dumps(value)


def overrides_of(parents: Sequence[str], roots: list[Path]) -> list[ParentOverride]:
    """`parent_overrides` of presets composed from `roots` (what `presets new --from ...` warns about)."""
    return parent_overrides([(parent, compose(parent, roots).data) for parent in parents])


def overrides_table(sets: list[str]) -> dict[str, Any]:
    """`--set` items as a nested TOML table ({"train": {"epochs": 5}})."""
    table: dict[str, Any] = {}
    for item in sets:
        parts, value = parse_set(item)
        if any(p.isdigit() for p in parts):
            raise PresetError(f"--set {item.partition('=')[0]}: list elements cannot be saved one by one; set the whole list")
        node = table
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return table


def write_preset(
    presets_dir: Path,
    name: str,
    *,
    parents: list[str],
    sets: list[str],
    description: str = "",
    force: bool = False,
    roots: list[Path],
    body: dict[str, Any] | None = None,
) -> tuple[Path, RunSpec]:
    """Validate and save `presets_dir/NAME.toml`; nothing is written if it is invalid."""
    check_name(name)
    path = presets_dir / f"{name}.toml"
    if path.exists() and not force:
        raise PresetError(f"{path}: already exists; pass --force to overwrite it")
    if not parents and not body:
        raise PresetError("presets new: give at least one --from parent")
    composed = Composed()
    for parent in parents:
        sub = compose(parent, roots)
        from trialdeck.engine.presets.loader import _merge

        _merge(composed.data, sub.data, "", composed.origin)
        composed.origin.update(sub.origin)
    if body:
        _merge_plain(composed.data, body)
    apply_set(composed, sets)
    composed.data["preset"] = name
    spec = validate(composed)
    doc: dict[str, Any] = {"description": description or f"{name}: " + " + ".join(parents)}
    if parents:
        doc["extends"] = [_absolute_parent(p) for p in parents]
    table = dict(body or {})
    _merge_plain(table, overrides_table(sets))
    _absolute_set_paths(table, sets)
    doc.update(table)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    from trialdeck.engine.workspace import atomic_write

    atomic_write(path, tomli_w.dumps(doc).encode())
    return path, spec


SET_PATH_KEYS = (("data", "path"), ("model", "path"), ("script", "workdir"))
"""Keys whose relative value means a folder or file: a `--set` one is typed relative to the folder
`presets new` runs in, but in a saved preset it would be read relative to the folder a run is
queued from (data.path, model.path) or to the preset file's own folder (script.workdir)."""


def _absolute_parent(parent: str) -> str:
    """A parent given as a file (`--from ./cnn.toml`) is stored by its absolute path, so the saved
    preset runs from any folder; a parent given by name stays a name."""
    return str(Path(parent).expanduser().resolve()) if parent.endswith(".toml") else parent


def _absolute_set_paths(table: dict[str, Any], sets: list[str]) -> None:
    """Each path key set by `--set` (SET_PATH_KEYS), made absolute from this folder."""
    given = {tuple(s.partition("=")[0].strip().split(".")) for s in sets}
    for section, key in SET_PATH_KEYS:
        node = table.get(section)
        if (section, key) in given and isinstance(node, dict) and isinstance(node.get(key), str) and node[key]:
            node[key] = str((Path.cwd() / Path(node[key]).expanduser()).resolve())


def save_config(presets_dir: Path, name: str, config: dict[str, Any], *, description: str,
                force: bool = False) -> tuple[Path, RunSpec]:
    """Save a resolved configuration as `presets_dir/NAME.toml`, whole (no `extends`), without
    its search space: the preset runs as is. Validated first; nothing is written if invalid."""
    check_name(name)
    path = presets_dir / f"{name}.toml"
    if path.exists() and not force:
        raise PresetError(f"{path}: already exists; pass --force to overwrite it")
    body = {"description": description,
            **{k: v for k, v in _drop_none(config).items() if k not in ("preset", "description", "tune")}}
    spec = validate(Composed(data={**body, "preset": name}, chain=[str(path)]))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    from trialdeck.engine.workspace import atomic_write

    atomic_write(path, tomli_w.dumps(body).encode())
    return path, spec


def _merge_plain(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge_plain(dst[k], v)
        else:
            dst[k] = v


def config_toml(config: dict[str, Any]) -> str:
    """A resolved config as TOML text (TOML has no null: unset keys are left out)."""
    return tomli_w.dumps(_drop_none(config))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
