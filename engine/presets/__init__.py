"""Presets: TOML data validated into typed, frozen RunSpecs (see loader and schema)."""

from __future__ import annotations

from trialdeck.engine.presets.loader import (
    BUILTIN_ROOT,
    check_name,
    compose,
    find_preset,
    list_presets,
    parse_set,
    preset_roots,
    resolve,
    resolve_data,
)
from trialdeck.engine.presets.schema import RunSpec

__all__ = [
    "BUILTIN_ROOT",
    "RunSpec",
    "check_name",
    "compose",
    "find_preset",
    "list_presets",
    "parse_set",
    "preset_roots",
    "resolve",
    "resolve_data",
]
