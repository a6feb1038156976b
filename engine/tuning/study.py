"""Studies: Optuna storage per study, and their mirror in the TinyDB catalogue.

Each study's Optuna storage lives in the workspace (JournalStorage with a
JournalFileBackend in studies/<name>.journal) unless `--storage` names a real
database (postgresql://, mysql://, sqlite:///) shared by several boxes. The
study keeps what trialdeck needs to run trials anywhere in its user attrs
("trialdeck": the preset, its resolved base config and the tune block), so a
`trialdeck worker` on another box needs only the URL and the study name.

The `studies` and `trials` tables mirror Optuna (params, values, states,
intermediate values, timestamps, run ids, best trial, importances): the TUI
and the `studies` commands read TinyDB and never replay Optuna logs.
"""

from __future__ import annotations

import importlib.util
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import optuna

from trialdeck.engine.errors import BadInput
from trialdeck.engine.presets.schema import TuneConfig
from trialdeck.engine.tuning import insight, records
from trialdeck.engine.tuning.launch import (  # noqa: F401 - re-exported: the names and URLs of studies
    RDB_PREFIXES,
    check_study_name,
    default_study_name,
    redact,
    storage_url,
    target_trials,
)
from trialdeck.engine.tuning.objectives import metric_value, trial_values
from trialdeck.engine.tuning.samplers import make_pruner, make_sampler
from trialdeck.engine.tuning.space import decode_params
from trialdeck.engine.types import StudyRecord

_STORAGES: dict[str, Any] = {}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_storage(url: str):
    """One storage object per URL per process (a journal replays its log once, then incrementally)."""
    if url not in _STORAGES:
        if url.startswith("journal:"):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            _STORAGES[url] = JournalStorage(JournalFileBackend(url[len("journal:"):]))
        else:
            engine_url = url
            if url.startswith("postgresql://"):
                # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; we ship psycopg2.
                engine_url = "postgresql+psycopg2://" + url[len("postgresql://"):]
            if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None:
                raise BadInput(f"--storage {redact(url)}: the PostgreSQL driver is not installed; "
                               "install it with: pip install 'psycopg2-binary>=2.9' (the [postgres] extra)")
            try:
                with warnings.catch_warnings():  # heartbeat_interval is "experimental": not the user's concern
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    _STORAGES[url] = optuna.storages.RDBStorage(engine_url, heartbeat_interval=30, grace_period=90)
            except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors: one line for the user
                raise BadInput(f"--storage {redact(url)}: cannot open: {str(exc).splitlines()[0]}") from None
    return _STORAGES[url]


def meta_of(study: optuna.Study) -> dict[str, Any]:
    meta = study.user_attrs.get("trialdeck")
    if not meta:
        raise BadInput(f"study {study.study_name!r} was not created by trialdeck (no preset stored with it)")
    return meta


def tune_of(meta: Mapping[str, Any]) -> TuneConfig:
    return TuneConfig.model_validate(meta["config"]["tune"])


def create_or_load(name: str, url: str, *, preset: str, config: dict[str, Any], tune: TuneConfig) -> optuna.Study:
    storage = open_storage(url)
    study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler(tune), pruner=make_pruner(tune),
                                directions=list(tune.directions), load_if_exists=True)
    if [d.name.lower() for d in study.directions] != tune.directions:
        raise BadInput(f"study {name!r} in {redact(url)} has directions "
                       f"{', '.join(d.name.lower() for d in study.directions)}; this preset's objectives want "
                       f"{', '.join(tune.directions)}: start another study with --study NAME")
    if "trialdeck" not in study.user_attrs:
        study.set_user_attr("trialdeck", {"preset": preset, "config": config})
        with warnings.catch_warnings():  # set_metric_names is "experimental": not the user's concern
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(tune.metrics)  # optuna-dashboard and trials_dataframe name the objectives
    return study


def load(name: str, url: str, *, seed_salt: str | None = None) -> tuple[optuna.Study, TuneConfig, dict[str, Any]]:
    """Load a trialdeck study with its sampler and pruner. `seed_salt` (a worker's workspace)
    gives each box its own sampler seed, so workers sharing a study do not draw alike."""
    storage = open_storage(url)
    try:
        bare = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise BadInput(f"no study {name!r} in {redact(url)}") from None
    meta = meta_of(bare)
    tune = tune_of(meta)
    sampler_tune = tune
    if seed_salt is not None and tune.seed is not None:
        import zlib

        sampler_tune = tune.model_copy(update={"seed": (tune.seed + zlib.crc32(seed_salt.encode())) % 2**31})
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(sampler_tune),
                              pruner=make_pruner(tune))
    return study, tune, meta


def trial_value(tune, history: list[dict[str, Any]]) -> float | None:
    """The trial's value of its (first) objective's metric over `history` (tune.reduce applies)."""
    return metric_value(tune.metric, tune.direction, tune.reduce, history)


def trial_doc(t: optuna.trial.FrozenTrial, tune: TuneConfig) -> dict[str, Any]:
    return records.trial_doc(t, tune.multi, lambda params: decode_params(tune, params))


def tell_run(study: optuna.Study, tune: TuneConfig, trial_id: int, number: int, record: Mapping[str, Any]) -> str:
    """Tell Optuna how a trial's run ended and return the state told.

    Optuna has one state for every other ending, FAIL, so a failed trial keeps
    why (cancelled, the run's error, no metric) in its `fail_reason` attribute.
    """
    state = record["state"]
    if state in ("completed", "early_stopped"):
        values, reason = trial_values(tune, record)
        if values is not None:
            study.tell(number, values if tune.multi else values[0])
            return "complete"
        assert reason is not None
    elif state == "pruned":
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
    else:
        reason = f"{state}: {record['error']}" if record.get("error") else state
    return tell_failed(study, trial_id, number, reason)


def tell_failed(study: optuna.Study, trial_id: int, number: int, reason: str) -> str:
    """Tell Optuna the trial failed, keeping why in its `fail_reason` attribute."""
    study._storage.set_trial_user_attr(trial_id, "fail_reason", reason[:300])
    study.tell(number, state=optuna.trial.TrialState.FAIL)
    return "fail"


def importances(study: optuna.Study) -> dict[str, float] | None:
    """PED-ANOVA importances of the study's one objective, or None when they cannot be computed yet."""
    found = insight.importances(study, objective=0)
    return found.values if found.values else None


def importances_by_objective(study: optuna.Study, metrics: Sequence[str]) -> dict[str, dict[str, float]] | None:
    """Several objectives: PED-ANOVA importances for each objective, and for reaching the front
    (key "pareto"). None when they cannot be computed yet."""
    out: dict[str, dict[str, float]] = {}
    for i, metric in enumerate(metrics):
        found = insight.importances(study, objective=i)
        if found.values:
            out[metric] = found.values
    front = insight.importances(study, objective=None)
    if front.values:
        out["pareto"] = front.values
    return out or None


def sync(store, study: optuna.Study, tune: TuneConfig, meta: dict[str, Any], *, url: str,
         fields: dict[str, Any] | None = None, with_importances: bool = False,
         runs: Sequence[Mapping[str, Any]] | None = None) -> StudyRecord:
    """Mirror the Optuna study into TinyDB (studies + trials tables); returns the study doc.

    A trial's `duration` is its run's time in its epochs, from `runs` (this workspace's runs
    of the study; read when not given): Optuna's own start is when the trial was asked,
    which is when its run was queued.
    """
    trials = study.get_trials(deepcopy=False)
    docs = [trial_doc(t, tune) for t in trials]
    if runs is None:
        runs = store.list_runs(omit=("config", "events"), studies={study.study_name})
    seconds = {r["id"]: sum(h.get("seconds") or 0.0 for h in r.get("history") or []) for r in runs}
    for d in docs:
        if seconds.get(d["run_id"]):
            d["duration"] = round(seconds[d["run_id"]], 3)
    doc = {
        "preset": meta["preset"],
        "config": meta["config"],
        "metric": tune.metric,
        "direction": tune.direction,
        "objectives": [o.model_dump() for o in tune.objective_list],
        "reduce": tune.reduce,
        "sampler": tune.sampler,
        "pruner": tune.pruner.kind,
        "storage": redact(url),
        "storage_url": url,
        **records.summary(docs, tune.directions),
        "synced_at": time.time(),
        **(fields or {}),
    }
    if with_importances:
        if tune.multi:
            by_objective = importances_by_objective(study, tune.metrics)
            doc["importances_by_objective"] = by_objective
            doc["importances"] = (by_objective or {}).get("pareto")
        else:
            doc["importances"] = importances(study)
    return store.sync_study(study.study_name, doc, docs)


def host() -> str:
    return socket.gethostname()
