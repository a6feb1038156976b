"""What a client needs to start a study, without importing Optuna.

Study names, storage URLs and trial counts; and `request`, which records a
study in the catalogue as wanted. For the workspace's own journal the engine,
which has Optuna imported already, creates the Optuna study on its next tick
(`StudyDriver`): `trialdeck tune` then starts in the time its CLI needs, not
plus Optuna's import. A study on a shared database is created by the client
itself, so a bad URL or an unreachable server is reported at once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from trialdeck.engine.errors import BadInput
from trialdeck.engine.presets.authoring import config_diff
from trialdeck.engine.presets.schema import RunSpec, TuneConfig
from trialdeck.engine.tuning.space import grid_size
from trialdeck.engine.types import StudyState
from trialdeck.engine.workspace import Workspace

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RDB_PREFIXES = ("postgresql", "mysql", "sqlite")


def check_study_name(name: str) -> str:
    if not NAME_RE.match(name) or ".." in name:
        raise BadInput(f"study name {name!r}: use letters, digits, '.', '_' and '-' (no '/' or '..'), at most 128")
    return name


def default_study_name(preset: str) -> str:
    return check_study_name(preset.replace("/", "-"))


def storage_url(ws: Workspace, name: str, url: str | None) -> str:
    """The study's storage as a string stored in the catalogue ("journal:<path>" or an RDB URL)."""
    if url is None:
        return f"journal:{ws.studies_dir / (check_study_name(name) + '.journal')}"
    if url.split(":", 1)[0].split("+", 1)[0] not in RDB_PREFIXES:
        raise BadInput(f"--storage {url!r}: allowed: postgresql://USER@HOST/DB, mysql://..., sqlite:///PATH, "
                       "or leave it out for the workspace's journal file")
    return url


def redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def target_trials(tune: TuneConfig, requested: int | None) -> int:
    n = requested or tune.trials
    return min(n, grid_size(tune)) if tune.sampler == "grid" else n


def request(store, name: str, url: str, spec: RunSpec, n_trials: int, timeout: float | None,
            tags: list[str] | None = None) -> dict[str, Any]:
    """Mark study `name` running for `n_trials` trials; the engine creates its Optuna study
    (from `create`) if it does not exist yet, and feeds it trials. Returns the study doc.
    `tags` join the study's own in the same write, so every trial it asks from now on carries them."""
    tune = spec.tune
    if tune is None:
        raise BadInput(f"preset {spec.preset!r} has no [tune] block; add one, or queue a single run with `trialdeck run`")
    now = time.time()
    doc: dict[str, Any] = {
        "state": StudyState.RUNNING.value, "n_trials": n_trials, "started_at": now,
        "deadline": now + timeout if timeout else None, "finished_at": None, "error": None,
        "create": {"preset": spec.preset, "config": spec.config()},
    }
    if tags:
        old = (store.get_study(name) or {}).get("tags") or []
        doc["tags"] = old + [t for t in tags if t not in old]
    if store.get_study(name) is None:  # a resumed study keeps the summary its Optuna study gave it
        doc.update({"preset": spec.preset, "metric": tune.metric, "direction": tune.direction,
                    "directions": tune.directions, "objectives": [o.model_dump() for o in tune.objective_list],
                    "reduce": tune.reduce, "sampler": tune.sampler, "pruner": tune.pruner.kind,
                    "storage": redact(url), "storage_url": url, "counts": {}, "n_done": 0, "best": None,
                    **({"pareto": []} if tune.multi else {})})
    return store.upsert_study(name, doc)


# What a resumed study may change: how long it goes on (`--trials`, `--timeout`).
RESUMABLE_KEYS = frozenset({"tune.trials", "tune.timeout"})


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in `before`, value in `after`) for every key that differs, except
    `RESUMABLE_KEYS`: what resuming a study created with `before` would silently ignore."""
    return config_diff(before, after, skip=RESUMABLE_KEYS)


def check_resume(name: str, existing: Mapping[str, Any] | None, spec: RunSpec) -> None:
    """Resuming a study keeps the config it was created with; refuse a request that differs,
    rather than ignore the difference."""
    if not existing:
        return
    before = existing.get("config") or (existing.get("create") or {}).get("config")
    if not before:  # a study mirrored by an older version: nothing to compare with
        return
    changes = config_changes(before, spec.config())
    if changes:
        shown = ", ".join(f"{key}={old!r} (asked {new!r})" for key, old, new in changes[:3])
        more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
        raise BadInput(f"study {name!r} exists with {shown}{more}; resuming it keeps its own settings: "
                       f"drop those --set, or start another study with --study NAME")
