"""Metrics from programs as they are, end to end: real programs that import nothing from trialdeck,
queued, watched, early-stopped and tuned by real `trialdeck` and engine processes.

One program per output form (tests/scripts/capture): word_language_model's `| end of epoch N |`
lines, Keras' `Epoch N/M` and progress bar, the Hugging Face Trainer's quoted-number dicts,
TensorBoard event files written by torch's SummaryWriter (skipped, saying why, without the
tensorboard extra), and the W&B API with no wandb installed. For each: the history is there
while the program still runs (it waits on a gate file the test creates), early stopping on the
captured validation loss stops it, and a 4-trial study over params.lr with a pruner ends with
no trial failed for a missing metric. Then what is said when a watched metric never comes,
a study over a program that prints no metric, the program found on the queuing shell's PATH,
`resume_args`, and a failed program's reason.

The stdlib programs run with the system's /usr/bin/python3 (no trialdeck, no wandb); the
TensorBoard one with this interpreter, which has torch. One engine serves the module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deck import REPO, Deck, stop_engine

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python3")]

PROGRAMS = REPO / "tests" / "scripts" / "capture"
SYSTEM = "/usr/bin/python3"
TENSORBOARD = importlib.util.find_spec("tensorboard") is not None

FORMS: dict[str, dict[str, Any]] = {
    "word_language_model": {"program": "wlm.py", "capture": 'rename = { valid_loss = "val_loss" }',
                            "monitor": "val_loss"},
    "keras": {"program": "keras.py", "capture": "", "monitor": "val_loss"},
    "hugging_face": {"program": "hf.py", "capture": "", "monitor": "eval_loss"},
    "tensorboard": {"program": "tb.py", "capture": 'tensorboard = "{run_dir}/tb"', "monitor": "loss_val",
                    "args": ["--logdir", "{run_dir}/tb"], "python": sys.executable},
    "wandb": {"program": "wb.py", "capture": "wandb = true", "monitor": "val_loss", "every": 100},  # logs its iter
}


def needs(form: str) -> None:
    if form == "tensorboard" and not TENSORBOARD:
        pytest.skip("the tensorboard extra is not installed (pip install 'trialdeck[tensorboard]')")


def write_preset(path: Path, form: str, *args: str, extra: str = "", script: str = "") -> Path:
    """A preset running the form's program from tests/scripts/capture with `args`; `script` adds
    [script] keys, `extra` tables after it."""
    spec = FORMS[form]
    command = [spec.get("python", SYSTEM), spec["program"], "--lr", "{params.lr}", *spec.get("args", []), *args]
    capture = spec["capture"]
    path.write_text(f'description = "{form}"\n[script]\ncommand = {json.dumps(command)}\nworkdir = "{PROGRAMS}"\n'
                    f"grace_seconds = 2\n{script}[params]\nlr = 0.01\n"
                    + (f"[script.capture]\n{capture}\n" if capture else "") + extra)
    return path


@pytest.fixture(scope="module")
def module_deck(tmp_path_factory):
    """One engine for the module (the conftest's `deck` is one per test)."""
    home = tmp_path_factory.mktemp("capture") / "ws"
    deck = Deck(home)
    deck.ok("engine", "start")
    yield deck
    stop_engine(home)


def history_of(module_deck: Deck, run_id: str) -> list[dict[str, Any]]:
    return module_deck.store.get_run(run_id).get("history") or []


@pytest.mark.parametrize("form", list(FORMS))
def test_live_history_and_early_stopping_on_the_captured_validation_loss(module_deck, tmp_path, form):
    needs(form)
    monitor, every = FORMS[form]["monitor"], FORMS[form].get("every", 1)
    preset = write_preset(tmp_path / f"{form}.toml", form, "--epochs", "8", "--plateau", "2",
                          "--gate", "{run_dir}/go", "--gate-after", "3",
                          extra=f'[early_stopping]\nenabled = true\nmonitor = "{monitor}"\npatience = 2\n')
    run_id = module_deck.json("run", str(preset))["id"]
    # The program waits in epoch 4 for the gate: epochs 1-3 are in the catalogue while it runs.
    module_deck.wait(lambda: [h["epoch"] for h in history_of(module_deck, run_id)] == [every, 2 * every, 3 * every], 90,
                     lambda: f"epochs 1-3 of {run_id} while it runs: {history_of(module_deck, run_id)}")
    record = module_deck.store.get_run(run_id)
    assert record["state"] == "running"
    assert [h[monitor] for h in record["history"]] == pytest.approx([1.1, 0.6, 0.65], abs=1e-4)
    follow = json.loads(module_deck.ok("runs", "show", run_id, "--json").stdout)
    assert len(follow["history"]) == 3
    (module_deck.ws.runs_dir / run_id / "files" / "go").touch()
    module_deck.wait(lambda: module_deck.store.get_run(run_id)["state"] != "running", 90, f"{run_id} to end")
    record = module_deck.store.get_run(run_id)
    assert record["state"] == "early_stopped", (record.get("error"), record["history"])
    # Best at the second, then two epochs without improvement.
    assert [h["epoch"] for h in record["history"]] == [every, 2 * every, 3 * every, 4 * every]
    (event,) = [e for e in record["events"] if e["kind"] == "early_stopped"]
    assert event["epoch"] == 4 * every and record["summary"]["best_epoch"] == 2 * every
    assert not [e for e in record["events"] if e["kind"] == "metric_missing"]
    shown = module_deck.ok("runs", "show", run_id).stdout
    assert "kept:" not in shown  # trialdeck keeps no weights of a script run
    metrics = [json.loads(line) for line in (module_deck.ws.runs_dir / run_id / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if m.get("kind") == "epoch"] == [every, 2 * every, 3 * every, 4 * every]


@pytest.mark.parametrize("form", list(FORMS))
def test_a_four_trial_study_over_the_lr_with_a_pruner_records_every_trial(module_deck, tmp_path, form):
    needs(form)
    monitor = FORMS[form]["monitor"]
    name = f"lr-{form}"
    preset = write_preset(tmp_path / f"{name}.toml", form, "--epochs", "3",
                          extra=f'[tune]\nsampler = "random"\npruner = "median"\nseed = 1\ntrials = 4\n'
                                f'metric = "{monitor}"\n[tune.space]\n"params.lr" = {{ float = [1e-3, 1e-1], log = true }}\n')
    proc = module_deck.cli("tune", str(preset), "--study", name, "--wait", "--json", timeout=400)
    assert proc.returncode == 0, proc.stderr
    study = module_deck.json("studies", "show", name)
    states = [t["state"] for t in study["trials"]]
    assert len(states) == 4 and "fail" not in states, [(t["state"], t.get("fail_reason")) for t in study["trials"]]
    for trial in study["trials"]:
        assert trial["intermediate"], f"trial {trial['number']}: the pruner heard no {monitor}"
    runs = {r["id"]: r for r in module_deck.store.list_runs() if r.get("study") == name}
    best = runs[study["best"]["run_id"]]
    assert study["best"]["value"] == pytest.approx(min(h[monitor] for h in best["history"]))


def test_a_watched_metric_that_never_comes_is_said_in_the_runs_events(module_deck, tmp_path):
    preset = write_preset(tmp_path / "acc.toml", "keras", "--epochs", "3",
                          extra='[early_stopping]\nenabled = true\nmonitor = "val_acc"\npatience = 2\n')
    record = module_deck.json("run", str(preset), "--wait")
    assert record["state"] == "completed"
    said = [e for e in record["events"] if e["kind"] == "metric_missing"]
    assert [e["message"] for e in said] == [
        "early stopping watches val_acc; the program has reported none (captured so far: loss, val_loss)",
        "early stopping watched val_acc, which never arrived (recorded: loss, val_loss)"]
    assert "metric_missing: early stopping watches val_acc" in module_deck.ok("runs", "show", record["id"]).stdout


def test_a_study_over_a_program_that_prints_no_metric_stops_after_two_trials(module_deck, tmp_path):
    quiet = tmp_path / "quiet.py"
    quiet.write_text("import sys\nfor i in range(3):\n    print('working on it, lr', sys.argv[1])\n")
    preset = tmp_path / "quiet.toml"
    preset.write_text(f'[script]\ncommand = ["{SYSTEM}", "{quiet}", "{{params.lr}}"]\n[params]\nlr = 0.1\n'
                      '[tune]\nsampler = "random"\npruner = "median"\ntrials = 8\n'
                      '[tune.space]\n"params.lr" = { float = [1e-3, 1e-1], log = true }\n')
    proc = module_deck.cli("tune", str(preset), "--study", "quiet", "--wait", timeout=300)
    assert proc.returncode == 1
    assert "its first two trials" in proc.stderr and "recorded no val_loss" in proc.stderr, proc.stderr
    study = module_deck.json("studies", "show", "quiet")
    assert study["state"] == "failed" and "presets capture" in study["error"]
    runs = [r for r in module_deck.store.list_runs() if r.get("study") == "quiet"]
    assert len([r for r in runs if r["state"] != "cancelled"]) == 2, [(r["id"], r["state"]) for r in runs]
    assert len(runs) < 8  # the rest of its trials were never spent


def test_the_program_is_the_one_on_the_path_of_the_shell_that_queued_it(module_deck, tmp_path):
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    python = venv / "python"
    python.write_text(f'#!/bin/sh\necho "the venv python" >&2\nexec {SYSTEM} "$@"\n')
    python.chmod(0o755)
    preset = write_preset(tmp_path / "venv.toml", "keras", "--epochs", "2")
    text = preset.read_text().replace(json.dumps(SYSTEM), '"python"')
    preset.write_text(text)
    env = {"PATH": f"{venv}{os.pathsep}{os.environ['PATH']}"}  # `source venv/bin/activate`, as far as PATH goes
    record = json.loads(module_deck.ok("run", str(preset), "--wait", "--json", env=env).stdout)
    assert record["state"] == "completed" and [h["epoch"] for h in record["history"]] == [1, 2]
    assert record["config"]["script"]["program"] == str(python)
    assert "the venv python" in (module_deck.ws.runs_dir / record["id"] / "log.txt").read_text()
    assert f"program {python}" in module_deck.ok("runs", "show", record["id"]).stdout
    proc = module_deck.cli("run", str(preset), env={"PATH": "/usr/bin:/bin"})  # a shell where `python` is not found
    assert proc.returncode == 2 and "'python' is not on your PATH" in proc.stderr


def test_a_failed_program_fails_with_its_exception_not_a_hint_after_it(module_deck, tmp_path):
    script = tmp_path / "train.sh"
    script.write_text(f"#!/bin/sh\n{SYSTEM} -c 'raise ValueError(\"loss diverged at epoch 3\")'\n"
                      "echo 'hint: rerun with TORCH_SHOW_CPP_STACKTRACES=1' >&2\nexit 1\n")
    script.chmod(0o755)
    preset = tmp_path / "fail.toml"
    preset.write_text(f'[script]\ncommand = ["{script}"]\n')
    proc = module_deck.cli("run", str(preset), "--wait", "--json")
    record = json.loads(proc.stdout)
    assert proc.returncode == 1 and record["error"] == "ValueError: loss diverged at epoch 3"
    shown = module_deck.ok("runs", "show", record["id"]).stdout
    assert shown.count("loss diverged at epoch 3") == 2  # the summary's error line, and the event in the list


def test_resume_args_and_run_dir_resume_a_program_without_a_gap(tmp_path):
    """engine stop mid-run, engine start: the program gets `resume_args` (with `{run_dir}` filled) and
    goes on from its own checkpoint; the captured history has each epoch once."""
    module_deck = Deck(tmp_path / "ws")
    try:
        preset = write_preset(tmp_path / "resume.toml", "keras", "--epochs", "10", "--sleep", "0.15",
                              "--state", "{run_dir}/state", script='resume_args = ["--resume"]\n')
        run_id = module_deck.json("run", str(preset))["id"]
        module_deck.wait(lambda: len(history_of(module_deck, run_id)) >= 3, 90, "three epochs")
        module_deck.ok("engine", "stop")
        assert module_deck.store.get_run(run_id)["state"] == "interrupted"
        module_deck.ok("engine", "start")
        module_deck.wait(lambda: module_deck.store.get_run(run_id)["state"] not in ("running", "queued", "interrupted"), 120,
                         f"{run_id} to finish")
        record = module_deck.store.get_run(run_id)
        assert record["state"] == "completed", record.get("error")
        assert [h["epoch"] for h in record["history"]] == list(range(1, 11))
        log = (module_deck.ws.runs_dir / run_id / "log.txt").read_text()
        starts = [line for line in log.splitlines() if " starting " + run_id in line]
        assert len(starts) == 2 and "--resume" not in starts[0] and starts[1].rstrip().endswith("TRIALDECK_RESUME=1)")
        assert "--resume" in starts[1]
        assert "started over" not in log  # it went on from its checkpoint
    finally:
        module_deck.stop()
