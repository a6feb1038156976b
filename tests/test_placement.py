"""The placement contract (runtime.placement), one suite against both backends: this box's warm
workers (`cpu_slots = 2` in engine.toml) and a Dask cluster (`cluster = URL`: a real `dask
scheduler` and two `dask worker` processes on 127.0.0.1, CPU only).

Everything goes through the command line, as a user would: queued runs complete and say where
they ran, metrics stream while a run trains (`runs follow`, the TUI's sparkline), a cancel stops
a running run within seconds, a failing run fails alone, and `engine stop` interrupts a run that
the next engine resumes from its checkpoint, its history without a gap or a duplicate.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.dask_cluster import DaskCluster
from tests.deck import Deck

pytestmark = pytest.mark.slow

LONG = ("--set", "train.epochs=400", "--set", "train.checkpoint_seconds=0.3")
"""A run that trains long enough to be watched, stopped or cancelled midway (digits, CPU)."""


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    pytest.importorskip("distributed", reason="the cluster extra is not installed (pip install -e '.[cluster]')")
    cluster = DaskCluster(tmp_path_factory.mktemp("dask")).start("w1", "w2")
    yield cluster
    cluster.stop()


@pytest.fixture(params=["local", "dask"])
def engine_toml(request) -> str:
    """Each test runs against both backends (the `deck` fixture, tests/conftest.py, writes this engine.toml)."""
    if request.param == "local":
        return "cpu_slots = 2\n"
    return f'cluster = "{request.getfixturevalue("shared_cluster").url}"\n'


def queue(deck: Deck, *args: str) -> str:
    return deck.json("run", "seed/step-decay", *args)["id"]


def record(deck: Deck, run_id: str) -> dict:
    return deck.store.get_run(run_id)


def wait_state(deck: Deck, run_id: str, states: set[str], timeout: float = 240) -> dict:
    return deck.wait(lambda: (r := record(deck, run_id))["state"] in states and r, timeout,
                     lambda: f"{run_id} to reach {states} (now {record(deck, run_id)['state']})", interval=0.1)


def epochs(run: dict) -> list[int]:
    return [h["epoch"] for h in run.get("history") or []]


def test_queued_runs_complete_each_naming_where_it_ran(deck):
    ids = [queue(deck, "--set", "train.epochs=3") for _ in range(4)]
    runs = [wait_state(deck, run_id, {"completed"}) for run_id in ids]
    for run in runs:
        assert epochs(run) == [1, 2, 3]
        assert deck.ws.checkpoint_path(run["id"]).exists(), "the final checkpoint is in the local workspace"
        stream = (deck.ws.runs_dir / run["id"] / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line).get("epoch") for line in stream if '"epoch"' in line and '"kind"' in line
                and json.loads(line)["kind"] == "epoch"] == [1, 2, 3], "the metric stream is in the local workspace"
    if deck.backend == "dask":
        assert {run["host"] for run in runs} == {"w1", "w2"}, "both workers took runs"
        assert all(run["slot"] == run["host"] for run in runs)
        shown = deck.json("runs", "show", ids[0])
        assert shown["host"] in ("w1", "w2") and shown["host_address"].startswith("tcp://127.0.0.1:")
    else:
        assert {run["slot"] for run in runs} <= {"cpu.0", "cpu.1"} and not any(run.get("host") for run in runs)


def test_metrics_stream_while_the_run_trains_and_a_cancel_stops_it(deck):
    from trialdeck.tui.live import MetricsFollower

    run_id = queue(deck, *LONG)
    follow = subprocess.Popen(deck.argv("runs", "follow", run_id, "--json"), stdout=subprocess.PIPE, text=True,
                              env=deck.env)
    try:
        assert follow.stdout is not None
        for line in follow.stdout:  # `runs follow` prints each epoch as it comes
            if json.loads(line).get("kind") == "epoch":
                break
        assert record(deck, run_id)["state"] == "running", "an epoch reached runs follow while the run trained"
        # The TUI's sparkline reads the same stream; and the catalogue has the history so far.
        follower = MetricsFollower(deck.ws)
        live = deck.wait(lambda: (follower.poll([run_id]) or {}).get(run_id), 30, "the TUI's live view of the run")
        assert live.spark and live.epochs_done >= 1
        deck.wait(lambda: epochs(record(deck, run_id)), 30, "the history in the catalogue while it runs")
        assert record(deck, run_id)["state"] == "running"
        asked = time.monotonic()
        deck.ok("queue", "cancel", run_id)
        run = wait_state(deck, run_id, {"cancelled"}, timeout=30)
        took = time.monotonic() - asked
        assert took < 5, f"the cancel took {took:.1f} s to stop the run"
        assert run["events"][-1]["kind"] == "cancelled"
        assert follow.wait(30) != 0  # follow ends with the run (exit code of a cancelled run)
    finally:
        follow.kill()
        follow.wait()


def test_a_failing_run_fails_alone(deck):
    bad = queue(deck, "--set", "train.epochs=5", "--set", "optimizer.lr=100")  # NaN loss at epoch 1
    good = queue(deck, "--set", "train.epochs=3")
    failed = wait_state(deck, bad, {"failed", "completed"})
    assert failed["state"] == "failed" and ("NaN" in failed["error"] or "infinite" in failed["error"]), failed["error"]
    assert wait_state(deck, good, {"completed"})["state"] == "completed"
    assert deck.json("engine", "status")["running"]


def test_engine_stop_interrupts_and_the_next_engine_resumes_from_the_checkpoint(deck):
    run_id = queue(deck, "--set", "train.epochs=150", "--set", "train.checkpoint_seconds=0.3")
    deck.wait(lambda: len(epochs(record(deck, run_id))) >= 3 and deck.ws.checkpoint_path(run_id).exists(), 180,
              "three epochs and a checkpoint in the local workspace")
    deck.ok("engine", "stop")
    run = record(deck, run_id)
    assert run["state"] == "interrupted", run["state"]
    assert deck.ws.checkpoint_path(run_id).exists()
    deck.ok("engine", "start")
    run = wait_state(deck, run_id, {"completed"})
    assert epochs(run) == list(range(1, 151)), "no gap or duplicate in the history"
    assert any(e["kind"] == "resumed" for e in run["events"])
    assert run["attempts"] == 2
