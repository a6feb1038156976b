"""The placement contract (runtime.placement.base), one suite for every backend, in the style of
optuna's StorageTestCase: `PlacementContract` is written once against the abstract base and run
for the in-memory fake (milliseconds), this box's warm workers (`cpu_slots = 2`) and a real Dask
cluster (a `dask scheduler` and two `dask worker` processes on 127.0.0.1, CPU only).

The engine runs in this process, step by step (Engine.open / step / close: its real loop without
its signal handlers), on a real TinyDB catalogue; runs are queued the way `trialdeck run` queues
them. What every backend keeps: it publishes its capabilities (cpu and its places), queued runs
each end in exactly one final state naming where they ran and the engine hears each ending once,
it never trains more runs than its capacity, a cancel stops a running run within seconds, an
engine stop interrupts what runs and the next engine queues it again, and a pin no place offers is
refused with the reason (a cluster, whose places come and go, keeps it waiting instead).

Last, the acceptance case of a GPU-less head node whose backend offers cuda: `trialdeck run
--device cuda` against a real engine process with a fake backend offering cuda is accepted and
runs; against this box's own engine (no GPU here) it is refused with the reason it always had.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dask_cluster import DaskCluster
from tests.deck import Deck, one_line, until
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.presets import resolve
from trialdeck.engine.runtime.config import EngineConfig
from trialdeck.engine.runtime.control import actions
from trialdeck.engine.runtime.control.client import engine_info
from trialdeck.engine.runtime.daemon import Engine
from trialdeck.engine.runtime.placement.fake import FakePlacement
from trialdeck.engine.runtime.placement.gpus import probe_gpus
from trialdeck.engine.types import RunState
from trialdeck.engine.workspace import Workspace

SHORT = ["train.epochs=2"]
LONG = ["train.epochs=400", "train.checkpoint_seconds=0.3"]


class Harness:
    """One in-process engine over a workspace, and the runs its tests queued."""

    def __init__(self, ws: Workspace, make: Callable[[Workspace], Engine]) -> None:
        self.ws, self.make = ws, make
        self.store = Store(ws)
        self.heard: list[tuple[str, RunState]] = []
        self.engine = self.open()

    def open(self) -> Engine:
        engine = self.make(self.ws)
        engine.lifecycle.on_end = lambda run_id, state: self.heard.append((run_id, state))
        engine.open()
        engine.placement.start()
        self.engine = engine
        return engine

    def queue(self, sets: list[str], device: str | None = None) -> str:
        [record] = actions.enqueue(self.store, [resolve("seed/step-decay", sets)], device=device)
        return record["id"]

    def state(self, run_id: str) -> RunState:
        return RunState(self.store.get_run(run_id)["state"])

    def until(self, predicate: Callable[[], Any], timeout: float, what: str,
              each: Callable[[], None] | None = None) -> Any:
        """Step the engine until `predicate` holds (tests.deck.until, with a pass of the loop between looks)."""
        def step_and_look() -> Any:
            self.engine.step(0.1)
            if each is not None:
                each()
            return predicate()

        return until(step_and_look, timeout, what, interval=0)


class PlacementContract:
    """The contract's tests; a subclass gives the backend (`harness`) and how long its runs take."""

    patience: float = 240
    """Seconds a backend may take for what the fake does at once (spawning workers, training)."""

    def test_it_publishes_cpu_and_its_places(self, harness: Harness) -> None:
        harness.until(lambda: harness.engine.placement.capabilities().places, self.patience, "its places")
        caps = harness.engine.placement.capabilities()
        assert "cpu" in caps.devices and caps.kind == harness.engine.placement.kind
        assert caps.why_not("auto") is None and caps.why_not("cpu") is None
        harness.engine.publish()
        assert engine_info(harness.ws)["capabilities"] == harness.engine.placement.capabilities().to_json()

    def test_queued_runs_each_end_once_where_it_says(self, harness: Harness) -> None:
        ids = [harness.queue(SHORT) for _ in range(3)]
        harness.until(lambda: all(harness.state(r).terminal for r in ids), self.patience, f"{ids} to end")
        places = set(harness.engine.placement.capabilities().places)
        for run_id in ids:
            record = harness.store.get_run(run_id)
            assert record["state"] == "completed", record.get("error")
            assert record["slot"] in places and record["attempts"] == 1
            assert [e["kind"] for e in record["events"]].count("started") == 1
            assert [state for r, state in harness.heard if r == run_id] == [RunState.COMPLETED]

    def test_it_never_trains_more_runs_than_its_capacity(self, harness: Harness) -> None:
        ids = [harness.queue(SHORT) for _ in range(harness.engine.placement.capacity() + 2)]
        most = [0]

        def count() -> None:
            most[0] = max(most[0], sum(harness.state(r) is RunState.RUNNING for r in ids))

        harness.until(lambda: all(harness.state(r).terminal for r in ids), self.patience, f"{ids} to end", each=count)
        assert 1 <= most[0] <= harness.engine.placement.capacity()

    def test_a_cancel_stops_a_running_run_within_seconds(self, harness: Harness) -> None:
        run_id = harness.queue(LONG)
        harness.until(lambda: harness.state(run_id) is RunState.RUNNING, self.patience, f"{run_id} to start")
        asked = time.monotonic()
        actions.cancel(harness.store, run_id, wake=lambda: True)
        harness.until(lambda: harness.state(run_id).terminal, 30, f"{run_id} to stop")
        assert harness.state(run_id) is RunState.CANCELLED and time.monotonic() - asked < 15
        assert harness.store.get_run(run_id)["events"][-1]["kind"] == "cancelled"

    def test_an_engine_stop_interrupts_and_the_next_engine_queues_it_again(self, harness: Harness) -> None:
        run_id = harness.queue(LONG)
        harness.until(lambda: harness.state(run_id) is RunState.RUNNING, self.patience, f"{run_id} to start")
        harness.engine.close()
        assert harness.state(run_id) is RunState.INTERRUPTED
        engine = harness.open()
        assert harness.state(run_id) is RunState.QUEUED  # recovered at the next engine's start
        actions.cancel(harness.store, run_id, wake=lambda: True)
        harness.until(lambda: harness.state(run_id).terminal, self.patience, f"{run_id} to be cancelled")
        assert engine is harness.engine

    def test_a_pin_no_place_offers_is_refused_or_waits(self, harness: Harness) -> None:
        caps = harness.engine.placement.capabilities()
        pin = next(f"cuda:{n}" for n in range(9, 99) if f"cuda:{n}" not in caps.devices)
        run_id = harness.store.create_runs([{"preset": "p", "config": resolve("seed/step-decay", SHORT).config(),
                                             "config_hash": "h", "device": pin}])[0]["id"]
        if caps.growing:  # a cluster: a worker offering it may join; the run waits
            for _ in range(5):
                harness.engine.step(0.05)
            assert harness.state(run_id) is RunState.QUEUED and caps.why_waiting(pin)
            harness.store.cancel_queued(run_id)
        else:
            harness.until(lambda: harness.state(run_id).terminal, 30, f"{run_id} to be refused")
            record = harness.store.get_run(run_id)
            assert record["state"] == "failed" and record["error"] == caps.why_not(pin)


@contextlib.contextmanager
def _harness(ws: Workspace, make: Callable[[Workspace], Engine]) -> Iterator[Harness]:
    harness = Harness(ws, make)
    try:
        yield harness
    finally:
        harness.engine.close()


class TestFakePlacement(PlacementContract):
    patience = 10

    @pytest.fixture
    def harness(self, tmp_path: Path) -> Iterator[Harness]:
        with _harness(Workspace(tmp_path / "ws").ensure(),
                      lambda ws: Engine(ws, placement=functools.partial(FakePlacement, ticks=None))) as harness:
            yield harness

    def test_forced_paths_an_overdue_cancel_and_a_stop_it_ignores(self, tmp_path: Path) -> None:
        """What the real backends only do when a run hangs: force a cancel, abandon at the stop."""
        from trialdeck.engine.runtime.placement import base

        ws = Workspace(tmp_path / "ws").ensure()
        stubborn = functools.partial(FakePlacement, stubborn=True, hold=True)
        with _harness(ws, lambda ws: Engine(ws, placement=stubborn)) as harness:
            base.STOP_GRACE, saved = 0.2, base.STOP_GRACE
            harness.engine.placement.cancel_grace = 0.2
            try:
                cancelled, left = harness.queue(LONG), harness.queue(LONG)
                harness.until(lambda: harness.state(left) is RunState.RUNNING, 5, "both to start")
                actions.cancel(harness.store, cancelled, wake=lambda: True)
                harness.until(lambda: harness.state(cancelled).terminal, 5, f"{cancelled} to be cancelled by force")
                assert harness.store.get_run(cancelled)["events"][-1]["message"] == (
                    "cancelled by the user (the fake place dropped it)")
                harness.engine.close()
                assert harness.state(left) is RunState.INTERRUPTED
                assert harness.store.get_run(left)["events"][-1]["message"] == "interrupted: the engine stopped"
                harness.open()
            finally:
                base.STOP_GRACE = saved


@pytest.mark.slow
class TestLocalPlacement(PlacementContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Iterator[Harness]:
        with _harness(Workspace(tmp_path / "ws").ensure(), lambda ws: Engine(ws, EngineConfig(cpu_slots=2))) as harness:
            yield harness


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory) -> Iterator[DaskCluster]:
    pytest.importorskip("distributed", reason="the cluster extra is not installed (pip install -e '.[cluster]')")
    cluster = DaskCluster(tmp_path_factory.mktemp("dask")).start("w1", "w2")
    yield cluster
    cluster.stop()


@pytest.mark.slow
class TestDaskPlacement(PlacementContract):
    @pytest.fixture
    def harness(self, tmp_path: Path, dask_cluster: DaskCluster) -> Iterator[Harness]:
        config = EngineConfig(cluster=dask_cluster.url)
        with _harness(Workspace(tmp_path / "ws").ensure(), lambda ws: Engine(ws, config)) as harness:
            yield harness


# ----------------------------------------------------------------------------- --device cuda on a GPU-less head

FAKE_ENGINE = """
import functools, sys
from trialdeck.engine.runtime.daemon import Engine
from trialdeck.engine.runtime.placement.fake import FakePlacement
from trialdeck.engine.workspace import Workspace
ws = Workspace.resolve(sys.argv[1]).ensure()
Engine(ws, placement=functools.partial(FakePlacement, devices=("cpu", "cuda"), places=("box1-gpu0",))).run()
"""


@pytest.mark.skipif(bool(probe_gpus()), reason="this box has a GPU: its own engine would accept --device cuda")
def test_device_cuda_is_accepted_where_the_backend_offers_it_and_refused_where_none_does(deck: Deck) -> None:
    said = "--device cuda: device 'cuda' was asked for, but this machine has no NVIDIA GPU the engine can see"
    refused = deck.cli("run", "seed/step-decay", "--device", "cuda")  # no engine: what this box's would offer
    assert refused.returncode == 2 and said in one_line(refused.stderr)
    deck.ok("engine", "start")
    refused = deck.cli("run", "seed/step-decay", "--device", "cuda")  # this box's own engine, running
    assert refused.returncode == 2 and said in one_line(refused.stderr)
    assert deck.json("engine", "status")["devices"] == ["cpu"]
    deck.ok("engine", "stop")
    engine = subprocess.Popen([sys.executable, "-c", FAKE_ENGINE, str(deck.home)], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=deck.env)
    try:
        until(lambda: (deck.engine_pid() == engine.pid and deck.json("engine", "status")["running"]), 60,
              "the engine with a fake backend offering cuda")
        assert deck.json("engine", "status")["devices"] == ["cpu", "cuda"]
        run = deck.json("run", "seed/step-decay", "--device", "cuda", "--set", "train.epochs=3", "--wait")
        assert run["state"] == "completed" and run["slot"] == "box1-gpu0" and run["device"] == "cuda"
    finally:
        deck.cli("engine", "stop")
        engine.wait(30)
