"""The engine end to end: real `trialdeck` and engine processes on temp workspaces.

Every test gets its own workspace (`--home` and TRIALDECK_HOME both point at
it, so nothing can touch ~/.trialdeck) and a fixture that stops its engine
(`trialdeck engine stop`, then SIGKILL of the pid in engine.pid as a fallback).
Commands run as list argvs, never through a shell. Every wait is bounded and
its failure message carries the tail of engine.log.

What is asserted is what a user would look at: exit codes, `--json` records,
`engine status`, states, errors, events and histories in the catalogue.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.deck import REPO, TERMINAL, TRIALDECK
from tests.deck import Deck as BaseDeck
from tests.deck import gone as _gone
from trialdeck.engine.runtime.placement.gpus import probe_gpus

pytestmark = pytest.mark.slow

PRESET = "seed/step-decay"
LONG = "train.epochs=3000"
"""A run that outlives any test (~25 s or more): tests cancel it or stop the engine."""


# ------------------------------------------------------------------ helpers


def _epochs(history: list[dict[str, Any]]) -> list[int]:
    return [h["epoch"] for h in history]


class Deck(BaseDeck):
    """A workspace plus the engine-specific commands and reads these tests use."""

    cli_timeout = 90

    def enqueue(self, *sets: str, priority: int | None = None) -> str:
        args = ["run", PRESET]
        for s in sets:
            args += ["--set", s]
        if priority is not None:
            args += ["--priority", str(priority)]
        return self.json(*args)["id"]

    def run(self, run_id: str) -> dict[str, Any]:
        record = self.store.get_run(run_id)
        assert record is not None, f"{run_id} is not in the catalogue"
        return record

    def metrics(self, run_id: str) -> list[dict[str, Any]]:
        """Complete lines of the run's metrics stream (each must parse; a torn last line is skipped)."""
        path = self.ws.runs_dir / run_id / "metrics.jsonl"
        if not path.exists():
            return []
        data = path.read_bytes()
        lines = data.split(b"\n")
        complete, torn = lines[:-1], lines[-1]
        out = []
        for n, line in enumerate(complete, 1):
            assert line.strip(), f"{path}:{n} is empty"
            out.append(json.loads(line))
        if torn:
            assert self.run(run_id)["state"] == "running", f"{path} ends in a torn line but its run is not running"
        return out

    def epochs_streamed(self, run_id: str) -> int:
        return sum(1 for m in self.metrics(run_id) if m.get("kind") == "epoch")

    def wait_state(self, run_id: str, states: set[str] | str, timeout: float) -> dict[str, Any]:
        wanted = {states} if isinstance(states, str) else states

        def check() -> dict[str, Any] | None:
            record = self.run(run_id)
            return record if record["state"] in wanted else None

        return self.wait(check, timeout, f"{run_id} to be {'/'.join(sorted(wanted))} (is {self.run(run_id)['state']})")

    def wait_epochs(self, run_id: str, n: int, timeout: float) -> None:
        self.wait(lambda: self.epochs_streamed(run_id) >= n, timeout, f"{run_id} to stream {n} epochs")

    def kill_engine(self) -> int:
        """kill -9 of the engine, as a crash or an OOM killer would; returns once it is gone."""
        pid = self.engine_pid()
        assert pid is not None, f"no engine.pid in {self.home}"
        os.kill(pid, signal.SIGKILL)
        self.wait(lambda: _gone(pid), 10, f"engine {pid} to die after SIGKILL")
        return pid


DECK = Deck
"""The `deck` fixture (tests/conftest.py) gives this module's Deck."""


def _assert_gapless(record: dict[str, Any], epochs: int) -> None:
    got = _epochs(record["history"])
    missing = sorted(set(range(1, epochs + 1)) - set(got))
    dups = sorted({e for e in got if got.count(e) > 1})
    assert got == list(range(1, epochs + 1)), (
        f"{record['id']} history is not epochs 1..{epochs}: {len(got)} entries, "
        f"missing {missing[:12]}{'...' if len(missing) > 12 else ''}, duplicated {dups[:12]}; "
        f"events: {[(e['kind'], e['epoch']) for e in record['events'] if e['kind'] != 'checkpoint']}"
    )


# ------------------------------------------------------------------ 1. run --wait


def test_run_wait_json_on_a_fresh_workspace_starts_the_engine_and_prints_one_record(deck: Deck) -> None:
    t0 = time.time()
    proc = deck.cli("run", PRESET, "--set", "train.epochs=5", "--wait", "--json")
    assert proc.returncode == 0, proc.stderr + deck.log_tail()
    assert "started the engine" in proc.stderr
    record = json.loads(proc.stdout)  # one JSON document and nothing else on stdout
    assert isinstance(record, dict)

    assert record["id"] == "r1"
    assert record["preset"] == PRESET
    assert record["state"] == "completed"
    assert record["error"] is None
    assert t0 - 1 <= record["created_at"] <= record["started_at"] <= record["finished_at"] <= time.time()
    assert record["device"] == "cpu"
    config = record["config"]
    for section in ("data", "model", "regularization", "optimizer", "schedule", "augment", "early_stopping", "train"):
        assert isinstance(config.get(section), dict), f"config lacks [{section}]"
    assert config["train"]["epochs"] == 5
    assert config["data"]["dataset"] == "digits"
    assert config["schedule"]["kind"] == "step"
    assert len(record["history"]) == 5
    for n, entry in enumerate(record["history"], 1):
        assert entry["epoch"] == n
        for key in ("train_loss", "val_loss", "val_acc", "lr", "seconds"):
            assert isinstance(entry[key], float), (key, entry)
        assert 0.0 <= entry["val_acc"] <= 1.0
    assert isinstance(record["events"], list) and record["events"]
    for event in record["events"]:
        assert {"kind", "epoch", "message"} <= set(event)
    assert "started" in {e["kind"] for e in record["events"]}

    status = deck.json("engine", "status")
    assert status["running"] is True
    assert isinstance(status["pid"], int) and not _gone(status["pid"])
    assert status["pid"] == deck.engine_pid()
    assert isinstance(status["uptime"], (int, float)) and status["uptime"] >= 0
    assert status["slots"] == ["cpu.0"]
    assert status["runs_running"] == 0
    assert status["runs_queued"] == 0

    shown = deck.json("runs", "show", "r1")
    assert shown["state"] == "completed" and shown["history"] == record["history"]


# ------------------------------------------------------------------ 2. tmux


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_run_outlives_the_tmux_session_that_started_the_engine(deck: Deck, tmp_path: Path) -> None:
    # A private tmux server (-S): started by us, so it has our environment, and
    # killing it cannot touch anyone's real sessions.
    sock = tmp_path / "tmux.sock"
    tmux = ["tmux", "-S", str(sock)]
    session = "trialdeck-test"
    command = shlex.join([*TRIALDECK, "run", PRESET, "--set", LONG, "--follow", "--home", str(deck.home)])
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "150", "-y", "40", command],
                   env=deck.env, cwd=REPO, check=True, timeout=20)
    try:
        deck.wait(lambda: deck.ws.catalog_path.exists() and deck.store.get_run("r1"), 30, "r1 to be queued from tmux")
        deck.wait_state("r1", "running", 60)
        deck.wait_epochs("r1", 3, 30)
        pane = subprocess.run([*tmux, "capture-pane", "-p", "-S", "-", "-t", session],  # "-S -": the whole scrollback
                              capture_output=True, text=True, timeout=10).stdout
        assert "started the engine" in pane, f"the engine was not started from inside tmux; pane:\n{pane}"
        engine = deck.engine_pid()
        assert engine is not None
        assert os.getsid(engine) == engine, "the engine must lead its own session to survive the terminal"
        subprocess.run([*tmux, "kill-session", "-t", session], check=True, timeout=10)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)

    before = deck.epochs_streamed("r1")
    stored_before = len(deck.run("r1")["history"])
    time.sleep(3.0)
    assert not _gone(engine), "the engine died with the tmux session\n" + deck.log_tail()
    record = deck.json("runs", "show", "r1")
    assert record["state"] == "running"
    assert deck.epochs_streamed("r1") > before, "training stopped when the tmux session ended"
    assert len(record["history"]) > stored_before
    status = deck.json("engine", "status")
    assert status["running"] is True and status["pid"] == engine
    assert status["runs_running"] == 1
    assert [a["id"] for a in status["active"]] == ["r1"]

    t0 = time.time()
    out = deck.json("queue", "cancel", "r1")
    assert out["state"] == "cancelled"
    record = deck.run("r1")
    assert record["state"] == "cancelled"
    assert record["finished_at"] - t0 <= 2.0, f"cancel took {record['finished_at'] - t0:.2f} s"


# ------------------------------------------------------------------ 3. kill -9 at random moments


def test_engine_killed_at_random_moments_loses_and_duplicates_nothing(deck: Deck) -> None:
    rng = random.Random(1234)
    epochs = {"r1": 240, "r2": 280, "r3": 320, "r4": 360}
    deck.ok("engine", "start", "--cpu-slots", "1")
    for n, (run_id, e) in enumerate(epochs.items()):
        got = deck.enqueue(f"train.epochs={e}", "train.checkpoint_seconds=0.3", f"train.seed={n}")
        assert got == run_id

    kills = 0
    for _ in range(6):
        # Half the kills land mid-training (counted from the first epoch the revived
        # engine streams), the others anywhere, often while the engine is still starting.
        if rng.random() < 0.5:
            streamed = sum(deck.epochs_streamed(r) for r in epochs)
            deck.wait(lambda streamed=streamed: sum(deck.epochs_streamed(r) for r in epochs) > streamed
                      or all(deck.run(r)["state"] in TERMINAL for r in epochs), 60, "training to go on")
        time.sleep(rng.uniform(0.5, 2.5))
        if all(deck.run(r)["state"] in TERMINAL for r in epochs):
            break
        deck.kill_engine()
        kills += 1
        with open(deck.ws.catalog_path, "rb") as f:
            catalog = json.load(f)  # every file readable after kill -9
        assert set(catalog["runs"]) == {"1", "2", "3", "4"}
        for run_id in epochs:
            deck.metrics(run_id)  # complete lines parse; a torn last line only while running
        # Any command brings the engine back while runs are pending, and says so. (This works
        # here because TRIALDECK_HOME names the workspace too; see the last test for --home alone.)
        proc = deck.ok("runs", "list")
        assert "started the engine" in proc.stderr, f"`runs list` did not restart the engine:\n{proc.stderr}"
    assert kills >= 4, "the runs finished before the engine could be killed: make them longer"

    deadline_s = 420  # only catches an engine that stopped making progress: the box may be busy (xdist, other work)
    deck.wait(lambda: all(deck.run(r)["state"] in TERMINAL for r in epochs), deadline_s, "all runs to finish")
    runs = deck.store.list_runs()
    assert [r["id"] for r in runs] == list(epochs), "runs were lost or duplicated"
    for record in runs:
        assert record["state"] == "completed", (record["id"], record["state"], record.get("error"))
        assert record["attempts"] >= 1
        for line in deck.metrics(record["id"]):
            assert isinstance(line, dict)
    # Checked last, so all of the above is known good when it fails: the catalogue's history
    # of a run resumed after kill -9 must be its checkpoint's epochs followed by the new ones.
    for record in runs:
        _assert_gapless(record, epochs[record["id"]])


# ------------------------------------------------------------------ 4. failures fail alone


def test_each_failure_fails_alone_with_its_reason(deck: Deck) -> None:
    # Ids are r1, r2, ... in order on a fresh workspace, so faults can target them.
    faults = "raise@2:r2,oom@1:r4"
    proc = deck.cli("engine", "start", "--cpu-slots", "1", env={"TRIALDECK_INJECT_FAULT": faults})
    assert proc.returncode == 0, proc.stderr
    engine = deck.engine_pid()

    normal = deck.enqueue("train.epochs=5")
    raising = deck.enqueue("train.epochs=5")
    nan = deck.enqueue("train.epochs=5", "optimizer.lr=100")
    oom = deck.enqueue("train.epochs=5")
    killed = deck.enqueue(LONG)
    assert [normal, raising, nan, oom, killed] == ["r1", "r2", "r3", "r4", "r5"]

    deck.wait_state(killed, "running", 90)
    deck.wait_epochs(killed, 3, 30)
    worker = deck.run(killed)["worker"]
    assert isinstance(worker, int) and worker not in (engine, os.getpid())
    os.kill(worker, signal.SIGKILL)
    record = deck.wait_state(killed, TERMINAL, 15)
    assert record["state"] == "failed"
    assert "worker process was killed by signal SIGKILL" in record["error"]

    if not probe_gpus():  # pinned to a GPU this box lacks: failed at once with the reason, not queued for ever
        # `run` refuses such a run at enqueue (tests/test_newcomer.py); one already in the catalogue
        # (queued where the engine had a GPU) is failed by the engine.
        from trialdeck.engine.presets import preset_roots, resolve
        from trialdeck.engine.runtime.control.client import notify

        spec = resolve(PRESET, ["train.epochs=5", "train.device='cuda'"], preset_roots(deck.ws.presets_dir))
        [pinned_run] = deck.store.create_runs([{"preset": spec.preset, "config": spec.config(),
                                                "config_hash": spec.content_hash}])
        pinned = pinned_run["id"]
        notify(deck.ws)
        record = deck.wait_state(pinned, TERMINAL, 30)
        assert record["state"] == "failed"
        assert record["error"] == "device 'cuda' was asked for, but this machine has no NVIDIA GPU the engine can see"

    after = deck.enqueue("train.epochs=5")
    final = deck.wait_state(after, TERMINAL, 60)
    assert final["state"] == "completed", final.get("error")
    assert final["worker"] != worker, "the killed worker was not replaced"

    expected = {
        raising: "RuntimeError: injected fault at epoch 2",
        nan: "NaN loss at epoch",
        oom: "CUDA out of memory at epoch 1",
    }
    for run_id, reason in expected.items():
        record = deck.json("runs", "show", run_id)
        assert record["state"] == "failed", (run_id, record["state"])
        assert reason in (record["error"] or ""), (run_id, record["error"])
        assert "failed" in {e["kind"] for e in record["events"]}
    failed_at = {r: next(e["epoch"] for e in deck.run(r)["events"] if e["kind"] == "failed") for r in expected}
    assert failed_at == {raising: 2, nan: 1, oom: 1}
    assert "nan_loss" in {e["kind"] for e in deck.run(nan)["events"]}
    for run_id in (normal, after):
        assert deck.run(run_id)["state"] == "completed"
        assert len(deck.run(run_id)["history"]) == 5

    status = deck.json("engine", "status")
    assert status["running"] is True and status["pid"] == engine, "the engine did not survive its runs' failures"


# ------------------------------------------------------------------ 5. queue


def test_queue_cancel_move_and_clear(deck: Deck) -> None:
    deck.ok("engine", "start", "--cpu-slots", "1")
    blocker = deck.enqueue(LONG)
    deck.wait_state(blocker, "running", 60)

    cleared = [deck.enqueue("train.epochs=5"), deck.enqueue("train.epochs=5")]
    assert deck.json("queue", "clear") == {"cancelled": 2}
    for run_id in cleared:
        record = deck.run(run_id)
        assert record["state"] == "cancelled" and record["started_at"] is None

    first, second, third = (deck.enqueue("train.epochs=5") for _ in range(3))
    out = deck.json("queue", "cancel", first)
    assert out == {"id": first, "state": "cancelled"}
    deck.ok("queue", "move", third, "--top")
    assert [r["id"] for r in deck.json("queue", "list") if r["state"] == "queued"] == [third, second]

    t0 = time.time()
    out = deck.json("queue", "cancel", blocker)
    assert out["state"] == "cancelled"
    record = deck.run(blocker)
    assert record["state"] == "cancelled"
    assert record["finished_at"] - t0 <= 1.5, f"cancelling a running run took {record['finished_at'] - t0:.2f} s"
    assert "cancelled" in {e["kind"] for e in record["events"]}

    done = [deck.wait_state(r, TERMINAL, 60) for r in (second, third)]
    assert [r["state"] for r in done] == ["completed", "completed"]
    assert deck.run(third)["started_at"] < deck.run(second)["started_at"], "`queue move --top` did not reorder"
    never = deck.run(first)
    assert never["state"] == "cancelled" and never["started_at"] is None and never["attempts"] == 0
    assert "started" not in {e["kind"] for e in never["events"]}
    assert not (deck.ws.runs_dir / first / "metrics.jsonl").exists()


def test_a_cancelled_run_resumes_from_its_checkpoint_and_ends_as_if_never_stopped(deck: Deck) -> None:
    epochs = 300
    run_id = deck.json("run", "base/digits-mlp", "--set", f"train.epochs={epochs}",
                       "--set", "train.checkpoint_seconds=0")["id"]
    deck.wait(lambda: deck.ws.checkpoint_path(run_id).exists(), 60, f"{run_id}'s first checkpoint")
    assert deck.json("queue", "cancel", run_id)["state"] == "cancelled"
    stopped = len(deck.run(run_id)["history"])
    assert 0 < stopped < epochs

    out = deck.json("runs", "resume", run_id, run_id)  # named twice: queued once
    assert out == {"id": run_id, "state": "queued", "how": "resumes from its checkpoint"}
    final = deck.wait_state(run_id, TERMINAL, 240)
    assert final["state"] == "completed" and final["attempts"] == 2
    assert _epochs(final["history"]) == list(range(1, epochs + 1))
    resumed = [e["message"] for e in final["events"] if e["kind"] == "resumed"]
    assert len(resumed) == 1 and resumed[0].startswith("resumed from the checkpoint after epoch")

    refused = deck.cli("runs", "resume", run_id)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert f"`trialdeck runs rerun {run_id}`" in refused.stderr

    new = deck.json("runs", "rerun", run_id)
    assert new["id"] != run_id and new["config"] == final["config"]
    again = deck.wait_state(new["id"], TERMINAL, 240)
    assert again["state"] == "completed" and not [e for e in again["events"] if e["kind"] == "resumed"]
    # The resumed run ends where the same configuration trained without a stop ends.
    assert [h["val_loss"] for h in final["history"]] == pytest.approx([h["val_loss"] for h in again["history"]],
                                                                     rel=1e-5)
    assert deck.run(run_id)["finished_at"] == final["finished_at"]


# ------------------------------------------------------------------ 6. engine stop / start


def test_engine_stop_interrupts_with_a_checkpoint_and_start_resumes(deck: Deck) -> None:
    epochs = 200
    run_id = deck.enqueue(f"train.epochs={epochs}", "train.checkpoint_seconds=0.5")
    deck.wait_state(run_id, "running", 60)
    deck.wait_epochs(run_id, 20, 30)

    proc = deck.cli("engine", "stop")
    assert proc.returncode == 0, proc.stderr
    assert deck.json("engine", "status")["running"] is False
    # The user's stop holds: reading commands do not bring the engine back for the interrupted run.
    for command in (["runs", "list"], ["queue", "list"], ["runs", "show", run_id]):
        proc = deck.cli(*command)
        assert proc.returncode == 0 and "started the engine" not in proc.stderr, (command, proc.stderr)
    status = deck.json("engine", "status")
    assert status["running"] is False and status["held"] is True and status["runs"]["interrupted"] == 1
    assert "1 interrupted (resumed when the engine starts)" in deck.ok("engine", "status").stdout
    record = deck.run(run_id)
    assert record["state"] == "interrupted", record["state"]
    assert (deck.ws.runs_dir / run_id / "checkpoint.pt").is_file()
    assert "interrupted" in {e["kind"] for e in record["events"]}
    done_before = len(record["history"])
    assert 0 < done_before < epochs
    _assert_gapless(record, done_before)

    deck.ok("engine", "start")
    assert deck.json("engine", "status")["held"] is False
    record = deck.wait_state(run_id, TERMINAL, 90)
    assert record["state"] == "completed", record.get("error")
    kinds = [e["kind"] for e in record["events"]]
    assert "resumed" in kinds and "requeued" in kinds
    resumed = next(e for e in record["events"] if e["kind"] == "resumed")
    assert resumed["epoch"] == done_before, "resumed elsewhere than where it stopped"
    _assert_gapless(record, epochs)
    assert record["attempts"] == 2


# ------------------------------------------------------------------ 7. concurrent enqueues


ENQUEUE = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from trialdeck.engine.runtime.control.client import notify
    from trialdeck.engine.presets import resolve
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.workspace import Workspace

    home, go = sys.argv[1], sys.argv[2]
    spec = resolve("seed/step-decay", ["train.epochs=1"])
    config, digest = spec.config(), spec.content_hash
    ws = Workspace(Path(home))
    store = Store(ws)
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.002)
    ids = []
    for _ in range(25):
        ids.append(store.create_run(preset=spec.preset, config=config, config_hash=digest)["id"])
        notify(ws)
    print(json.dumps(ids), flush=True)
""")


def test_four_processes_enqueue_while_the_engine_dispatches(deck: Deck, tmp_path: Path) -> None:
    deck.ok("engine", "start", "--cpu-slots", "1")
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", ENQUEUE, str(deck.home), str(go)], cwd=REPO, env=deck.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        go.touch()
        ids = []
        for p in procs:
            out, errs = p.communicate(timeout=120)
            assert p.returncode == 0, errs
            ids += json.loads(out.strip().splitlines()[-1])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert len(ids) == 100 and len(set(ids)) == 100
    with open(deck.ws.catalog_path, "rb") as f:
        assert len(json.load(f)["runs"]) == 100

    deck.wait(lambda: all(r["state"] in TERMINAL for r in deck.store.list_runs()), 150, "all 100 runs to finish",
              interval=0.5)
    runs = deck.store.list_runs()
    assert sorted(r["id"] for r in runs) == sorted(ids)
    assert {r["state"] for r in runs} == {"completed"}, {r["id"]: r.get("error") for r in runs if r["state"] != "completed"}
    assert all(len(r["history"]) == 1 for r in runs)


# ------------------------------------------------------------------ revival names the right workspace


def test_a_command_with_home_after_the_subcommand_revives_that_workspace(deck: Deck) -> None:
    """`trialdeck runs list --home WS` (the form every other command here uses) must bring back
    WS's engine, whatever TRIALDECK_HOME says, and must not start one in TRIALDECK_HOME."""
    run_id = deck.enqueue(LONG)
    deck.wait_state(run_id, "running", 60)
    deck.kill_engine()
    elsewhere = deck.default_home
    proc = deck.cli("runs", "list", env={"TRIALDECK_HOME": str(elsewhere)})
    assert proc.returncode == 0, proc.stderr
    assert not (elsewhere / "engine.pid").exists(), "an engine was started in TRIALDECK_HOME instead of --home"
    assert "started the engine" in proc.stderr, (
        "`runs list --home WS` did not restart WS's dead engine: tui/cli.py root() passes the root-level "
        "--home (None here) to _revive_engine, so it looks at $TRIALDECK_HOME instead"
    )
    deck.wait_state(run_id, "running", 60)


def test_the_systemd_unit_starts_this_engine_from_any_directory(deck: Deck, tmp_path: Path) -> None:
    """What `systemctl --user start` would run: the unit's ExecStart, from /, with no PYTHONPATH: the
    installed `trialdeck` package is found on its own (one import name, no path workarounds)."""
    units = tmp_path / "units"
    deck.ok("engine", "install-service", "--unit-dir", str(units))
    unit = next(units.glob("*.service")).read_text()
    assert "PYTHONPATH" not in unit, unit
    argv = shlex.split(next(line for line in unit.splitlines() if line.startswith("ExecStart="))[len("ExecStart="):])
    assert argv[1:3] == ["-m", "trialdeck.engine.runtime.daemon"], argv
    env = {k: v for k, v in deck.env.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(argv, cwd="/", env={**env, "PYTHONNOUSERSITE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        status = deck.wait(lambda: deck.engine_pid() == proc.pid and deck.json("engine", "status"), 60,
                           "the unit's engine to come up")
        assert status["pid"] == proc.pid
    finally:
        deck.cli("engine", "stop", timeout=60)
        proc.wait(30)
