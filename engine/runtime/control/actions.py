"""The rules for changing runs on a user's behalf, shared by the CLI and the TUI.

Queueing validates the priority and creates the runs in one write; cancelling
follows the run's state: a queued run is cancelled at once, a running one is
asked to stop (the engine stops it within a second, or it is cancelled
directly when no engine is alive), an interrupted one is cancelled, and a
finished one is refused with the reason. A run that ended without its result
(failed, cancelled, interrupted) can be resumed in place from its checkpoint;
any run can be run again as a new run with the same configuration, and its
old record stays as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trialdeck.engine.catalogue.store import Store, check_tags
from trialdeck.engine.errors import BadInput
from trialdeck.engine.presets.inputs import check_inputs
from trialdeck.engine.presets.schema import RunSpec
from trialdeck.engine.runs.lifecycle import Lifecycle
from trialdeck.engine.runtime.config import EngineConfig
from trialdeck.engine.runtime.control.client import engine_info, ensure_engine, notify
from trialdeck.engine.runtime.placement import backend_class
from trialdeck.engine.runtime.placement.capabilities import Capabilities
from trialdeck.engine.runtime.placement.scheduler import pinned_device
from trialdeck.engine.types import ACTIVE_STUDY_STATES, RunRecord, RunState

RESUMABLE = (RunState.FAILED, RunState.CANCELLED, RunState.INTERRUPTED)

PRIORITY_LIMIT = 1_000_000
REPEAT_LIMIT = 1000
"""Most copies one `run --repeat` (or the TUI's queue dialog) queues at once."""


def _check_priority(priority: Any) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > PRIORITY_LIMIT:
        raise BadInput(f"priority {priority!r}: allowed: a whole number from -{PRIORITY_LIMIT} to {PRIORITY_LIMIT}")


def check_repeat(repeat: Any, what: str = "repeat") -> None:
    """The one limit on how many copies of a preset are queued at once (CLI and TUI)."""
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= REPEAT_LIMIT:
        raise BadInput(f"{what} {repeat!r}: allowed: a whole number from 1 to {REPEAT_LIMIT}")


def check_device(store: Store, specs: Sequence[RunSpec], device: str | None = None) -> None:
    """Refuse, at enqueue, runs pinned (`--device`, or `train.device` in the preset) to a GPU that
    no place of the engine's backend can ever offer: the running engine's published capabilities,
    else those of the backend engine.toml would start (this box's GPUs through NVML; a cluster
    may always grow one). Queued anyway, such a run could only fail. No torch import."""
    wanted = [(spec, pinned_device({"pinned": device, "config": spec.config()})) for spec in specs]
    wanted = [(spec, pinned) for spec, pinned in wanted if pinned.startswith("cuda")]
    if not wanted:
        return
    offers = engine_capabilities(store.workspace)
    for spec, pinned in wanted:
        why = offers.why_not(pinned)
        if why:
            where = f"--device {device}" if device not in (None, "auto") else f"{spec.preset}: train.device"
            raise BadInput(f"{where}: {why}; use --device cpu (or auto)")


def engine_capabilities(ws: Any) -> Capabilities:
    """What the engine's backend offers: the running engine's (its pid file), else what an engine
    started now with this workspace's engine.toml would offer."""
    info = engine_info(ws)
    if info and info.get("capabilities"):
        return Capabilities.from_json(info["capabilities"])
    config = EngineConfig.read(ws)
    return backend_class(config).offline_capabilities(ws, config)


def enqueue(store: Store, specs: Sequence[RunSpec], *, priority: int = 0, device: str | None = None,
            tags: Sequence[str] = (), workdir: str | None = None) -> list[RunRecord]:
    """Queue `specs` in one write; each run records `workdir`, the folder it was queued from
    (default: this process's), where a script or a user's module is found."""
    _check_priority(priority)
    check_device(store, specs, device)
    for spec in {s.content_hash: s for s in specs}.values():  # --repeat: the same files, checked once
        check_inputs(spec)  # a missing .npz or factory module fails now, not at 2 a.m.
    tags = check_tags(tags, "--tag")
    extra: dict[str, Any] = {"workdir": workdir or os.getcwd()}
    if tags:
        extra["tags"] = tags
    return store.create_runs([
        {"preset": s.preset, "config": s.config(), "config_hash": s.content_hash, "priority": priority,
         "device": None if device in (None, "auto") else device, "extra": extra}
        for s in specs
    ])


def get_run(store: Store, run_id: str) -> RunRecord:
    try:
        record = store.get_run(run_id)
    except (ValueError, BadInput):
        record = None
    if record is None:
        raise BadInput(f"no run {run_id!r} in {store.path}; see `trialdeck runs list`")
    return record


def cancel(store: Store, run_id: str, wake: Callable[[], bool]) -> tuple[RunRecord, str]:
    """Cancel a run; returns its record and what happened, in words. `wake` signals the
    engine and says whether one was alive to stop a running run."""
    record = get_run(store, run_id)
    run_id, state = record["id"], RunState(record["state"])
    if state is RunState.QUEUED:
        return store.cancel_queued(run_id), "cancelled (it was queued)"
    if state is RunState.RUNNING:
        if record.get("foreground"):
            raise BadInput(f"{run_id} runs in the foreground (`trialdeck train`, pid {record.get('worker')}); stop it there")
        record = store.update_run(run_id, cancel_requested=True)
        if wake():
            return record, "cancel requested; the engine stops it within a second"
        record = Lifecycle(store).cancel(run_id, "cancelled by the user (no engine was running)")
        return record, "cancelled (no engine was running)"
    if state is RunState.INTERRUPTED:
        return Lifecycle(store).cancel(run_id, "cancelled by the user"), "cancelled"
    raise BadInput(f"{run_id} is already {state.value}; only queued, running or interrupted runs can be cancelled")


def check_resumable(record: Mapping[str, Any]) -> None:
    """Refuse, with the reason, a run `resume` cannot queue again."""
    run_id, state = record["id"], RunState(record["state"])
    if state in (RunState.QUEUED, RunState.RUNNING):
        raise BadInput(f"{run_id} is {state.value}; only failed, cancelled or interrupted runs can be resumed")
    if state not in RESUMABLE:
        raise BadInput(f"{run_id} already {state.value}; `trialdeck runs rerun {run_id}` trains its configuration "
                       "again as a new run")
    if record.get("study") is not None and (state is not RunState.INTERRUPTED or record.get("remote")):
        raise BadInput(f"{run_id} is trial {record.get('trial')} of study {record['study']}, and Optuna has its result; "
                       f"`trialdeck runs rerun {run_id}` trains its configuration again as a plain run")


def resume(store: Store, run_id: str) -> tuple[RunRecord, str]:
    """Queue a failed, cancelled or interrupted run again under its own id; the worker
    continues from its checkpoint when it has one. Returns its record and how it goes on."""
    record = get_run(store, run_id)
    check_resumable(record)
    run_id = record["id"]
    try:
        return Lifecycle(store).resume(run_id)
    except ValueError:  # the engine moved it (e.g. requeued an interrupted run at its start) since the read
        state = get_run(store, run_id)["state"]
        raise BadInput(f"{run_id} is {state} now; only failed, cancelled or interrupted runs can be resumed") from None


def rerun(store: Store, run_ids: Sequence[str], *, priority: int | None = None,
          sets: Sequence[str] = ()) -> list[RunRecord]:
    """New queued runs with the same resolved configurations, pins and priorities, in one
    write; the old records stay as they are. `sets` (`--set KEY=VALUE`, validated like any
    --set) change the new runs' configurations: `--set train.epochs=50` trains it longer."""
    from trialdeck.engine.presets.loader import resolve_data

    records = [get_run(store, run_id) for run_id in run_ids]
    for record in records:
        if not record.get("config"):
            raise BadInput(f"{record['id']} has no stored configuration to run again")
    if priority is not None:
        _check_priority(priority)
    configs = []
    for r in records:
        if sets:
            spec = resolve_data(r["config"], f"{r['id']}'s configuration", list(sets), cwd=_workdir_of(r))
            configs.append((spec.config(), spec.content_hash))
        else:
            configs.append((r["config"], r.get("config_hash", "")))
            try:
                spec = RunSpec.model_validate(r["config"])
            except ValueError:  # a configuration from an older trialdeck: the worker says what is wrong
                continue
        check_inputs(spec)  # its .npz or model module may have gone since
    return store.create_runs([{
        "preset": r["preset"], "config": config, "config_hash": digest,
        "priority": int(r.get("priority", 0)) if priority is None else priority,
        "device": r["pinned"] if "pinned" in r else None,
        "extra": {"workdir": r.get("workdir") or os.getcwd()},
    } for r, (config, digest) in zip(records, configs, strict=True)])


def _workdir_of(record: Mapping[str, Any]) -> str | None:
    """The folder a run was queued from, where its relative paths resolve (None: this one)."""
    workdir = record.get("workdir")
    return workdir if isinstance(workdir, str) and os.path.isdir(workdir) else None


@dataclass(frozen=True)
class StudyStart:
    """What `start_study` did."""

    name: str
    target: int
    """Trials the study wants in all."""
    doc: dict[str, Any]
    """Its catalogue document after the request."""
    was: str | None
    """Its state before (None: a new study)."""

    def describe(self) -> str:
        done = self.doc.get("n_done") or 0
        if self.was in ACTIVE_STUDY_STATES:
            return f"study {self.name} is already running: {done}/{self.target} trials done"
        how = "started" if self.was is None else "resumed"
        return f"study {self.name} {how}: {done}/{self.target} trials done; the engine runs the rest"


def start_study(store: Store, spec: RunSpec, *, trials: int | None = None, timeout: float | None = None,
                name: str | None = None, storage: str | None = None, tags: Sequence[str] = (),
                engine: Callable[[], Any] | None = None) -> StudyStart:
    """What `trialdeck tune PRESET` does, for the CLI and the TUI alike: create or resume the
    study (named after the preset unless `name`) wanting `trials` trials in all (default: the
    preset's `tune.trials`; `tags` carried by its trials), then bring the engine to run them: `engine()` when given (the
    TUI's, which may not start one), else start it if needed and wake it. The engine creates
    a journal study at its next tick; a shared database is opened here, so a bad URL fails now."""
    from trialdeck.engine.tuning import launch

    if spec.tune is None:
        raise BadInput(f"preset {spec.preset!r} has no [tune] block; add one, or queue a single run with `trialdeck run`")
    check_inputs(spec)
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= 1_000_000):
        raise BadInput(f"trials {trials!r}: allowed: a whole number from 1 to 1000000")
    name = launch.check_study_name(name) if name else launch.default_study_name(spec.preset)
    ws = store.workspace
    url = launch.storage_url(ws, name, storage)
    existing = store.get_study(name)
    launch.check_resume(name, existing, spec)
    target = launch.target_trials(spec.tune, trials)
    timeout = timeout if timeout is not None else spec.tune.timeout
    if storage is not None:
        from trialdeck.engine.tuning import study as studies  # imports Optuna: only for a shared database

        studies.create_or_load(name, url, preset=spec.preset, config=spec.config(), tune=spec.tune)
    doc = launch.request(store, name, url, spec, target, timeout, tags=list(tags))
    if engine is not None:
        engine()
    else:
        ensure_engine(ws)
        notify(ws)
    return StudyStart(name, target, doc, existing.get("state") if existing else None)
