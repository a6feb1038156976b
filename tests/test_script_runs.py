"""Script runs end to end: a user's own training program, queued, watched, stopped, resumed and tuned
by real `trialdeck` and engine processes.

The program is tests/scripts/train.py, standard library only, started with the system's
/usr/bin/python3 (not the venv's): it imports nothing from trialdeck and reports by appending
JSON lines to $TRIALDECK_METRICS, as a script from another environment would. What is asserted
is what a user would look at: states, errors, histories, events, exit codes, and the process
table (no process of a stopped run is left).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.deck import REPO, Deck, gone, one_line

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python3")]

SCRIPT = REPO / "tests" / "scripts" / "train.py"
PYTHON = "/usr/bin/python3"


def write_preset(path: Path, *args: str, params: dict[str, Any] | None = None, extra: str = "") -> Path:
    """A script preset running tests/scripts/train.py with the system's python3 and `args`."""
    command = json.dumps([PYTHON, str(SCRIPT), *args])
    lines = ['description = "the test script"', "[script]", f"command = {command}",
             f'workdir = "{path.parent}"', "grace_seconds = 2"]
    if params:
        lines.append("[params]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in params.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def starts(deck: Deck, run_id: str) -> list[dict[str, Any]]:
    """What each attempt of the script saw (it appends a line per start)."""
    path = deck.ws.runs_dir / run_id / "files" / "starts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def marked(marker: str) -> list[psutil.Process]:
    """Live processes with `marker` in their command line."""
    out = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in (proc.info["cmdline"] or []):
                out.append(proc)
        except psutil.Error:
            continue
    return out


def state_of(deck: Deck, run_id: str) -> str:
    return deck.store.get_run(run_id)["state"]


def test_a_script_run_completes_with_its_reported_history(deck, tmp_path):
    preset = write_preset(tmp_path / "s.toml", "--lr", "{params.lr}", "--epochs", "{params.epochs}",
                          params={"lr": 0.01, "epochs": 4})
    run_id = deck.json("run", str(preset), "--set", "params.lr=0.1")["id"]
    # `runs logs -f` from the start: the script's own lines as they come, until the run ends.
    follower = subprocess.run(deck.argv("runs", "logs", run_id, "-f"), env=deck.env, capture_output=True, text=True,
                              timeout=120)
    assert follower.returncode == 0, follower.stderr
    assert "epoch 4 val_loss" in follower.stdout and "finished" in follower.stdout
    record = deck.store.get_run(run_id)
    assert record["state"] == "completed", record.get("error")
    history = record["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[0]["val_loss"] == pytest.approx(1.0 + 1.0) and history[0]["phase"] == "train"
    assert "val_acc" not in history[0]  # only what the script reported
    assert record["code_hash"] and record["code_file"] == str(SCRIPT)
    assert record["workdir"] == str(REPO)  # the folder it was queued from
    (attempt,) = starts(deck, record["id"])
    assert attempt["argv"] == ["--lr", "0.1", "--epochs", "4"]
    assert attempt["cwd"] == str(tmp_path)  # the preset's workdir
    env = attempt["env"]
    assert env["TRIALDECK_RUN_ID"] == record["id"] and env["CUDA_VISIBLE_DEVICES"] == ""
    assert json.loads(env["TRIALDECK_PARAMS"]) == {"lr": 0.1, "epochs": 4}
    assert Path(env["TRIALDECK_RUN_DIR"]).is_dir() and "TRIALDECK_RESUME" not in env
    log = deck.ok("runs", "logs", record["id"]).stdout
    assert "epoch 4 val_loss" in log and "finished" in log  # its stdout and stderr
    follow = deck.ok("runs", "follow", record["id"]).stdout
    assert "epoch 4  train_loss" in follow and "completed" in follow


def test_a_failing_script_fails_with_the_last_line_of_its_stderr(deck, tmp_path):
    preset = write_preset(tmp_path / "s.toml", "--fail-at", "3")
    proc = deck.cli("run", str(preset), "--wait", "--json")
    assert proc.returncode == 1
    record = json.loads(proc.stdout)
    assert record["state"] == "failed"
    assert record["error"] == "ValueError: loss diverged at epoch 3"
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert any(e["kind"] == "failed" and "diverged" in e["message"] for e in record["events"])


def test_a_command_that_cannot_start_fails_with_the_reason(deck, tmp_path):
    preset = tmp_path / "s.toml"
    preset.write_text('[script]\ncommand = ["no-such-trainer-here", "--lr", "1"]\n')
    proc = deck.cli("run", str(preset), "--wait", "--json")  # looked up on this shell's PATH when queued
    assert proc.returncode == 2 and "'no-such-trainer-here' is not on your PATH" in one_line(proc.stderr)
    preset.write_text('[script]\ncommand = ["./no-such-trainer-here", "--lr", "1"]\nworkdir = "."\n')
    record = json.loads(deck.cli("run", str(preset), "--wait", "--json").stdout)
    assert record["state"] == "failed"
    assert record["error"].startswith("cannot start './no-such-trainer-here': not found")
    (tmp_path / "plain.sh").write_text("echo hi\n")  # not executable
    preset.write_text('[script]\ncommand = ["./plain.sh"]\nworkdir = "."\n')  # "." is the preset's folder
    record = json.loads(deck.cli("run", str(preset), "--wait", "--json").stdout)
    assert record["state"] == "failed" and "permission denied" in record["error"]


def test_early_stopping_on_a_plateau_stops_the_script(deck, tmp_path):
    preset = write_preset(tmp_path / "s.toml", "--epochs", "200", "--sleep", "0.1", "--plateau", "3",
                          "--children", f"marker-{uuid.uuid4().hex}",
                          extra="[early_stopping]\nenabled = true\nmonitor = \"val_loss\"\npatience = 2\n")
    record = deck.json("run", str(preset), "--wait")
    assert record["state"] == "early_stopped", record.get("error")
    epochs = [h["epoch"] for h in record["history"]]
    assert epochs == [1, 2, 3, 4, 5]  # best at 3, two epochs without improvement
    (event,) = [e for e in record["events"] if e["kind"] == "early_stopped"]
    assert event["epoch"] == 5 and "best" in event["message"]
    assert record["summary"]["best_epoch"] == 3
    marker = starts(deck, record["id"])[0]["argv"][-1]
    assert not marked(marker), "a child of the early-stopped script is still running"


def test_cancel_leaves_no_process_of_the_run_children_included(deck, tmp_path):
    marker = f"marker-{uuid.uuid4().hex}"
    preset = write_preset(tmp_path / "s.toml", "--epochs", "100000", "--sleep", "0.2", "--children", marker,
                          "--ignore-term")  # SIGTERM is ignored: only the SIGKILL after grace_seconds stops it
    run_id = deck.json("run", str(preset))["id"]
    deck.wait(lambda: len(marked(marker)) == 3 and deck.store.get_run(run_id)["history"], 60,
              "the script, its two children and its first epoch")
    script_pid = deck.store.get_run(run_id)["script_pid"]
    assert psutil.Process(script_pid).is_running()
    deck.ok("queue", "cancel", run_id)
    deck.wait(lambda: state_of(deck, run_id) == "cancelled", 30, f"{run_id} cancelled")
    assert not marked(marker), f"processes of the cancelled run are left: {marked(marker)}"
    assert gone(script_pid)
    record = deck.store.get_run(run_id)
    assert any(e["kind"] == "cancelled" for e in record["events"])
    log = (deck.ws.runs_dir / run_id / "log.txt").read_text()
    assert "did not stop within 2 s and were killed" in log


def test_a_fault_in_the_engine_while_a_script_runs_fails_the_run_and_stops_the_script(deck, tmp_path):
    """An exception on the engine's side (injected at epoch 2) must not leave the script training alone."""
    marker = f"marker-{uuid.uuid4().hex}"
    preset = write_preset(tmp_path / "s.toml", "--epochs", "1000", "--sleep", "0.1", "--children", marker)
    deck.ok("engine", "start", env={"TRIALDECK_INJECT_FAULT": "raise@2"})
    run_id = deck.json("run", str(preset))["id"]
    deck.wait(lambda: state_of(deck, run_id) == "failed", 60, f"{run_id} to fail")
    record = deck.store.get_run(run_id)
    assert record["error"] == "RuntimeError: injected fault"
    assert gone(record["script_pid"]) and not marked(marker)


def test_engine_kill_9_mid_run_resumes_the_script_without_a_gap_or_duplicate(deck, tmp_path):
    marker = f"marker-{uuid.uuid4().hex}"
    preset = write_preset(tmp_path / "s.toml", "--epochs", "30", "--sleep", "0.15", "--children", marker)
    run_id = deck.json("run", str(preset))["id"]
    reported = deck.ws.runs_dir / run_id / "reported.jsonl"
    deck.wait(lambda: reported.exists() and len(reported.read_text().splitlines()) >= 6, 60, "six reported epochs")
    engine = deck.engine_pid()
    script_pid = deck.store.get_run(run_id)["script_pid"]
    os.kill(engine, signal.SIGKILL)
    deck.wait(lambda: gone(engine) and gone(script_pid), 30, "the engine and the script to die")

    listed = deck.cli("runs", "list")  # any command brings the engine back for the interrupted run
    assert listed.returncode == 0 and "started the engine" in listed.stderr, listed.stderr
    deck.wait(lambda: state_of(deck, run_id) in ("completed", "failed"), 90, f"{run_id} to finish")
    record = deck.store.get_run(run_id)
    assert record["state"] == "completed", record.get("error")
    assert [h["epoch"] for h in record["history"]] == list(range(1, 31))
    first, second = starts(deck, run_id)
    assert "TRIALDECK_RESUME" not in first["env"] and second["env"]["TRIALDECK_RESUME"] == "1"
    assert second["start"] > 1 and second["env"]["TRIALDECK_RUN_DIR"] == first["env"]["TRIALDECK_RUN_DIR"]
    assert any(e["kind"] == "requeued" and "TRIALDECK_RESUME=1" in e["message"] for e in record["events"])
    assert not marked(marker), "children of the killed attempt are left"


def test_engine_stop_interrupts_the_script_and_engine_start_resumes_it(deck, tmp_path):
    marker = f"marker-{uuid.uuid4().hex}"
    preset = write_preset(tmp_path / "s.toml", "--epochs", "12", "--sleep", "0.2", "--children", marker)
    run_id = deck.json("run", str(preset))["id"]
    deck.wait(lambda: len(deck.store.get_run(run_id)["history"]) >= 3, 60, "three epochs in the catalogue")
    deck.ok("engine", "stop")
    record = deck.store.get_run(run_id)
    assert record["state"] == "interrupted"
    assert any(e["kind"] == "interrupted" for e in record["events"])
    assert gone(record["script_pid"]) and not marked(marker)
    deck.ok("engine", "start")
    deck.wait(lambda: state_of(deck, run_id) in ("completed", "failed"), 90, f"{run_id} to finish")
    record = deck.store.get_run(run_id)
    assert record["state"] == "completed", record.get("error")
    assert [h["epoch"] for h in record["history"]] == list(range(1, 13))
    first, second = starts(deck, run_id)
    assert first["start"] == 1 and second["start"] > 1  # it went on from its own checkpoint
    assert second["env"]["TRIALDECK_RESUME"] == "1"


def test_a_study_over_a_script_param_completes(deck, tmp_path):
    preset = write_preset(tmp_path / "s.toml", "--lr", "{params.lr}", "--epochs", "{params.epochs}",
                          params={"lr": 0.01, "epochs": 3},
                          extra='[tune]\nsampler = "random"\npruner = "none"\nseed = 3\ntrials = 6\n'
                                '[tune.space]\n"params.lr" = { float = [1e-4, 1.0], log = true }\n')
    proc = deck.cli("tune", str(preset), "--wait", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    study = deck.json("studies", "show", "s")
    assert [t["state"] for t in study["trials"]] == ["complete"] * 6
    best = study["best"]
    runs = {r["id"]: r for r in deck.store.list_runs() if r.get("study") == "s"}
    assert len(runs) == 6
    best_run = runs[best["run_id"]]
    assert best_run["config"]["params"]["lr"] == pytest.approx(best["params"]["params.lr"])
    assert best["value"] == pytest.approx(min(h["val_loss"] for h in best_run["history"]))
    for run in runs.values():  # each trial passed its sampled lr to the script
        (attempt,) = starts(deck, run["id"])
        assert float(attempt["argv"][1]) == pytest.approx(run["config"]["params"]["lr"])


def test_a_pruner_prunes_a_script_trial_through_sigterm(deck, tmp_path):
    preset = write_preset(tmp_path / "s.toml", "--lr", "{params.lr}", "--epochs", "{params.epochs}",
                          "--sleep", "0.3", params={"lr": 0.01, "epochs": 8},
                          extra='[tune]\nsampler = "random"\npruner = "median"\nseed = 7\ntrials = 12\n'
                                '[tune.space]\n"params.lr" = { float = [1e-4, 1.0], log = true }\n')
    proc = deck.cli("tune", str(preset), "--wait", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    study = deck.json("studies", "show", "s")
    states = [t["state"] for t in study["trials"]]
    assert len(states) == 12 and "pruned" in states, states
    pruned = [r for r in deck.store.list_runs() if r.get("study") == "s" and r["state"] == "pruned"]
    for run in pruned:
        assert len(run["history"]) < 8
        (event,) = [e for e in run["events"] if e["kind"] == "pruned"]
        assert "median pruner" in event["message"]
        assert gone(run["script_pid"])


def test_bad_script_presets_are_one_line_naming_the_file_and_the_key(deck, tmp_path):
    cases = {
        '[script]\ncommand = []\n': "script.command",
        '[script]\ncommand = ["python3", "t.py", "--lr", "{params.lrr}"]\n[params]\nlr = 1\n': "{params.lrr}",
        '[script]\ncommand = ["x"]\ngrace_seconds = -1\n': "script.grace_seconds",
        '[script]\ncommand = ["x"]\n[model]\nhidden = [3]\n': "does not apply to script runs",
        '[script]\ncommand = ["x"]\n[train]\nepochs = 3\n': "train.epochs",
        '[params]\nlr = 1\n': "params",
    }
    for i, (text, key) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.toml"
        path.write_text(text)
        proc = deck.cli("run", str(path))
        assert proc.returncode == 2, (text, proc.stderr)
        line = one_line(proc.stderr)
        assert str(path) in line and key in line, (text, line)
    assert not deck.ws.catalog_path.exists() or not deck.store.list_runs()
    assert deck.engine_pid() is None  # a refused run starts no engine
