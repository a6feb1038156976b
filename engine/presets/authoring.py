"""Write new presets into the workspace: compose parents + overrides, validate, save TOML.

The saved file keeps the composition (`extends` and only the overridden keys),
so it stays small and follows later changes to its parents.
"""

from __future__ import annotations

from collections.abc import Collection
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
        doc["extends"] = list(parents)
    table = dict(body or {})
    _merge_plain(table, overrides_table(sets))
    doc.update(table)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    from trialdeck.engine.workspace import atomic_write

    atomic_write(path, tomli_w.dumps(doc).encode())
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
