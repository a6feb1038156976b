"""Engine side of tuning: keep every running study fed with trials and tell Optuna the results.

Each trial is a queued run (fields `study`, `trial`, `trial_id`, `params`), so
trials run in parallel across slots on warm workers. The driver asks Optuna
for a new trial only when a slot can take it (in flight <= slots), tells
Optuna as soon as a trial's run is final (complete with its value, pruned,
or failed/cancelled as FAIL), and mirrors the study into TinyDB.

Stopping: past `deadline` (from --timeout) no new trials are asked and those
in flight finish; a study set to "stopping" (Ctrl-C on `tune --wait`, or
`studies stop`) cancels its queued and running trials. Either way nothing is
left RUNNING in Optuna: a trial whose run is final is always told, also after
an engine crash (reconciled at start), and an interrupted trial run is
requeued and continues as the same trial.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna

from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import BadInput
from trialdeck.engine.runs.lifecycle import Lifecycle
from trialdeck.engine.training.membership import group_id
from trialdeck.engine.tuning import study as studies
from trialdeck.engine.tuning.space import apply_params, sample
from trialdeck.engine.types import RunState, StudyRecord, StudyState, finite

PRUNER_STARTUP_TRIALS = 5
"""Trials of a pruned study that finish before the rest may train as ensembles (Optuna's
median pruner prunes nothing before 5 trials completed; halving pruners need finished rungs)."""
ENSEMBLE_SAMPLERS = ("grid", "random")
"""Samplers whose next trials do not depend on the last results, so several can be asked at
once and trained together as an ensemble without changing what the study samples."""


def no_objective(metric: str, runs: Sequence[Mapping[str, Any]]) -> str | None:
    """Why a study stops early: its first two finished trials recorded no value of its objective
    (a program whose output the capture does not read, a metric named otherwise), so the rest
    would record none either. None while that is not so."""
    done = sorted((r for r in runs if RunState(r["state"]).terminal and r["state"] != RunState.CANCELLED),
                  key=lambda r: r.get("finished_at") or 0.0)[:2]
    if len(done) < 2 or any(finite(h.get(metric)) for r in done for h in r.get("history") or ()):
        return None
    if all(r["state"] == RunState.FAILED for r in done):
        errors = "; ".join(f"{r['id']}: {r.get('error') or 'failed'}" for r in done)
        return f"its first two trials failed before recording any {metric} ({errors})"
    names = list(dict.fromkeys(k for r in done for h in r.get("history") or () for k, v in h.items()
                               if k not in ("epoch", "step") and finite(v)))
    return (f"its first two trials ({done[0]['id']}, {done[1]['id']}) recorded no {metric} (they recorded "
            f"{', '.join(names) if names else 'no metric at all'}); fix the program's output or its [script.capture] "
            "(`trialdeck presets capture PRESET LOG` shows what it reads), then start the study again")


class StudyDriver:
    def __init__(self, store: Store, log=print, on_end: Callable[[str, str], None] | None = None,
                 lifecycle: Lifecycle | None = None) -> None:
        self.store = store
        self.log = log
        self.lifecycle = lifecycle or Lifecycle(store)
        """Where a stopped study's trials are cancelled (the engine's)."""
        self.on_end = on_end
        """Called with (study name, state) once a study completes, stops or fails (the engine's notifications)."""
        self.workspace_id = f"{studies.host()}:{store.path.parent}"
        self._cache: dict[str, tuple[optuna.Study, Any, dict[str, Any], str]] = {}

    def _load(self, doc: Mapping[str, Any]):
        name = doc["name"]
        if name not in self._cache:
            study, tune, meta = studies.load(name, doc["storage_url"])
            self._cache[name] = (study, tune, meta, doc["storage_url"])
        return self._cache[name]

    def _create(self, doc: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> StudyRecord:
        """Create (or resume) the Optuna study a client asked for (`create`, see tuning.launch);
        a resumed study is reconciled first, as at engine start."""
        name, url, wanted = doc["name"], doc["storage_url"], doc["create"]
        tune = studies.tune_of(wanted)
        study = studies.create_or_load(name, url, preset=wanted["preset"], config=wanted["config"], tune=tune)
        meta = dict(study.user_attrs.get("trialdeck", {}))
        meta["n_trials"] = doc["n_trials"]
        study.set_user_attr("trialdeck", meta)
        self._cache.pop(name, None)  # a resumed study reloads with its own sampler settings
        self._reconcile_study(doc, runs)
        study, tune, meta, url = self._load(doc)
        return studies.sync(self.store, study, tune, meta, url=url, fields={"create": None},
                             runs=[r for r in runs if r.get("study") == name])

    def active(self) -> list[StudyRecord]:
        return self.store.active_studies()

    def tick(self, capacity: int, ensemble_width: int = 1) -> int:
        """Tell finished trials, ask new ones up to `capacity` in flight per study (times
        `ensemble_width` for a study whose trials train as ensembles); returns runs created."""
        created = 0
        docs = self.active()
        if not docs:
            return 0
        # Only these studies' runs: copying every run's history each tick would grow with the catalogue.
        runs = self.store.list_runs(omit=("config", "events"), studies={d["name"] for d in docs})
        for doc in docs:
            try:
                if doc.get("create"):
                    doc = self._create(doc, runs)
                created += self._tick_study(doc, [r for r in runs if r.get("study") == doc["name"]], capacity,
                                            ensemble_width)
            except Exception as exc:  # noqa: BLE001 - one broken study must not stop the engine
                self.log(f"study {doc['name']}: {type(exc).__name__}: {exc}")
                self.store.upsert_study(doc["name"], {"state": StudyState.FAILED.value, "error": f"{type(exc).__name__}: {exc}"})
                self._ended(doc["name"], StudyState.FAILED.value)
        return created

    def _tick_study(self, doc: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], capacity: int,
                    ensemble_width: int = 1) -> int:
        study, tune, meta, url = self._load(doc)
        grouped = ensemble_width > 1 and tune.ensemble and tune.sampler in ENSEMBLE_SAMPLERS
        if grouped and tune.pruner.kind != "none":
            # A pruner compares a trial with finished ones: start with a few trials one at a time.
            grouped = sum(1 for r in runs if RunState(r["state"]).terminal) >= PRUNER_STARTUP_TRIALS
        if grouped:
            capacity *= ensemble_width
        changed = self._tell_finished(study, tune, runs)
        inflight = [r for r in runs if RunState(r["state"]).unfinished]
        why = no_objective(tune.metric, runs) if doc["state"] == StudyState.RUNNING else None
        if why:  # the rest of its trials would record nothing either: stop now, saying why
            self.log(f"study {doc['name']}: {why}")
            doc = self.store.upsert_study(doc["name"], {"state": StudyState.STOPPING.value, "stop_reason": why})
        if doc["state"] == StudyState.STOPPING:
            for r in inflight:
                if r["state"] != RunState.RUNNING:  # queued or interrupted: not started again
                    self.lifecycle.cancel(r["id"], "cancelled: the study was stopped")
                elif not r.get("cancel_requested"):
                    self.store.update_run(r["id"], cancel_requested=True)
            if not inflight:
                reason = doc.get("stop_reason")
                end = StudyState.FAILED if reason else StudyState.STOPPED
                studies.sync(self.store, study, tune, meta, url=url, with_importances=True, runs=runs,
                             fields={"state": end.value, "finished_at": time.time(), **({"error": reason} if reason else {})})
                self.log(f"study {doc['name']} {end.value}")
                self._ended(doc["name"], end.value)
            elif changed:
                studies.sync(self.store, study, tune, meta, url=url, runs=runs)
            return 0
        target = int(doc["n_trials"])
        deadline = doc.get("deadline")
        expired = deadline is not None and time.time() > deadline
        if len(runs) >= target or expired:
            if not inflight:
                studies.sync(self.store, study, tune, meta, url=url, with_importances=True, runs=runs,
                             fields={"state": StudyState.COMPLETED.value, "finished_at": time.time(),
                                     "stopped_by": "timeout" if expired and len(runs) < target else "trials"})
                self.log(f"study {doc['name']} completed")
                self._ended(doc["name"], StudyState.COMPLETED.value)
            elif changed:
                studies.sync(self.store, study, tune, meta, url=url, runs=runs)
            return 0
        want = min(target - len(runs), capacity - len(inflight))
        made = []
        for _ in range(max(0, want)):
            trial = study.ask()
            trial.set_user_attr("workspace", self.workspace_id)  # "host:path" (one journal write per attr)
            params = sample(trial, tune)
            try:
                spec = apply_params(meta["config"], params, f"study {doc['name']} trial {trial.number}")
            except Exception as exc:  # noqa: BLE001 - a sampled combination the preset rejects
                studies.tell_failed(study, trial._trial_id, trial.number, f"invalid parameters: {exc}")
                self.log(f"study {doc['name']} trial {trial.number}: invalid parameters: {exc}")
                continue
            made.append((trial, params, spec))
        if made:
            records = self.store.create_runs([
                {"preset": meta["preset"], "config": spec.config(), "config_hash": spec.content_hash,
                 "study": doc["name"], "trial": trial.number,
                 "extra": {"trial_id": trial._trial_id, "params": params,
                           **({"ensemble": group_id(doc["name"], spec)} if grouped else {}),
                           **({"tags": list(doc["tags"])} if doc.get("tags") else {})}}
                for trial, params, spec in made
            ])
            for (trial, _, _), record in zip(made, records, strict=True):
                trial.set_user_attr("run_id", record["id"])
        if made or changed:
            studies.sync(self.store, study, tune, meta, url=url, runs=runs)
        return len(made)

    def _ended(self, name: str, state: str) -> None:
        if self.on_end is not None:
            self.on_end(name, state)

    def _tell_finished(self, study: optuna.Study, tune, runs: Sequence[Mapping[str, Any]]) -> bool:
        """Tell Optuna about every final trial run it has not heard of yet."""
        states = {t._trial_id: t.state for t in study.get_trials(deepcopy=False)}
        told = False
        for r in runs:
            trial_id = r.get("trial_id")
            if trial_id is None or not RunState(r["state"]).terminal:
                continue
            if states.get(trial_id) != optuna.trial.TrialState.RUNNING:
                continue
            studies.tell_run(study, tune, trial_id, r["trial"], r)
            told = True
        return told

    def reconcile(self) -> None:
        """At engine start: bring every study's Optuna trials and TinyDB mirror in line. A study that
        ended (completed, stopped, failed) with no run left in flight is in line already (its last
        trial was told before it ended): it is left alone, so a start reads what is in flight, not
        every study and run of the past."""
        ended = (StudyState.COMPLETED, StudyState.STOPPED, StudyState.FAILED)
        busy = {r.get("study") for r in self.store.unfinished(omit=("config", "history", "events"))}
        docs = [doc for doc in self.store.list_studies()
                if doc.get("storage_url") and (doc.get("state") not in ended or doc["name"] in busy)]
        runs = self.store.list_runs(omit=("config", "events"), studies={d["name"] for d in docs}) if docs else []
        for doc in docs:
            self._reconcile_study(doc, runs)

    def _reconcile_study(self, doc: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> None:
        try:
            study, tune, meta, url = self._load(doc)
        except BadInput:
            if not doc.get("create"):  # else: not created yet, and the next tick creates it
                self.log(f"study {doc['name']}: cannot reconcile: its Optuna study is gone from {doc.get('storage')}")
            return
        try:
            mine = [r for r in runs if r.get("study") == doc["name"]]
            self._tell_finished(study, tune, mine)
            known = {r.get("trial_id") for r in mine}
            local = url.startswith("journal:")  # a workspace journal has no other writers
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                ours = local or t.user_attrs.get("workspace") == self.workspace_id
                if ours and t._trial_id not in known:
                    # Asked by an engine that died before it recorded the trial's run.
                    studies.tell_failed(study, t._trial_id, t.number,
                                        "the engine stopped before it recorded the trial's run")
                    self.log(f"study {doc['name']}: trial {t.number} had no run; told FAIL")
            studies.sync(self.store, study, tune, meta, url=url, runs=mine)
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            self.log(f"study {doc['name']}: cannot reconcile: {type(exc).__name__}: {exc}")
