"""The catalogue store, the workspace and metric streams, on real files.

Concurrency and crash tests use real subprocesses: the failure modes they
guard against (lost writes, stale caches, half-written JSON) only show up
across processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest
from tinydb import TinyDB

from tests.deck import until
from trialdeck.engine.catalogue.lines import serialize
from trialdeck.engine.catalogue.metrics import JsonlMetricsWriter, read_jsonl
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.errors import BadInput, CatalogCorrupt
from trialdeck.engine.workspace import Workspace, atomic_write

REPO = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _config(i: int = 0) -> dict:
    """A resolved config about the size of a real one (~1.5 KB of JSON)."""
    return {
        "description": "Step decay from the article, composed from base/digits-mlp",
        "extends": ["base/digits-mlp", "seed/step-decay"],
        "data": {"dataset": "digits", "train_fraction": 1.0, "val_fraction": 0.2, "batch_size": 64},
        "model": {
            "kind": "mlp",
            "hidden": [256, 256],
            "activation": "relu",
            "batch_norm": "none",
            "dropout": [0.25, 0.25],
        },
        "regularization": {"l1": 0.0, "l2": 0.01},
        "optimizer": {"name": "adam", "lr": 0.001 * (1 + i % 7), "momentum": 0.9, "weight_decay": 0.0},
        "schedule": {"kind": "step", "drop": 0.5, "epochs_drop": 10, "gamma": 0.95, "t_max": 50, "patience": 3},
        "augment": {
            "rotation": 20.0,
            "width_shift": 0.2,
            "height_shift": 0.2,
            "shear": 0.2,
            "zoom": 0.2,
            "horizontal_flip": True,
            "fill_mode": "nearest",
        },
        "early_stopping": {"enabled": True, "monitor": "val_loss", "patience": 5, "min_delta": 0.0, "restore_best": True},
        "train": {"epochs": 50, "seed": i, "device": "cuda:0", "num_workers": 0, "checkpoint_every": 5},
        "tune": {
            "sampler": "tpe",
            "pruner": "median",
            "metric": "val_loss",
            "direction": "minimize",
            "trials": 50,
            "space": {
                "optimizer.lr": {"float": [1e-4, 1e-1], "log": True},
                "optimizer.name": {"choices": ["rmsprop", "adam", "sgd"]},
                "model.hidden": {"choices": [[64, 64], [256, 256], [512, 512, 512]]},
                "model.dropout": {"float": [0.25, 0.75]},
                "data.batch_size": {"int": [28, 128]},
            },
        },
        "source": {"preset_path": "/home/user/.trialdeck/presets/seed/step-decay.toml", "overrides": ["train.epochs=50"]},
    }


def _run_python(script: str, home: Path, *args: str, **popen: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRIALDECK_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], env=env, **popen)  # type: ignore[arg-type]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.resolve(tmp_path / "home")


@pytest.fixture
def store(ws: Workspace) -> Store:
    return Store(ws)


# ----------------------------------------------------------------- workspace


def test_workspace_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIALDECK_HOME", str(tmp_path / "env"))
    assert Workspace.resolve(tmp_path / "flag").root == tmp_path / "flag"
    assert Workspace.resolve().root == tmp_path / "env"
    monkeypatch.delenv("TRIALDECK_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert Workspace.resolve().root == tmp_path / "user" / ".trialdeck"


def test_workspace_and_catalog_are_private(ws: Workspace) -> None:
    old = os.umask(0o022)
    try:
        store = Store(ws)
        store.create_run(preset="p", config={}, config_hash="h")
        store.create_run(preset="p", config={}, config_hash="h")
    finally:
        os.umask(old)
    for d in (ws.root, ws.presets_dir, ws.data_dir, ws.runs_dir, ws.studies_dir):
        assert d.is_dir() and _mode(d) == 0o700, d
    for f in (ws.catalog_path, store.backup_path, store.lock_path):
        assert _mode(f) == 0o600, f
    run_dir = ws.run_dir("r12")
    assert run_dir == ws.runs_dir / "r12" and _mode(run_dir) == 0o700


@pytest.mark.parametrize("bad", ["../x", "r1/../../etc", "r1\n", "/etc", "r", "12", ""])
def test_run_dir_rejects_ids_that_could_escape(ws: Workspace, bad: str) -> None:
    with pytest.raises(BadInput):
        ws.run_dir(bad)
    assert not (ws.root.parent / "x").exists()


def test_atomic_write_replaces_whole_file_and_keeps_backup(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write(target, b"one", backup=tmp_path / "f.json.bak")
    atomic_write(target, b"two", backup=tmp_path / "f.json.bak")
    assert target.read_bytes() == b"two"
    assert (tmp_path / "f.json.bak").read_bytes() == b"one"
    assert _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "f.json.bak"]  # no temp files left


# -------------------------------------------------------------------- runs


def test_run_round_trip_and_timestamps(store: Store) -> None:
    before = time.time()
    run = store.create_run(preset="seed/step-decay", config=_config(), config_hash="abc", priority=2, device="cuda:0")
    assert run["id"] == "r1" and run["state"] == "queued" and run["priority"] == 2
    assert before <= run["created_at"] == run["queued_at"] <= time.time()
    assert run["started_at"] is None and run["finished_at"] is None and run["history"] == []

    assert store.get_run("r1") == run == store.get_run("1") == store.get_run(1)
    assert store.get_run("r99") is None
    assert [r["id"] for r in store.list_runs()] == ["r1"]

    running = store.transition("r1", "running", worker=4242)
    assert running["state"] == "running" and running["worker"] == 4242 and running["attempts"] == 1
    assert running["started_at"] >= run["queued_at"]
    store.record_epoch_and_events(
        "r1", {"epoch": 0, "train_loss": 1.2, "val_loss": 1.3, "val_acc": 0.5, "lr": 0.1, "seconds": 0.4}, [])
    store.record_epoch_and_events(
        "r1",
        {"epoch": 1, "train_loss": 0.9, "val_loss": 1.0, "val_acc": 0.7, "lr": 0.05, "seconds": 0.4},
        [{"kind": "lr_changed", "epoch": 1, "message": "lr 0.1 -> 0.05"}],
    )
    done = store.transition("r1", "early_stopped", add_events=[{"kind": "early_stopped", "epoch": 1, "message": "no gain"}])
    assert done["finished_at"] >= running["started_at"] and done["early_stopped_at"] == done["finished_at"]
    assert [h["epoch"] for h in done["history"]] == [0, 1]
    assert [e["kind"] for e in done["events"]] == ["lr_changed", "early_stopped"]
    assert [(e["run"], e["kind"]) for e in store.events()] == [("r1", "lr_changed"), ("r1", "early_stopped")]
    assert store.list_runs(status="early_stopped")[0]["id"] == "r1"
    assert store.list_runs(status="queued") == []

    # What is on disk is what a TinyDB-only script would read.
    with TinyDB(store.path, access_mode="r") as db:
        assert db.table("runs").get(doc_id=1)["state"] == "early_stopped"


def test_illegal_transition_is_refused_and_nothing_changes(store: Store) -> None:
    store.create_run(preset="p", config={}, config_hash="h")
    store.transition("r1", "running")
    store.transition("r1", "completed")
    on_disk = store.path.read_bytes()
    with pytest.raises(ValueError, match="cannot go from completed to running"):
        store.transition("r1", "running")
    assert store.path.read_bytes() == on_disk
    assert store.get_run("r1")["state"] == "completed"
    with pytest.raises(BadInput):
        store.transition("r1", "exploded")
    with pytest.raises(ValueError):
        store.update_run("r1", state="queued")
    with pytest.raises(BadInput):
        store.transition("r7", "running")


def test_requeue_clears_failure(store: Store) -> None:
    store.create_run(preset="p", config={}, config_hash="h")
    store.transition("r1", "running")
    failed = store.transition("r1", "failed", error="RuntimeError: CUDA out of memory at epoch 3")
    assert failed["error"] == "RuntimeError: CUDA out of memory at epoch 3" and failed["finished_at"]
    again = store.transition("r1", "queued")
    assert again["error"] is None and again["finished_at"] is None and again["state"] == "queued"
    assert store.transition("r1", "running")["attempts"] == 2


def test_failed_batch_leaves_catalog_unchanged(store: Store) -> None:
    store.create_run(preset="p", config={}, config_hash="h")
    with pytest.raises(TypeError):
        store.create_runs(
            [
                {"preset": "ok", "config": {}, "config_hash": "h"},
                {"preset": "bad", "config": {"x": object()}, "config_hash": "h"},
            ]
        )
    assert [r["id"] for r in store.list_runs()] == ["r1"]
    assert store.create_run(preset="p", config={}, config_hash="h")["id"] == "r2"


def test_ids_are_not_reused_and_records_are_copies(store: Store) -> None:
    run = store.create_run(preset="p", config={"a": [1]}, config_hash="h")
    run["config"]["a"].append(2)
    assert store.get_run("r1")["config"] == {"a": [1]}
    ids = [r["id"] for r in store.create_runs([{"preset": "p", "config": {}, "config_hash": "h"}] * 3)]
    assert ids == ["r2", "r3", "r4"]


def test_queue_order_move_top_and_clear(store: Store) -> None:
    for prio in (0, 5, 0, 5):
        store.create_run(preset="p", config={}, config_hash="h", priority=prio)
    assert [r["id"] for r in store.queued()] == ["r2", "r4", "r1", "r3"]
    store.move_top("r3")
    assert [r["id"] for r in store.queued()] == ["r3", "r2", "r4", "r1"]
    assert store.get_run("r3")["priority"] == 6
    store.set_priority("r1", 100)
    assert store.queued()[0]["id"] == "r1"
    cancelled = store.cancel_queued("r2")
    assert cancelled["state"] == "cancelled" and cancelled["events"][0]["kind"] == "cancelled"
    with pytest.raises(BadInput):
        store.move_top("r2")
    with pytest.raises(BadInput):
        store.cancel_queued("r2")
    store.transition("r4", "running")
    assert store.clear_queue() == 2
    assert store.queued() == []
    assert [r["state"] for r in store.list_runs()] == ["cancelled", "cancelled", "cancelled", "running"]


def test_studies_trials_and_events(store: Store) -> None:
    store.upsert_study("lr-sweep", {"preset": "seed/tpe-mnist", "metric": "val_loss", "direction": "minimize"})
    store.upsert_study("lr-sweep", {"best": {"number": 1, "value": 0.3, "params": {"lr": 0.01}}})
    study = store.get_study("lr-sweep")
    assert study["metric"] == "val_loss" and study["best"]["number"] == 1 and study["name"] == "lr-sweep"
    assert store.get_study("nope") is None
    store.upsert_study("another", {"preset": "x"})
    assert [s["name"] for s in store.list_studies()] == ["another", "lr-sweep"]

    store.upsert_trials("lr-sweep", [{"number": 1, "state": "running", "params": {"lr": 0.01}}])
    store.upsert_trials("lr-sweep", [{"number": 0, "state": "complete", "value": 0.5}])
    store.upsert_trials("lr-sweep", [{"number": 1, "state": "complete", "value": 0.3}])
    trials = store.list_trials("lr-sweep")
    assert [(t["number"], t["state"]) for t in trials] == [(0, "complete"), (1, "complete")]
    assert trials[1]["params"] == {"lr": 0.01} and store.list_trials("another") == []

    store.create_run(preset="p", config={}, config_hash="h")
    for i in range(3):
        store.record_epoch_and_events(
            "r1", None, [{"kind": "checkpoint", "epoch": i, "message": f"saved epoch {i}", "time": 100.0 + i}])
    assert [e["epoch"] for e in store.events(since=100.0)] == [1, 2]
    assert [e["epoch"] for e in store.events(limit=1)] == [2]


def test_list_runs_of_some_studies(store: Store) -> None:
    store.create_run(preset="p", config={}, config_hash="h")
    store.create_run(preset="p", config={}, config_hash="h", study="a", trial=0)
    store.create_run(preset="p", config={}, config_hash="h", study="b", trial=0)
    store.create_run(preset="p", config={}, config_hash="h", study="a", trial=1)
    store.transition("r4", "running")
    assert [r["id"] for r in store.list_runs(studies={"a"})] == ["r2", "r4"]
    assert [r["id"] for r in store.list_runs(studies={"a", "b"})] == ["r2", "r3", "r4"]
    assert [r["id"] for r in store.list_runs("running", studies=["a"])] == ["r4"]
    assert store.list_runs(studies=()) == [] and len(store.list_runs()) == 4


def test_version_changes_only_on_write(store: Store) -> None:
    v0 = store.version()
    store.create_run(preset="p", config={}, config_hash="h")
    v1 = store.version()
    store.list_runs()
    assert v1 != v0 and store.version() == v1
    store.upsert_study("s", {"a": 1})
    v2 = store.version()
    store.upsert_study("s", {"a": 1})  # unchanged: no rewrite
    assert v2 != v1 and store.version() == v2


def test_incremental_encoding_matches_a_full_rewrite(ws: Workspace) -> None:
    store = Store(ws)  # one long-lived writer, as the engine is: its cache is warm throughout
    store.create_runs([{"preset": "p", "config": {"i": i}, "config_hash": "h"} for i in range(10)])
    for i in range(1, 11):
        store.get_run(i)
    store.transition("r3", "running", worker=7)
    store.record_epoch_and_events("r3", {"epoch": 0, "train_loss": 0.5}, [{"kind": "checkpoint", "message": "saved"}])
    store.update_run("r5", summary={"best_val_loss": 0.25})
    store.move_top("r7")
    store.set_priority("r9", -1)
    store.cancel_queued("r2")
    store.upsert_study("s", {"metric": "val_loss"})
    store.upsert_trials("s", [{"number": 0, "state": "complete"}])
    store.clear_queue()
    raw = store.path.read_bytes()
    assert serialize(orjson.loads(raw), {}, {}) == raw  # the incremental assembly is what a full encode writes
    on_disk = Store(ws).list_runs()  # a cold reader parses the file
    assert on_disk == store.list_runs()  # the writer's in-memory view
    assert on_disk[2]["history"] == [{"epoch": 0, "train_loss": 0.5}] and on_disk[4]["summary"] == {"best_val_loss": 0.25}
    assert on_disk[6]["priority"] == 1 and on_disk[8]["priority"] == -1
    assert [r["state"] for r in on_disk].count("cancelled") == 9


# ------------------------------------------------------------ other processes

_READER = """
import sys
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.workspace import Workspace
store = Store(Workspace.resolve())
for line in sys.stdin:
    cmd, run_id = line.split()
    if cmd == "get":
        run = store.get_run(run_id)
        print(run["state"] if run else "missing", flush=True)
    elif cmd == "start":
        print(store.transition(run_id, "running")["state"], flush=True)
"""


def test_other_process_sees_writes_immediately(ws: Workspace) -> None:
    store = Store(ws)
    store.create_run(preset="p", config={}, config_hash="h")
    child = _run_python(_READER, ws.root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:

        def ask(line: str) -> str:
            child.stdin.write(line + "\n")
            child.stdin.flush()
            return child.stdout.readline().strip()

        assert ask("get r1") == "queued"
        store.create_run(preset="p", config={}, config_hash="h")
        assert ask("get r2") == "queued"  # the child's cached state must not hide r2
        store.transition("r2", "running")
        assert ask("get r2") == "running"
        assert store.get_run("r1")["state"] == "queued"  # warm our cache
        assert ask("start r1") == "running"
        assert store.get_run("r1")["state"] == "running"  # and theirs shows up here
        assert store.create_run(preset="p", config={}, config_hash="h")["id"] == "r3"
    finally:
        child.stdin.close()
        child.wait(timeout=30)


_ENQUEUER = """
import os, sys, time
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.workspace import Workspace
tag, go = sys.argv[1], sys.argv[2]
store = Store(Workspace.resolve())
open(go + "." + tag, "w").close()  # ready: imported and at the gate
while not os.path.exists(go):
    time.sleep(0.001)
for i in range(25):
    store.create_run(preset=tag, config={"i": i}, config_hash=f"{tag}-{i}")
"""


def test_four_processes_enqueue_concurrently(ws: Workspace, tmp_path: Path) -> None:
    Store(ws)  # create the workspace once, as the CLI would
    go = tmp_path / "go"
    procs = [_run_python(_ENQUEUER, ws.root, f"p{k}", str(go)) for k in range(4)]
    def at_the_gate() -> bool:  # every process imported, at the gate
        assert all(p.poll() is None for p in procs), "an enqueuer died before the gate"
        return all(Path(f"{go}.p{k}").exists() for k in range(4))

    until(at_the_gate, 120, "the enqueuers to reach the gate", interval=0.01)
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]

    data = json.loads(ws.catalog_path.read_bytes())
    runs = list(data["runs"].values())
    assert len(runs) == 100
    assert sorted(int(r["id"][1:]) for r in runs) == list(range(1, 101))
    assert len({r["seq"] for r in runs}) == 100
    for k in range(4):
        assert sorted(r["config_hash"] for r in runs if r["preset"] == f"p{k}") == sorted(f"p{k}-{i}" for i in range(25))
    assert len(Store(ws).list_runs()) == 100


_HAMMER = """
import sys
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.workspace import Workspace
store = Store(Workspace.resolve())
print("ready", flush=True)
while True:
    run = store.create_run(preset="p", config={"x": "y" * 500}, config_hash="h")
    store.transition(run["id"], "running")
    store.record_epoch_and_events(run["id"], {"epoch": 0, "train_loss": 1.0}, [])
    store.transition(run["id"], "completed")
"""


def test_kill_9_mid_write_never_leaves_a_broken_catalog(ws: Workspace) -> None:
    rng = random.Random(1234)
    Store(ws)
    counts = []
    for _ in range(10):
        child = _run_python(_HAMMER, ws.root, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.02, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        data = json.loads(ws.catalog_path.read_bytes())  # must parse, every time
        # Finished runs past the working set are sealed into the segment files catalog.json names
        # (engine/catalogue/sealing.py): every file it names must parse too, and hold the rest.
        runs = dict(data["runs"])
        for seg in data.get("segments", {}).values():
            runs.update(json.loads((ws.root / "segments" / seg["file"]).read_bytes())["runs"])
        assert sorted(map(int, runs)) == list(range(1, len(runs) + 1))  # no id lost or reused
        counts.append(len(runs))
        fresh = Store(ws)
        assert len(fresh.list_runs()) == len(runs)
    assert counts == sorted(counts) and counts[-1] > counts[0]  # writes really were interrupted mid-stream
    survivor = Store(ws)
    survivor.create_run(preset="p", config={}, config_hash="h")  # still writable after all that
    assert not list(ws.root.glob(".catalog.json.tmp-*"))  # leftovers swept


# -------------------------------------------------------------- corruption


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda good: good[: len(good) // 2], id="truncated"),
        pytest.param(lambda good: good[:40] + b"\0" * (len(good) - 40), id="nul-padded"),
        pytest.param(lambda good: good + b"\0" * 64, id="nul-tail"),
    ],
)
def test_corrupt_catalog_is_reported_and_left_untouched(ws: Workspace, damage) -> None:
    store = Store(ws)
    store.create_run(preset="p", config={}, config_hash="h")
    store.create_run(preset="p", config={}, config_hash="h")
    assert store.backup_path.exists()  # after two writes
    assert len(json.loads(store.backup_path.read_bytes())["runs"]) == 1

    bad = damage(ws.catalog_path.read_bytes())
    ws.catalog_path.write_bytes(bad)
    fresh = Store(ws)
    for attempt in (lambda: fresh.list_runs(), lambda: fresh.create_run(preset="p", config={}, config_hash="h")):
        with pytest.raises(CatalogCorrupt) as caught:
            attempt()
        message = str(caught.value)
        assert "\n" not in message
        assert str(ws.catalog_path) in message and "untouched" in message
        assert "catalog.json.bak" in message and "catalog.json.corrupt-" in message
        assert ws.catalog_path.read_bytes() == bad
    copies = list(ws.root.glob("catalog.json.corrupt-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == bad and copies[0].name in message
    # The backup still restores a working catalogue.
    os.replace(store.backup_path, ws.catalog_path)
    assert [r["id"] for r in Store(ws).list_runs()] == ["r1"]


def test_empty_or_missing_catalog_is_empty(ws: Workspace) -> None:
    store = Store(ws)
    assert store.list_runs() == [] and store.version() == ()
    ws.catalog_path.write_bytes(b"")
    assert store.list_runs() == [] and store.queued() == []
    assert store.create_run(preset="p", config={}, config_hash="h")["id"] == "r1"


def test_catalog_written_by_tinydb_alone_is_read_and_extended(ws: Workspace) -> None:
    ws.ensure()
    with TinyDB(ws.catalog_path) as db:  # e.g. a user's script, or an older file without counters
        db.table("runs").insert({"id": "r1", "preset": "p", "state": "completed", "seq": 1})
    store = Store(ws)
    assert store.get_run("r1")["state"] == "completed"
    assert store.create_run(preset="p", config={}, config_hash="h")["id"] == "r2"
    assert [r["id"] for r in store.list_runs()] == ["r1", "r2"]


# ----------------------------------------------------------------- metrics


def test_metrics_stream_incremental_and_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path) == ([], 0)
    with JsonlMetricsWriter(path) as writer:
        writer.write({"step": 0, "loss": 2.0})
        writer.write({"step": 1, "loss": float("nan")})
    assert _mode(path) == 0o600
    records, offset = read_jsonl(path)
    assert records == [{"step": 0, "loss": 2.0}, {"step": 1, "loss": None}]
    assert offset == path.stat().st_size
    assert read_jsonl(path, offset) == ([], offset)

    with open(path, "ab") as f:  # a writer killed mid-line
        f.write(b'{"step": 2, "lo')
    assert read_jsonl(path, offset) == ([], offset)  # not consumed, not skipped past

    with JsonlMetricsWriter(path) as writer:  # the next writer starts a fresh line
        writer.write({"step": 3, "loss": 1.0})
    records, end = read_jsonl(path, offset)
    assert records == [{"step": 3, "loss": 1.0}] and end == path.stat().st_size

    with open(path, "ab") as f:  # a line completed in two writes is read once whole
        f.write(b'{"step": 4, ')
        assert read_jsonl(path, end) == ([], end)
        f.write(b'"loss": 0.5}\n')
    assert read_jsonl(path, end)[0] == [{"step": 4, "loss": 0.5}]


# -------------------------------------------------------------------- scale (timings: bench/bench_store.py)


def test_ten_thousand_runs_list_whole_and_a_table_reads_them_without_configs(ws: Workspace) -> None:
    """Correctness at scale only; how long it takes is measured by bench/bench_store.py, not printed here."""
    store = Store(ws)
    cfg = _config()
    assert 1200 <= len(orjson.dumps(cfg)) <= 2000
    for i in range(1000):
        store.create_run(preset="seed/step-decay", config=cfg, config_hash=f"h{i}")
    for start in range(1000, 10000, 1000):
        store.create_runs([{"preset": "seed/step-decay", "config": cfg, "config_hash": f"h{start + i}"} for i in range(1000)])
    cold = Store(ws).list_runs()  # a fresh process: parse the whole file
    warm = store.list_runs()  # unchanged file: cached parse
    table = store.list_runs(omit=("config",))  # what a runs table needs
    assert "config" not in table[0] and table[0]["preset"] == "seed/step-decay"
    assert len(cold) == len(warm) == len(table) == 10000
    assert cold == warm and [r["id"] for r in table] == [f"r{i}" for i in range(1, 10001)]
    assert store.create_run(preset="seed/step-decay", config=cfg, config_hash="last")["id"] == "r10001"
