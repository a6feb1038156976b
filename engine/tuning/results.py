"""From a study to a final model: a trial's configuration, saved as a preset.

A trial's configuration is its study's resolved base config with the trial's
sampled params applied (`space.apply_params`, as the engine built the trial's
run), so it is known for a trial that ran on another box too. It is saved
whole and without the search space (`authoring.save_config`): the preset
validates and runs as is, and `--set train.epochs=50` trains it longer. No
Optuna import: the catalogue's mirror of the study is enough.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import BadInput
from trialdeck.engine.presets.authoring import save_config
from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.tuning.space import apply_params
from trialdeck.engine.types import StudyRecord


def find_trial(store: Store, study: str, number: int | None = None) -> tuple[StudyRecord, dict[str, Any]]:
    """The study's document and trial `number` (default: its best trial)."""
    doc = store.get_study(study)
    if doc is None:
        raise BadInput(f"no study {study!r} in {store.path}; see `trialdeck studies list`")
    if number is None and doc.get("pareto") is not None:
        front = doc["pareto"]
        if len(front) != 1:
            raise BadInput(f"study {study} has {len(front)} trials on its Pareto front "
                           f"({', '.join(f'#{n}' for n in front) or 'none yet'}); pick one by its number")
        number = front[0]
    if number is None:
        best = doc.get("best")
        if not best:
            raise BadInput(f"study {study} has no complete trial yet, so no best trial to save")
        number = best["number"]
    trial = next((t for t in store.list_trials(study) if t.get("number") == number), None)
    best = doc.get("best") or {}
    if trial is None and best.get("number") == number:
        trial = {"number": number, **best, "state": "complete"}  # mirrored summary only
    if trial is None:
        raise BadInput(f"study {study} has no trial #{number}; see `trialdeck studies show {study}`")
    return doc, trial


def trial_spec(doc: Mapping[str, Any], trial: dict[str, Any]) -> RunSpec:
    """The trial's resolved configuration: the study's base with its sampled params set."""
    base = doc.get("config") or (doc.get("create") or {}).get("config")
    if not base:
        raise BadInput(f"study {doc['name']} has no stored configuration to apply trial #{trial['number']}'s params to")
    return apply_params(base, trial.get("params") or {}, f"study {doc['name']} trial {trial['number']}")


def save_trial_preset(store: Store, presets_dir: Path, study: str, name: str, *, number: int | None = None,
                      force: bool = False) -> tuple[Path, RunSpec, dict[str, Any]]:
    """Save trial `number` (default: the best) of `study` as preset NAME in `presets_dir`;
    refused if NAME exists, unless `force`. Returns the path, the saved spec and the trial."""
    doc, trial = find_trial(store, study, number)
    spec = trial_spec(doc, trial)
    objectives = doc.get("objectives") or [{"metric": str(doc.get("metric"))}]
    values = trial.get("values") or [trial.get("value")]
    shown = ", ".join(f"{o['metric']} {v:.4g}" for o, v in zip(objectives, values, strict=False)
                      if isinstance(v, (int, float)))
    measured = f" ({shown})" if shown else ""
    description = f"trial #{trial['number']} of study {study}{measured}, from {doc.get('preset') or spec.preset}"
    path, saved = save_config(presets_dir, name, spec.config(), description=description, force=force)
    return path, saved, trial
