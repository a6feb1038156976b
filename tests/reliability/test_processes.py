"""Signals to the engine's workers: a SIGTERM'd worker fails its run alone, with the reason."""

from __future__ import annotations

import json
import os
import signal

from tests.deck import cli, until
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.workspace import Workspace


def wait_for(predicate, timeout: float, what: str):
    return until(predicate, timeout, what)


def test_sigterm_to_a_worker_mid_epoch_fails_that_run_and_the_engine_goes_on(home):
    long = cli(home, "run", "seed/step-decay", "--set", "train.epochs=3000", "--json")
    assert long.returncode == 0, long.stderr
    run_id = json.loads(long.stdout)["id"]
    store = Store(Workspace(home).ensure())
    running = wait_for(lambda: (r := store.get_run(run_id))["state"] == "running" and len(r["history"]) >= 1 and r,
                       90, "the run to be training")
    os.kill(running["worker"], signal.SIGTERM)
    failed = wait_for(lambda: (r := store.get_run(run_id))["state"] != "running" and r, 30, "the run to end")
    assert failed["state"] == "failed"
    assert "SIGTERM" in failed["error"], failed["error"]
    # The engine replaced the worker: the next run completes.
    after = cli(home, "run", "seed/step-decay", "--set", "train.epochs=2", "--wait", "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["state"] == "completed"
    assert json.loads(cli(home, "engine", "status", "--json").stdout)["running"] is True
