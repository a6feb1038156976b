"""The catalogue's layout for years of runs, on real files: the working set in catalog.json,
finished runs sealed in segment files, the registry that names them, and the migration of an
older catalog.json.

What must hold (engine/catalogue/sealing.py, segments.py, migrate.py): every run is found and
listed exactly as it was recorded, wherever it lives; a person reads them all with TinyDB alone;
a write of a sealed run makes a new segment version that counts only once catalog.json names it;
reads of unfinished runs never open a segment; an old catalogue migrates once, losing nothing.
Thresholds are made small here so that a few dozen runs seal.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tinydb import TinyDB

from trialdeck.engine.catalogue import lines as lines_module
from trialdeck.engine.catalogue import migrate, sealing
from trialdeck.engine.catalogue.segments import SEGMENT_RUNS
from trialdeck.engine.catalogue.store import LAYOUT, SEGMENTS_DIR, Store
from trialdeck.engine.errors import CatalogCorrupt
from trialdeck.engine.workspace import Workspace

EPOCHS = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_acc": 0.5 + e / 20, "lr": 0.1, "seconds": 1.0}
          for e in range(1, 4)]


@pytest.fixture(autouse=True)
def small_working_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sealing, "SEAL_AT", 6)
    monkeypatch.setattr(sealing, "KEEP_FINISHED", 3)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws").ensure()


def _finish(store: Store, n: int, state: str = "completed", **fields: Any) -> list[str]:
    """n runs queued, started, given three epochs and an event, and ended in `state`."""
    made = store.create_runs([{"preset": "p", "config": {"i": i, "train": {"epochs": 3}}, "config_hash": f"h{i}"}
                              for i in range(n)])
    for r in made:
        store.transition(r["id"], "running", slot="cpu.0", add_events=[{"kind": "started", "message": "on cpu.0"}])
        for entry in EPOCHS:
            store.record_epoch_and_events(r["id"], entry, [])
        store.transition(r["id"], state, **fields)
    return [r["id"] for r in made]


def _catalog(ws: Workspace) -> dict[str, Any]:
    return json.loads(ws.catalog_path.read_bytes())


def _with_tinydb_alone(ws: Workspace) -> dict[str, dict[str, Any]]:
    """Every run, read the way the README tells a person to: catalog.json, then each file its
    `segments` table names."""
    with TinyDB(ws.catalog_path, access_mode="r") as db:
        runs = db.table("runs").all()
        for seg in db.table("segments").all():
            with TinyDB(ws.root / "segments" / seg["file"], access_mode="r") as part:
                runs += part.table("runs").all()
    return {r["id"]: dict(r) for r in runs}


def test_finished_runs_leave_catalog_json_and_every_run_reads_as_recorded(ws: Workspace) -> None:
    store = Store(ws)
    ids = _finish(store, 20)
    queued = store.create_run(preset="p", config={}, config_hash="q")["id"]
    in_file = _catalog(ws)["runs"]
    finished_here = [d for d in in_file.values() if d["state"] == "completed"]
    assert sealing.KEEP_FINISHED <= len(finished_here) <= sealing.SEAL_AT
    assert queued in {d["id"] for d in in_file.values()}
    assert sorted(os.listdir(ws.root / SEGMENTS_DIR)) == ["runs-00000-g3.index.json", "runs-00000-g3.json",
                                                           "runs-00000-g4.index.json", "runs-00000-g4.json"]
    for store_ in (store, Store(ws)):  # the writer's cache, and a fresh process's view
        listed = store_.list_runs()
        assert [r["id"] for r in listed] == [*ids, queued]
        for r in listed[:-1]:
            assert r["history"] == EPOCHS and r["state"] == "completed" and r["events"][0]["kind"] == "started"
            assert store_.get_run(r["id"]) == r
    # Only the working set's runs have lines in the `events` table; a sealed run's are in its record.
    assert {e["run"] for e in _catalog(ws)["events"].values()} <= {d["id"] for d in in_file.values()}
    assert _with_tinydb_alone(ws) == {r["id"]: r for r in Store(ws).list_runs()}


def test_reads_of_unfinished_runs_open_no_segment(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(ws)
    _finish(store, 20)
    store.create_runs([{"preset": "p", "config": {}, "config_hash": "q"}] * 2)
    store.transition("r21", "running")
    fresh = Store(ws)
    monkeypatch.setattr(fresh.segments, "docs", lambda *a, **k: pytest.fail("a segment was read"))
    monkeypatch.setattr(fresh.segments, "briefs", lambda *a, **k: pytest.fail("an index was read"))
    assert [r["id"] for r in fresh.queued()] == ["r22"]
    assert [r["id"] for r in fresh.list_runs("running")] == ["r21"]
    assert [r["id"] for r in fresh.unfinished()] == ["r21", "r22"]
    assert fresh.run_counts() == {"completed": 20, "running": 1, "queued": 1}
    assert fresh.get_run("r22")["state"] == "queued"


def test_a_sealed_run_changes_where_it_is_and_keeps_one_older_version(ws: Workspace) -> None:
    store = Store(ws)
    _finish(store, 20)
    other = Store(ws)
    assert "tags" not in other.get_run("r2")  # its cache holds the segment as it was
    before = {e["segment"]: e["generation"] for e in _catalog(ws)["segments"].values()}[0]
    store.tag_run("r2", add=["best"])
    store.set_note("r2", "the one")
    store.update_run("r3", summary={"best": 1.0})
    assert other.get_run("r2")["tags"] == ["best"] and other.get_run("r2")["note"] == "the one"
    assert Store(ws).get_run("r3")["summary"] == {"best": 1.0}
    now = {e["segment"]: e["generation"] for e in _catalog(ws)["segments"].values()}[0]
    assert now == before + 3
    names = sorted(os.listdir(ws.root / SEGMENTS_DIR))
    assert names == [f"runs-00000-g{now - 1}.index.json", f"runs-00000-g{now - 1}.json",
                     f"runs-00000-g{now}.index.json", f"runs-00000-g{now}.json"]
    assert "r2" not in {d["id"] for d in _catalog(ws)["runs"].values()}  # still sealed


def test_a_sealed_failed_run_resumed_comes_back_to_the_working_set(ws: Workspace) -> None:
    store = Store(ws)
    _finish(store, 20, "failed", error="boom")
    assert "r1" not in {d["id"] for d in _catalog(ws)["runs"].values()}
    with pytest.raises(ValueError, match="cannot go from failed to running"):
        store.transition("r1", "running")
    record = store.transition("r1", "queued", to_back=True)
    assert record["state"] == "queued" and record["error"] is None and record["history"] == EPOCHS
    assert "r1" in {d["id"] for d in _catalog(ws)["runs"].values()}
    entry = next(iter(_catalog(ws)["segments"].values()))
    seg = json.loads((ws.root / SEGMENTS_DIR / entry["file"]).read_bytes())
    assert "1" not in seg["runs"] and entry["states"] == {"failed": entry["runs"]}
    assert [r["id"] for r in Store(ws).queued()] == ["r1"]


def test_runs_of_a_study_still_running_stay_in_the_working_set(ws: Workspace) -> None:
    store = Store(ws)
    store.upsert_study("s", {"state": "running"})
    made = store.create_runs([{"preset": "p", "config": {}, "config_hash": "h", "study": "s", "trial": i}
                              for i in range(10)])
    for r in made:
        store.transition(r["id"], "running")
        store.transition(r["id"], "completed")
    _finish(store, 10)
    here = {d["id"] for d in _catalog(ws)["runs"].values()}
    assert {r["id"] for r in made} <= here
    assert [r["trial"] for r in Store(ws).list_runs(studies={"s"})] == list(range(10))
    store.upsert_study("s", {"state": "completed"})
    _finish(store, 1)  # the next run to end seals the study's runs too
    assert not {r["id"] for r in made} & {d["id"] for d in _catalog(ws)["runs"].values()}
    assert [r["trial"] for r in Store(ws).list_runs(studies={"s"})] == list(range(10))


def test_a_failed_write_leaves_no_new_segment_behind(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(ws)
    _finish(store, 20)
    before = (ws.catalog_path.read_bytes(), sorted(os.listdir(ws.root / SEGMENTS_DIR)))

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(lines_module, "serialize", boom)  # catalog.json cannot be written: no commit
    monkeypatch.setattr("trialdeck.engine.catalogue.file.serialize", boom)
    with pytest.raises(OSError):
        store.tag_run("r1", add=["x"])
    monkeypatch.undo()
    assert (ws.catalog_path.read_bytes(), sorted(os.listdir(ws.root / SEGMENTS_DIR))) == before
    assert "tags" not in store.get_run("r1") and "tags" not in Store(ws).get_run("r1")
    assert store.tag_run("r1", add=["x"])["tags"] == ["x"]


def test_leftovers_of_a_killed_writer_are_ignored_and_swept(ws: Workspace) -> None:
    store = Store(ws)
    _finish(store, 20)
    entry = next(iter(_catalog(ws)["segments"].values()))
    folder = ws.root / SEGMENTS_DIR
    # A version written but never named by catalog.json (killed before the commit), an older one,
    # a segment nobody registered, and a temp file.
    uncommitted = folder / f"runs-00000-g{entry['generation'] + 1}.json"
    uncommitted.write_bytes(b'{"meta":{},"runs":{"1":{"id":"r1","state":"bogus"}}}')
    leftovers = [uncommitted, folder / "runs-00000-g1.json", folder / "runs-00007-g1.json",
                 folder / ".runs-00000-g9.json.tmp-1-ab"]
    for path in leftovers[1:]:
        path.write_bytes(b"{}")
    assert Store(ws).get_run("r1")["state"] == "completed"
    Store(ws).create_run(preset="p", config={}, config_hash="h")  # a new Store's first write sweeps
    assert not any(p.exists() for p in leftovers)
    assert (folder / entry["file"]).exists()


def test_a_lost_index_is_made_again_from_its_segment(ws: Workspace) -> None:
    store = Store(ws)
    _finish(store, 20)
    entry = next(iter(_catalog(ws)["segments"].values()))
    (ws.root / SEGMENTS_DIR / entry["index"]).write_bytes(b"")  # e.g. a power cut before it reached the disk
    briefs = Store(ws).segment_briefs(entry)
    assert sorted(map(int, briefs)) == list(range(1, entry["runs"] + 1))
    assert briefs["1"]["epochs"] == 3 and briefs["1"]["curve"] == [1.0, 0.5, 0.333333]


def test_a_corrupt_segment_is_reported_and_left_untouched(ws: Workspace) -> None:
    store = Store(ws)
    _finish(store, 20)
    entry = next(iter(_catalog(ws)["segments"].values()))
    path = ws.root / SEGMENTS_DIR / entry["file"]
    bad = path.read_bytes()[:100]
    path.write_bytes(bad)
    with pytest.raises(CatalogCorrupt, match="is corrupt .* left untouched"):
        Store(ws).get_run("r1")
    assert path.read_bytes() == bad
    assert Store(ws).get_run("r20")["state"] == "completed"  # the working set still reads


def test_iter_runs_streams_in_run_order_with_its_filters(ws: Workspace) -> None:
    store = Store(ws)
    _finish(store, 12)
    store.tag_run("r4", add=["x"])
    store.tag_run("r11", add=["x"])
    store.create_run(preset="p", config={}, config_hash="q")
    assert [r["id"] for r in store.iter_runs()] == [f"r{n}" for n in range(1, 14)]
    assert [r["id"] for r in store.iter_runs(tags=["x"])] == ["r4", "r11"]
    assert [r["id"] for r in store.iter_runs("queued")] == ["r13"]
    for n in range(1, 13):
        store.update_run(f"r{n}", created_at=1000.0 + n)
    assert [r["id"] for r in store.iter_runs(since=1010.0)] == ["r10", "r11", "r12", "r13"]
    assert [r["id"] for r in store.iter_runs(omit=("config", "history"))][:1] == ["r1"]
    assert "history" not in next(store.iter_runs(omit=("history",)))


# ----------------------------------------------------------------------------- migration


def _old_catalog(ws: Workspace, n: int, *, layout: str = "lines") -> tuple[bytes, dict[str, Any]]:
    """A catalog.json as trialdeck wrote it before segments: every run in it, no `layout`."""
    runs, events = {}, {}
    for i in range(1, n + 1):
        state = "queued" if i % 10 == 0 else "running" if i % 10 == 5 else "completed"
        runs[str(i)] = {"id": f"r{i}", "preset": "p", "state": state, "seq": i, "config": {"i": i}, "history": EPOCHS,
                        "events": [{"kind": "started", "epoch": None, "message": "m", "time": float(i)}],
                        "created_at": float(i), "finished_at": float(i + 1) if state == "completed" else None}
        events[str(i)] = {"kind": "started", "epoch": None, "message": "m", "time": float(i), "run": f"r{i}"}
    state = {"meta": {"1": {"generation": 41, "next_run": n + 1, "next_seq": n + 7}}, "runs": runs,
             "studies": {"1": {"name": "s", "state": "completed"}}, "trials": {"1": {"study": "s", "number": 0}},
             "events": events}
    raw = lines_module.serialize(state, {}, {}) if layout == "lines" else json.dumps(state).encode()
    ws.catalog_path.write_bytes(raw)
    return raw, state


@pytest.mark.parametrize("layout", ["lines", "tinydb"])
def test_an_old_catalogue_migrates_once_and_loses_nothing(ws: Workspace, layout: str) -> None:
    raw, old = _old_catalog(ws, 600, layout=layout)
    store = Store(ws)
    listed = {r["id"]: r for r in store.list_runs()}
    assert listed == {d["id"]: d for d in old["runs"].values()}
    assert (ws.root / f"catalog.json{migrate.BACKUP_SUFFIX}").read_bytes() == raw
    now = _catalog(ws)
    assert now["meta"]["1"]["layout"] == LAYOUT and now["meta"]["1"]["next_seq"] == 607
    assert {d["state"] for d in now["runs"].values()} == {"queued", "running"}
    assert {e["run"] for e in now["events"].values()} == {d["id"] for d in now["runs"].values()}
    assert now["studies"] == old["studies"] and now["trials"] == old["trials"]
    assert len(now["segments"]) == 600 // SEGMENT_RUNS + 1
    assert _with_tinydb_alone(ws) == listed
    again = ws.catalog_path.read_bytes()
    assert Store(ws).create_run(preset="p", config={}, config_hash="h")["id"] == "r601"
    assert Store(ws).get_run("r1") == listed["r1"] and again != ws.catalog_path.read_bytes()


def test_a_corrupt_old_catalogue_is_reported_and_not_migrated(ws: Workspace) -> None:
    raw, _ = _old_catalog(ws, 40)
    bad = raw[: len(raw) // 2]
    ws.catalog_path.write_bytes(bad)
    with pytest.raises(CatalogCorrupt, match="is corrupt"):
        Store(ws).list_runs()
    assert ws.catalog_path.read_bytes() == bad
    assert not (ws.root / f"catalog.json{migrate.BACKUP_SUFFIX}").exists()
