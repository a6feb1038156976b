"""kill -9 in the middle of the catalogue's two long writes: `runs import` of 20,000 records, and the
migration of an old-format workspace. Each is killed from the test at a moment its own progress
shows (a batch committed; a first segment written), never after a fixed sleep.

After the kill the catalogue parses, and every file it names parses (with plain json and TinyDB).
The import: the runs present are exactly the records of the batches committed, whole, in order,
and none of the next (README: all or nothing per batch of up to 256 records); the same command
then imports the rest. The migration (a workspace of studies: 20,000 trial runs and their trials):
catalog.json is the old file untouched; the next open migrates it, keeps `catalog.json.v1.bak`,
loses no run and no trial, and leaves no leftover segment or trial file. It is killed once while
it writes run segments and once while it writes the studies' trial files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tinydb import TinyDB

from tests.deck import TRIALDECK, cli, gone, until
from trialdeck.engine.catalogue import lines as lines_module
from trialdeck.engine.catalogue.migrate import BACKUP_SUFFIX
from trialdeck.engine.catalogue.store import LAYOUT, SEGMENTS_DIR, Store
from trialdeck.engine.workspace import Workspace

pytestmark = pytest.mark.slow

RECORDS = 20_000
STUDIES = 20
"""The old workspace's runs are the trials of this many studies (1,000 each), all ended but the last."""
QUIET = {"TRIALDECK_NO_AUTOSTART": "1"}


def _wait(predicate: Callable[[], Any], what: str, proc: subprocess.Popen, timeout: float = 120) -> Any:
    """`predicate`'s first truthy value (tests.deck.until), failing at once if `proc` ended first."""
    def ready() -> Any:
        value = predicate()
        assert value or proc.poll() is None, \
            f"the process ended before {what}: {proc.stderr.read() if proc.stderr else ''}"
        return value

    return until(ready, timeout, what, interval=0.005)


def _kill(proc: subprocess.Popen) -> None:
    assert proc.poll() is None, "it finished before the kill: nothing was interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert gone(proc.pid)


def _readable(ws: Workspace) -> dict[str, dict[str, Any]]:
    """Every run, read with json and TinyDB alone from catalog.json and the files it names."""
    json.loads(ws.catalog_path.read_bytes())
    runs: dict[str, dict[str, Any]] = {}
    with TinyDB(ws.catalog_path, access_mode="r") as db:
        runs.update({r["id"]: dict(r) for r in db.table("runs").all()})
        for seg in db.table("segments").all():
            for name in (seg["file"], seg["index"]):
                json.loads((ws.root / SEGMENTS_DIR / name).read_bytes())
            with TinyDB(ws.root / SEGMENTS_DIR / seg["file"], access_mode="r") as part:
                runs.update({r["id"]: dict(r) for r in part.table("runs").all()})
    return runs


def _readable_trials(ws: Workspace) -> dict[tuple[str, int], dict[str, Any]]:
    """Every trial, by (study, number), read with json and TinyDB alone from catalog.json and the
    trial files its `trial_segments` table names."""
    trials: dict[tuple[str, int], dict[str, Any]] = {}
    with TinyDB(ws.catalog_path, access_mode="r") as db:
        found = db.table("trials").all()
        for seg in db.table("trial_segments").all():
            json.loads((ws.root / SEGMENTS_DIR / seg["file"]).read_bytes())
            with TinyDB(ws.root / SEGMENTS_DIR / seg["file"], access_mode="r") as part:
                found += part.table("trials").all()
    for t in found:
        trials[(t["study"], t["number"])] = dict(t)
    return trials


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, "w") as f:
        for i in range(RECORDS):
            record = {"id": f"r{i + 1}", "preset": "seed/step-decay", "state": "completed",
                      "config": {"optimizer": {"lr": 0.001 * (i % 97 + 1)}, "train": {"epochs": 3, "seed": i}},
                      "history": [{"epoch": e, "train_loss": 1.0 / (e + i % 7), "val_loss": 1.1 / e, "val_acc": 0.9,
                                   "lr": 0.1, "seconds": 1.0} for e in range(1, 4)],
                      "summary": {"best_epoch": 3}, "tags": ["moved"], "note": f"line {i + 1}",
                      "created_at": 1.7e9 + i, "started_at": 1.7e9 + i, "finished_at": 1.7e9 + i + 3}
            f.write(json.dumps(record) + "\n")
            out.append(record)
    return out


def test_kill_9_during_an_import_keeps_whole_batches_and_the_same_command_finishes(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    lines = _records(path)
    home = tmp_path / "ws"
    ws = Workspace(home)
    proc = subprocess.Popen([*TRIALDECK, "runs", "import", str(path), "--home", str(home)],
                            env={**os.environ, **QUIET}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def committed() -> int:
        if not ws.catalog_path.exists():
            return 0
        imports = Store(ws).meta().get("imports") or {}
        return sum(int(d["runs"]) for d in imports.values())

    _wait(committed, "a first committed batch", proc)
    _kill(proc)

    runs = _readable(ws)
    done = committed()
    assert 0 < done < RECORDS
    assert done == 255 or (done - 255) % 256 == 0, done  # whole batches: segment 0 holds r1..r255
    assert sorted(runs, key=lambda r: int(r[1:])) == [f"r{n}" for n in range(1, done + 1)]
    for n in (1, done // 2, done):
        run, record = runs[f"r{n}"], lines[n - 1]
        assert (run["imported_from"], run["config"], run["history"], run["note"]) == \
            (record["id"], record["config"], record["history"], record["note"])

    again = cli(home, "runs", "import", str(path), env=QUIET, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"imported {RECORDS - done:,} run(s)" in again.stdout and f"({done:,} were imported before)" in again.stdout
    store = Store(ws)
    assert store.run_counts() == {"completed": RECORDS}
    for n in (1, done, done + 1, RECORDS):
        run = store.get_run(f"r{n}")
        assert run["imported_from"] == f"r{n}" and run["config"] == lines[n - 1]["config"]


def _old_workspace(home: Path) -> tuple[bytes, dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """A workspace of studies as trialdeck wrote it before segments: 20,000 trial runs of STUDIES
    studies, and their trials, in catalog.json's one-per-line layout."""
    ws = Workspace(home).ensure()
    runs, events, trials = {}, {}, {}
    per_study = RECORDS // STUDIES
    for i in range(1, RECORDS + 1):
        study, number = f"s{(i - 1) // per_study:02d}", (i - 1) % per_study
        state = "queued" if i % 1000 == 0 else "completed"
        runs[str(i)] = {"id": f"r{i}", "preset": "seed/step-decay", "state": state, "seq": i, "config": {"i": i},
                        "history": [{"epoch": 1, "train_loss": 1.0 / i}], "tags": ["old"], "study": study,
                        "trial": number,
                        "events": [{"kind": "started", "epoch": None, "message": "on cpu.0", "time": float(i)}],
                        "created_at": float(i), "finished_at": None if state == "queued" else float(i + 1)}
        events[str(i)] = {**runs[str(i)]["events"][0], "run": f"r{i}"}
        trials[str(i)] = {"study": study, "number": number, "state": "complete" if state != "queued" else "running",
                          "value": 1.0 / i, "params": {"optimizer.lr": 1e-3 * (number % 7 + 1)}, "run_id": f"r{i}",
                          "intermediate": {"1": 1.0 / i}, "started_at": float(i), "finished_at": float(i + 1)}
    studies = {str(k + 1): {"name": f"s{k:02d}", "state": "running" if k == STUDIES - 1 else "completed",
                            "metric": "val_loss", "direction": "minimize"} for k in range(STUDIES)}
    state = {"meta": {"1": {"generation": 9, "next_run": RECORDS + 1, "next_seq": RECORDS + 1}}, "runs": runs,
             "studies": studies, "trials": trials, "events": events}
    raw = lines_module.serialize(state, {}, {})
    ws.catalog_path.write_bytes(raw)
    return raw, runs, trials


@pytest.mark.parametrize("writing", ["runs-", "trials-"])
def test_kill_9_during_the_migration_leaves_the_old_catalogue_and_the_next_open_finishes(tmp_path: Path,
                                                                                       writing: str) -> None:
    home = tmp_path / "ws"
    raw, old, old_trials = _old_workspace(home)
    ws = Workspace(home)
    proc = subprocess.Popen([*TRIALDECK, "queue", "list", "--home", str(home)], env={**os.environ, **QUIET},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = ws.root / SEGMENTS_DIR
    _wait(lambda: folder.is_dir() and any(n.startswith(writing) and n.endswith(".json") for n in os.listdir(folder)),
          f"a first {writing} file", proc)
    _kill(proc)

    assert ws.catalog_path.read_bytes() == raw  # the old file, whole and in use
    assert len(_readable(ws)) == RECORDS and len(_readable_trials(ws)) == RECORDS
    listed = {r["id"]: r for r in Store(ws).list_runs()}  # the next open migrates
    assert listed == {d["id"]: d for d in old.values()}
    assert (ws.root / f"catalog.json{BACKUP_SUFFIX}").read_bytes() == raw
    now = json.loads(ws.catalog_path.read_bytes())
    assert now["meta"]["1"]["layout"] == LAYOUT and len(now["runs"]) == RECORDS // 1000
    # The running study's trials stay; the ended studies' are in their trial files.
    assert {t["study"] for t in now["trials"].values()} == {f"s{STUDIES - 1:02d}"}
    assert len(now["trial_segments"]) == STUDIES - 1
    named = {name for seg in now["segments"].values() for name in (seg["file"], seg["index"])}
    named |= {seg["file"] for seg in now["trial_segments"].values()}
    assert set(os.listdir(folder)) == named  # the killed attempt's files are gone
    assert _readable(ws) == listed
    trials = _readable_trials(ws)
    assert trials == {(t["study"], t["number"]): t for t in old_trials.values()}
    store = Store(ws)
    for study in ("s00", "s07", f"s{STUDIES - 1:02d}"):
        assert store.list_trials(study) == sorted((t for t in old_trials.values() if t["study"] == study),
                                                  key=lambda t: t["number"])
