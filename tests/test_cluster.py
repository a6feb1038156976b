"""Runs placed on a Dask cluster: what only a cluster has (tests/test_placement.py holds what both
backends share). Real `dask scheduler` and `dask worker` processes on 127.0.0.1, CPU only:

- a worker killed (SIGKILL) mid-run: its run moves to the other worker and completes, resumed
  from the checkpoint that came back, its history without a gap or a duplicate;
- the scheduler killed mid-run: the run is interrupted, the engine stays healthy and says so
  (`engine status`), the local queue keeps what it holds, and once a scheduler is back the runs
  go on;
- a 6-trial study, and a script run, trained on the cluster's workers;
- a bad `cluster` setting is one plain line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.dask_cluster import DaskCluster
from tests.deck import Deck, cli, one_line

REPO = Path(__file__).resolve().parents[1]
LONG = ("--set", "train.epochs=300", "--set", "train.checkpoint_seconds=0.3")

slow = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    pytest.importorskip("distributed", reason="the cluster extra is not installed (pip install -e '.[cluster]')")
    cluster = DaskCluster(tmp_path / "dask")
    cluster.root.mkdir()
    yield cluster.start("w1", "w2")
    cluster.stop()


@pytest.fixture
def engine_toml(cluster: DaskCluster) -> str:
    """The `deck` fixture's engine (tests/conftest.py) places runs on this test's cluster."""
    return f'cluster = "{cluster.url}"\n'


def record(deck: Deck, run_id: str) -> dict:
    return deck.store.get_run(run_id)


def wait_state(deck: Deck, run_id: str, states: set[str], timeout: float = 240) -> dict:
    return deck.wait(lambda: (r := record(deck, run_id))["state"] in states and r, timeout,
                     lambda: f"{run_id} to reach {states} (now {record(deck, run_id)['state']})", interval=0.1)


def epochs(run: dict) -> list[int]:
    return [h["epoch"] for h in run.get("history") or []]


def kinds(run: dict) -> list[str]:
    return [e["kind"] for e in run["events"] if e["kind"] not in ("checkpoint", "lr_changed")]


@slow
def test_a_killed_worker_moves_its_run_to_the_other_worker(deck, cluster):
    run_id = deck.json("run", "seed/step-decay", *LONG)["id"]
    deck.wait(lambda: record(deck, run_id)["state"] == "running" and deck.ws.checkpoint_path(run_id).exists()
              and len(epochs(record(deck, run_id))) >= 3, 180, "a checkpoint back from the worker")
    first = record(deck, run_id)["host"]
    cluster.kill_worker(first)
    run = wait_state(deck, run_id, {"completed", "failed"})
    assert run["state"] == "completed", run.get("error")
    assert run["host"] != first and run["host"] in ("w1", "w2")
    assert epochs(run) == list(range(1, 301)), "no gap or duplicate in the history"
    assert kinds(run)[:5] == ["started", "interrupted", "requeued", "started", "resumed"], kinds(run)
    interrupted = next(e for e in run["events"] if e["kind"] == "interrupted")
    assert f"Dask worker {first}" in interrupted["message"] and "left the cluster" in interrupted["message"]
    resumed = next(e for e in run["events"] if e["kind"] == "resumed")
    assert resumed["epoch"] >= 1, "it went on from a checkpoint, not from scratch"
    assert run["attempts"] == 2


@slow
def test_a_scheduler_that_goes_away_interrupts_runs_and_the_engine_stays_healthy(deck, cluster):
    run_id = deck.json("run", "seed/step-decay", *LONG)["id"]
    deck.wait(lambda: len(epochs(record(deck, run_id))) >= 2, 180, "the run training on the cluster")
    cluster.kill_scheduler()
    run = wait_state(deck, run_id, {"interrupted"}, timeout=60)
    assert "the Dask scheduler" in run["events"][-1]["message"]
    # The engine still takes work, and keeps it queued while the cluster is away.
    waiting = deck.json("run", "seed/step-decay", "--set", "train.epochs=2")["id"]
    status = deck.json("engine", "status")
    assert status["running"] and status["cluster"]["state"] == "lost" and run_id in status["cluster"]["interrupted"]
    text = deck.ok("engine", "status").stdout
    assert f"cluster {status['cluster']['url']}: lost since" in text and "retrying" in text
    assert record(deck, waiting)["state"] == "queued", "nothing is placed while the scheduler is away"
    assert record(deck, run_id)["state"] == "interrupted"
    # A scheduler back on the same address: the engine reconnects, requeues and finishes both.
    cluster.start("w1")
    run = wait_state(deck, run_id, {"completed", "failed"})
    assert run["state"] == "completed", run.get("error")
    assert epochs(run) == list(range(1, 301))
    assert "resumed" in kinds(run)
    assert wait_state(deck, waiting, {"completed"})["host"] in ("w1", "w2")
    assert deck.json("engine", "status")["cluster"]["state"] == "connected"


@slow
def test_a_study_runs_its_six_trials_on_the_cluster(deck):
    deck.ok("tune", "seed/random-search", "--trials", "6", "--set", "train.epochs=3", "--wait", timeout=600)
    study = deck.json("studies", "show", "seed-random-search")
    assert len(study["trials"]) == 6 and all(t["state"] in ("complete", "pruned") for t in study["trials"])
    runs = [record(deck, t["run_id"]) for t in study["trials"]]
    assert {r["host"] for r in runs} <= {"w1", "w2"} and all(r["history"] for r in runs)
    assert study["best"]["value"] is not None
    status = deck.ok("engine", "status").stdout
    assert "connected since" in status and "w1 (tcp://127.0.0.1:" in status and "w2 (tcp://127.0.0.1:" in status


@slow
def test_a_script_run_trains_on_a_worker_and_its_files_come_back(deck, tmp_path):
    preset = tmp_path / "script.toml"
    command = json.dumps(["/usr/bin/python3", str(REPO / "tests" / "scripts" / "train.py"), "--epochs", "4"])
    preset.write_text(f'[script]\ncommand = {command}\nworkdir = "{tmp_path}"\n')
    run_id = deck.json("run", str(preset))["id"]
    run = wait_state(deck, run_id, {"completed", "failed"})
    assert run["state"] == "completed", run.get("error")
    assert run["host"] in ("w1", "w2") and epochs(run) == [1, 2, 3, 4]
    assert (deck.ws.runs_dir / run_id / "files" / "starts.jsonl").exists(), "the script's own files came back"
    assert "epoch" in (deck.ws.runs_dir / run_id / "log.txt").read_text()


@slow
def test_a_run_whose_workdir_the_worker_lacks_fails_with_the_reason(deck, tmp_path):
    folder = tmp_path / "gone"
    folder.mkdir()
    command = json.dumps(["/usr/bin/python3", "train.py"])
    preset = tmp_path / "script.toml"
    preset.write_text(f'[script]\ncommand = {command}\nworkdir = "{folder}"\n')
    run_id = deck.json("run", str(preset))["id"]
    folder.rmdir()  # as on a worker without the shared folder
    run = wait_state(deck, run_id, {"failed", "completed"})
    assert run["state"] == "failed"
    assert f"its workdir {folder} does not exist on Dask worker" in run["error"]


def test_a_bad_cluster_setting_is_one_plain_line(home: Path):
    home.mkdir(parents=True)
    (home / "engine.toml").write_text('cluster = "localhost:8786"\n')
    proc = cli(home, "run", "seed/step-decay")
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert "engine.toml: cluster: 'localhost:8786' is not a Dask scheduler address" in line and "tcp://HOST:PORT" in line
    (home / "engine.toml").unlink()
    proc = cli(home, "engine", "start", "--cluster", "8786")
    assert proc.returncode == 2 and "--cluster: '8786' is not a Dask scheduler address" in one_line(proc.stderr)


def test_engine_status_and_the_tui_line_describe_the_cluster():
    from trialdeck.tui.cli.engine import cluster_lines
    from trialdeck.tui.probes import EngineSample, cluster_text, status_text

    connected = {"url": "tcp://10.0.0.5:8786", "state": "connected", "since": 0, "places": 3, "workers": [
        {"address": "tcp://10.0.0.6:4001", "name": "gpu1", "nthreads": 4, "resources": {"GPU": 2.0}, "runs": ["r3"]},
        {"address": "tcp://10.0.0.7:4001", "name": "gpu2", "nthreads": 4, "resources": {"GPU": 1.0}, "runs": []}]}
    lines = cluster_lines(connected, 0)
    assert "connected" in lines[0] and "2 worker(s), 3 place(s)" in lines[0]
    assert lines[1] == "  gpu1 (tcp://10.0.0.6:4001): 4 thread(s), GPU=2; r3" and lines[2].endswith("GPU=1; idle")
    line = status_text(EngineSample(True, 7, None, (), cluster_text(connected)), None, {}, 0)
    assert "cluster 10.0.0.5:8786 2 workers: gpu1 r3, gpu2 idle" in line
    lost = {"url": "tcp://10.0.0.5:8786", "state": "lost", "since": 0, "error": "CommClosedError",
            "retry_seconds": 3, "interrupted": ["r3"]}
    assert "cluster 10.0.0.5:8786 LOST since" in cluster_text(lost)
    said = cluster_lines(lost, 0)
    assert "lost since" in said[0] and "retrying every 3 s" in said[0] and "r3" in said[1]
