"""Trials of ended studies out of catalog.json, on real files: sealed a study per file, found by
every reader, brought back when the study changes or wants trials again, and migrated once.

What must hold (engine/catalogue/sealed_trials.py, segments.py, migrate.py): `list_trials` gives a
study's trials exactly as recorded wherever they live; a person reads them all with TinyDB alone
(the README's way); a study that still wants trials keeps them in catalog.json; a merge that
changes nothing writes nothing; a write that fails leaves no file behind; an old catalogue
(layout 1 or 2) migrates its trials once, streamed, with its backup. SEAL_AT is made small here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tinydb import TinyDB

from trialdeck.engine.catalogue import lines as lines_module
from trialdeck.engine.catalogue import migrate, sealed_trials, sealing
from trialdeck.engine.catalogue.segments import trials_key
from trialdeck.engine.catalogue.store import LAYOUT, SEGMENTS_DIR, Store
from trialdeck.engine.errors import BadInput
from trialdeck.engine.tuning.results import find_trial
from trialdeck.engine.workspace import Workspace


@pytest.fixture(autouse=True)
def small_working_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sealed_trials, "SEAL_AT", 5)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws").ensure()


def _trials(n: int, start: int = 0, value: float = 0.5) -> list[dict[str, Any]]:
    return [{"number": i, "state": "complete" if i % 3 else "pruned", "value": value + i / 100 if i % 3 else None,
             "values": [value + i / 100] if i % 3 else None, "params": {"optimizer.lr": 10 ** -(1 + i % 4)},
             "run_id": f"r{i + 1}", "intermediate": {str(e): 0.1 * e for e in range(1, 4)},
             "started_at": 1000.0 + i, "finished_at": 1010.0 + i, "duration": 10.0, "prune_reason": None,
             "fail_reason": None} for i in range(start, start + n)]


def _study(store: Store, name: str, n: int, state: str = "completed") -> list[dict[str, Any]]:
    """A study's summary and n trials, mirrored as the tuning driver does (`sync_study`)."""
    trials = _trials(n)
    best = max((t for t in trials if t["value"] is not None), key=lambda t: t["value"])
    store.sync_study(name, {"state": state, "metric": "val_acc", "direction": "maximize", "n_trials": n,
                            "best": {"number": best["number"], "value": best["value"], "params": best["params"]}},
                     trials)
    return [{**t, "study": name} for t in trials]


def _catalog(ws: Workspace) -> dict[str, Any]:
    return json.loads(ws.catalog_path.read_bytes())


def _in_catalog(ws: Workspace) -> dict[str, int]:
    found: dict[str, int] = {}
    for t in _catalog(ws)["trials"].values():
        found[t["study"]] = found.get(t["study"], 0) + 1
    return found


def _files(ws: Workspace) -> list[str]:
    folder = ws.root / SEGMENTS_DIR
    return sorted(os.listdir(folder)) if folder.exists() else []


def _with_tinydb_alone(ws: Workspace) -> dict[str, list[dict[str, Any]]]:
    """Every trial, read the way the README tells a person to: catalog.json's `trials`, then each
    file its `trial_segments` table names."""
    with TinyDB(ws.catalog_path, access_mode="r") as db:
        trials = db.table("trials").all()
        for seg in db.table("trial_segments").all():
            with TinyDB(ws.root / "segments" / seg["file"], access_mode="r") as part:
                trials += part.table("trials").all()
    out: dict[str, list[dict[str, Any]]] = {}
    for t in sorted(trials, key=lambda t: t["number"]):
        out.setdefault(t["study"], []).append(dict(t))
    return out


def test_trials_of_ended_studies_leave_catalog_json_and_read_as_recorded(ws: Workspace) -> None:
    store = Store(ws)
    a = _study(store, "a", 4)
    live = _study(store, "live", 7, state="running")
    assert _in_catalog(ws) == {"a": 4, "live": 7}  # 4 ended trials: at most SEAL_AT, none sealed
    b = _study(store, "b", 3)
    assert _in_catalog(ws) == {"live": 7}  # 7 ended trials: every ended study's sealed, in that write
    files = sorted(os.listdir(ws.root / SEGMENTS_DIR))
    assert files == sorted([f"trials-{trials_key('a')}-g1.json", f"trials-{trials_key('b')}-g1.json"])
    assert {e["study"]: e["trials"] for e in _catalog(ws)["trial_segments"].values()} == {"a": 4, "b": 3}
    for reader in (store, Store(ws)):  # the writer's cache, and a fresh process's view
        assert reader.list_trials("a") == a and reader.list_trials("b") == b and reader.list_trials("live") == live
        assert reader.list_trials("nothing") == []
    assert _with_tinydb_alone(ws) == {"a": a, "b": b, "live": live}
    assert [s["name"] for s in Store(ws).list_studies()] == ["a", "b", "live"]


def test_a_sealed_study_tuned_again_gets_its_trials_back(ws: Workspace) -> None:
    store = Store(ws)
    _study(store, "a", 4)
    _study(store, "b", 3)
    before = store.list_trials("a")
    store.upsert_study("a", {"state": "running", "n_trials": 6})  # `trialdeck tune` on a finished study
    assert _in_catalog(ws) == {"a": 4}
    entry = {e["study"]: e for e in _catalog(ws)["trial_segments"].values()}["a"]
    assert entry["trials"] == 0 and entry["generation"] == 2  # an empty version: the entry stays
    names = set(os.listdir(ws.root / SEGMENTS_DIR))
    assert {f"trials-{trials_key('a')}-g1.json", f"trials-{trials_key('a')}-g2.json"} <= names
    assert Store(ws).list_trials("a") == before
    more = _trials(3, start=4)  # it asks more trials while it runs: they stay in catalog.json
    store.sync_study("a", {"state": "running"}, more)
    assert _in_catalog(ws) == {"a": 7} and [t["number"] for t in Store(ws).list_trials("a")] == list(range(7))
    store.sync_study("a", {"state": "completed"}, more)  # ends: 7 ended trials, sealed again
    assert _in_catalog(ws) == {}
    entry = {e["study"]: e for e in _catalog(ws)["trial_segments"].values()}["a"]
    assert entry["trials"] == 7 and entry["generation"] == 3
    assert Store(ws).list_trials("a") == before + [{**t, "study": "a"} for t in more]
    # Only the current version and the one before it are kept.
    assert sorted(n for n in os.listdir(ws.root / SEGMENTS_DIR) if trials_key("a") in n) == \
        [f"trials-{trials_key('a')}-g2.json", f"trials-{trials_key('a')}-g3.json"]


def test_a_merge_writes_nothing_unless_it_changes_a_sealed_trial(ws: Workspace) -> None:
    store = Store(ws)
    a = _study(store, "a", 4)
    _study(store, "b", 3)
    raw = ws.catalog_path.read_bytes()
    assert store.upsert_trials("a", [{k: v for k, v in t.items() if k != "study"} for t in a]) == 0
    assert ws.catalog_path.read_bytes() == raw  # e.g. `studies show` on a finished study: its trials stay sealed
    # Another box's worker told trial 1 again and added trial 4 (`studies show --storage`, `trialdeck worker`).
    changed = [{**_trials(1, start=1)[0], "state": "fail", "value": None, "values": None}, *_trials(1, start=4)]
    assert store.upsert_trials("a", changed) == 2
    shown = Store(ws).list_trials("a")
    assert [t["number"] for t in shown] == [0, 1, 2, 3, 4] and shown[1]["state"] == "fail"
    assert shown[0] == a[0] and shown[4]["study"] == "a"
    # Back in the working set (its file's next version is empty): 5 ended trials, at most SEAL_AT.
    assert _in_catalog(ws) == {"a": 5}
    assert {e["study"]: e["generation"] for e in _catalog(ws)["trial_segments"].values()}["a"] == 2
    assert _with_tinydb_alone(ws)["a"] == shown
    assert store.upsert_trials("a", _trials(1, start=5)) == 1  # past SEAL_AT: sealed again in the same write
    assert _in_catalog(ws) == {}
    assert {e["study"]: e["generation"] for e in _catalog(ws)["trial_segments"].values()}["a"] == 3
    assert Store(ws).list_trials("a") == shown + [{**_trials(1, start=5)[0], "study": "a"}]


def test_a_change_brought_back_and_sealed_again_in_one_write_makes_one_version(ws: Workspace) -> None:
    store = Store(ws)
    a = _study(store, "a", 4)
    _study(store, "b", 3)
    kept_by_bak = f"trials-{trials_key('a')}-g1.json"
    assert store.upsert_trials("a", _trials(2, start=4)) == 2  # back (6 ended trials), and sealed again
    assert _in_catalog(ws) == {}
    assert {e["study"]: e["generation"] for e in _catalog(ws)["trial_segments"].values()}["a"] == 2
    assert sorted(n for n in _files(ws) if trials_key("a") in n) == [kept_by_bak, f"trials-{trials_key('a')}-g2.json"]
    assert Store(ws).list_trials("a") == a + [{**t, "study": "a"} for t in _trials(2, start=4)]
    with TinyDB(ws.root / "catalog.json.bak", access_mode="r") as before:  # the state before that write reads whole
        [entry] = [e for e in before.table("trial_segments").all() if e["study"] == "a"]
        assert entry["file"] == kept_by_bak and (ws.root / SEGMENTS_DIR / kept_by_bak).exists()


def test_readers_find_a_sealed_studys_trials(ws: Workspace) -> None:
    store = Store(ws)
    a = _study(store, "a", 5)
    _study(store, "b", 3)
    assert "a" not in _in_catalog(ws)
    doc, best = find_trial(Store(ws), "a")  # `studies best`, its --save-preset, the TUI's "save trial"
    assert best == a[4] and doc["best"]["number"] == 4
    assert find_trial(Store(ws), "a", 2)[1] == a[2]
    with pytest.raises(BadInput, match="has no trial #9"):
        find_trial(Store(ws), "a", 9)


def test_a_study_name_that_is_no_file_name_gets_a_safe_one(ws: Workspace) -> None:
    store = Store(ws)
    odd = _study(store, "my study/1: ü", 6)
    [entry] = _catalog(ws)["trial_segments"].values()
    assert entry["file"].startswith("trials-my_study_1___-") and "/" not in entry["file"]
    assert entry["key"] != trials_key("my study/1: u")
    assert Store(ws).list_trials("my study/1: ü") == odd


def test_a_failed_write_leaves_no_trial_file_behind(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(ws)
    _study(store, "a", 4)
    before = (ws.catalog_path.read_bytes(), _files(ws))

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk gone")

    with monkeypatch.context() as patch, pytest.raises(OSError):
        patch.setattr("trialdeck.engine.catalogue.file.serialize", boom)  # catalog.json cannot be written
        _study(store, "b", 3)
    assert (ws.catalog_path.read_bytes(), _files(ws)) == before
    assert Store(ws).list_trials("b") == [] and store.list_trials("a") == Store(ws).list_trials("a")
    b = _study(store, "b", 3)
    assert Store(ws).list_trials("b") == b and _in_catalog(ws) == {}


def test_leftover_trial_files_of_a_killed_writer_are_swept(ws: Workspace) -> None:
    store = Store(ws)
    _study(store, "a", 4)
    _study(store, "b", 3)
    folder = ws.root / SEGMENTS_DIR
    # A version never named (killed before the commit), a study nobody registered, a temp file.
    leftovers = [folder / f"trials-{trials_key('a')}-g2.json", folder / f"trials-{trials_key('zz')}-g1.json",
                 folder / f".trials-{trials_key('a')}-g2.json.tmp-1-ab"]
    for path in leftovers:
        path.write_bytes(b'{"meta":{},"trials":{"1":{"study":"a","number":0,"state":"bogus"}}}')
    assert Store(ws).list_trials("a")[0]["state"] == "pruned"
    Store(ws).create_run(preset="p", config={}, config_hash="h")  # a new Store's first write sweeps
    assert not any(p.exists() for p in leftovers)
    assert sorted(os.listdir(folder)) == sorted(e["file"] for e in _catalog(ws)["trial_segments"].values())


# ----------------------------------------------------------------------------- migration


def _old_catalog(ws: Workspace, *, layout: int | None, form: str = "lines") -> tuple[bytes, dict[str, Any]]:
    """catalog.json as an older trialdeck wrote it: layout 1 (no `layout`: finished runs in it too)
    or 2 (runs sealed already), with three ended studies and a running one, their trials and runs."""
    runs, events, trials = {}, {}, {}
    studies = {str(i): {"name": name, "state": "running" if name == "live" else "completed"}
               for i, name in enumerate(("a", "b", "c", "live"), 1)}
    n = 0
    for study in ("a", "b", "c", "live"):
        for number, t in enumerate(_trials(4)):
            n += 1
            done = study != "live" or number < 2
            runs[str(n)] = {"id": f"r{n}", "preset": "p", "state": "completed" if done else "running", "seq": n,
                            "study": study, "trial": number, "config": {}, "history": [],
                            "events": [{"kind": "started", "epoch": None, "message": "m", "time": float(n)}],
                            "created_at": float(n), "finished_at": float(n + 1) if done else None}
            events[str(n)] = {**runs[str(n)]["events"][0], "run": f"r{n}"}
            trials[str(n)] = {**t, "study": study, "run_id": f"r{n}"}
    meta = {"generation": 5, **({"layout": layout} if layout else {}), "next_run": n + 1, "next_seq": n + 1}
    if layout == 2:  # what layout 2 kept: the unfinished runs (KEEP_FINISHED made 0 for the example)
        runs = {k: d for k, d in runs.items() if d["state"] == "running"}
        events = {k: e for k, e in events.items() if e["run"] in {d["id"] for d in runs.values()}}
    state = {"meta": {"1": meta}, **({"segments": {}} if layout == 2 else {}), "runs": runs, "studies": studies,
             "trials": trials, "events": events}
    raw = lines_module.serialize(state, {}, {}) if form == "lines" else json.dumps(state).encode()
    ws.catalog_path.write_bytes(raw)
    return raw, state


@pytest.mark.parametrize(("layout", "form"), [(None, "lines"), (None, "tinydb"), (2, "lines")])
def test_an_old_catalogues_trials_migrate_once(ws: Workspace, layout: int | None, form: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    raw, old = _old_catalog(ws, layout=layout, form=form)
    if form == "lines":  # our own layout is read a line at a time, never parsed whole
        monkeypatch.setattr(migrate, "_whole", lambda *a: pytest.fail("parsed whole"))
    store = Store(ws)
    by_study = {s: [t for t in old["trials"].values() if t["study"] == s] for s in ("a", "b", "c", "live")}
    for name, trials in by_study.items():
        assert store.list_trials(name) == sorted(trials, key=lambda t: t["number"])
    backup = ws.root / ("catalog.json.v1.bak" if layout is None else "catalog.json.v2.bak")
    assert backup.read_bytes() == raw
    now = _catalog(ws)
    assert now["meta"]["1"]["layout"] == LAYOUT
    assert _in_catalog(ws) == {"live": 4}  # 12 ended trials: sealed
    assert sorted(e["study"] for e in now["trial_segments"].values()) == ["a", "b", "c"]
    assert now["studies"] == old["studies"]
    assert {d["id"] for d in now["runs"].values()} == {"r15", "r16"}
    assert _with_tinydb_alone(ws) == {k: sorted(v, key=lambda t: t["number"]) for k, v in by_study.items()}
    if layout is None:
        assert [r["id"] for r in store.list_runs(studies={"a"})] == ["r1", "r2", "r3", "r4"]
    again = ws.catalog_path.read_bytes()
    Store(ws).list_trials("a")  # once: the next open finds layout 3
    assert ws.catalog_path.read_bytes() == again


def test_an_old_catalogue_with_few_ended_trials_keeps_them(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sealed_trials, "SEAL_AT", 100)
    monkeypatch.setattr(migrate, "_whole", lambda *a: pytest.fail("parsed whole"))
    _, old = _old_catalog(ws, layout=None)
    assert Store(ws).list_trials("b")[0]["study"] == "b"
    now = _catalog(ws)
    assert now["trials"] == old["trials"] and now["trial_segments"] == {}
    assert now["meta"]["1"]["layout"] == LAYOUT


def test_the_streamed_migration_seals_runs_past_a_busy_events_table(ws: Workspace,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Each growing table's closing line opens the next: `trials` and `events` follow `runs` on it."""
    monkeypatch.setattr(sealing, "KEEP_FINISHED", 0)
    monkeypatch.setattr(migrate, "_whole", lambda *a: pytest.fail("parsed whole"))
    _, old = _old_catalog(ws, layout=None)
    listed = {r["id"]: r for r in Store(ws).list_runs()}
    assert listed == {d["id"]: d for d in old["runs"].values()}
    assert {e["run"] for e in _catalog(ws)["events"].values()} == {"r15", "r16"}


# ----------------------------------------------------------------------------- the commands, on real studies


def _optuna_study(ws: Workspace, name: str, n: int) -> None:
    """A study as `trialdeck tune` leaves it once it ended: its Optuna journal in the workspace
    (made by plain Optuna through trialdeck's own `create_or_load`), n told trials, and its mirror
    in the catalogue, written by the same `studies.sync` the engine calls."""
    import optuna

    from trialdeck.engine.presets import resolve
    from trialdeck.engine.tuning import study as studies
    from trialdeck.engine.tuning.space import sample

    spec = resolve("seed/random-search", [])
    url = studies.storage_url(ws, name, None)
    study = studies.create_or_load(name, url, preset=spec.preset, config=spec.config(), tune=spec.tune)
    for i in range(n):
        trial = study.ask()
        sample(trial, spec.tune)
        trial.report(1.0 / (i + 2), 1)
        if i % 3 == 2:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, 0.5 - i / 100)
    studies.sync(Store(ws), study, spec.tune, study.user_attrs["trialdeck"], url=url, with_importances=False,
                 fields={"state": "completed", "n_trials": n})


def test_studies_show_and_export_read_sealed_trials(ws: Workspace) -> None:
    from tests.deck import cli

    _optuna_study(ws, "a", 4)
    _optuna_study(ws, "b", 3)
    assert _in_catalog(ws) == {}
    before = Store(ws).list_trials("a")
    assert [t["state"] for t in before] == ["complete", "complete", "pruned", "complete"]
    shown = cli(ws.root, "studies", "show", "a", "--json")  # reconciles with the journal first: nothing changed
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["trials"] == before
    assert _in_catalog(ws) == {}  # still sealed: the reconcile changed no trial
    exported = cli(ws.root, "studies", "export", "b", "--format", "json")
    assert exported.returncode == 0, exported.stderr
    assert [t["number"] for t in json.loads(exported.stdout)["trials"]] == [0, 1, 2]
