"""A new user's first day (issue 13): what cost a newcomer minutes, each checked the way they met it.

Hints that name real commands; `presets new` saying which keys a later parent overrode;
`--set` of a comma list naming the TOML form; `--device cuda` refused at enqueue on a box
without one; `engine status` telling torch's CUDA build from the driver's; a worker orphaned
by kill -9 of its engine leaving one plain line; pytest's output kept clean; and from a study
to a final model (`studies best --save-preset`, `runs rerun --set`) through a real study.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from tests.deck import Deck, cli, gone, one_line
from trialdeck.engine.runtime.control.versions import fit_warning, torch_build, wheel_index
from trialdeck.engine.runtime.placement.gpus import probe_gpus
from trialdeck.tui.cli import app

REPO = Path(__file__).resolve().parents[1]
HINT = re.compile(r"`trialdeck ([^`]*)`")


# ---------------------------------------------------------------- hints name commands that exist


def hints() -> list[tuple[str, str]]:
    """(file, text after `trialdeck `) for every backticked command in the sources and the README."""
    files = sorted([*REPO.glob("engine/**/*.py"), *REPO.glob("tui/**/*.py"), REPO / "README.md"])
    return [(str(f.relative_to(REPO)), m.group(1)) for f in files for m in HINT.finditer(f.read_text())]


def command_path(text: str) -> list[str]:
    """The command words of a hint: up to the first placeholder, option or argument
    (`runs follow {run_id}` -> runs follow, `tune seed/activations` -> tune)."""
    words = []
    for word in text.split():
        if not re.fullmatch(r"[a-z][a-z-]*", word):
            break
        words.append(word)
    return words


def test_the_sources_hold_hints_to_check():
    found = {" ".join(command_path(text)) for _, text in hints()}
    assert {"runs follow", "queue cancel", "studies show", "engine start", "run", "tune"} <= found


@pytest.mark.parametrize(("where", "text"), hints(), ids=lambda v: v if "/" in v or "." in v else None)
def test_every_hint_names_a_command_that_exists(where, text):
    import typer.main

    command = typer.main.get_command(app)
    words = command_path(text)
    path = []
    for word in words:
        commands = getattr(command, "commands", None)
        if commands is None:  # a command, not a group: the rest are its arguments
            break
        assert word in commands, f"{where}: `trialdeck {text}` names no command {' '.join([*path, word])!r}"
        command = commands[word]
        path.append(word)
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, f"{where}: `trialdeck {' '.join(path)} --help` exited {result.exit_code}"


# ---------------------------------------------------------------- presets: overrides and lists


def test_presets_new_says_which_keys_a_later_parent_overrode(home):
    proc = cli(home, "presets", "new", "mine/cnn-dropout", "--from", "base/digits-cnn", "--from", "seed/dropout")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ("trialdeck: seed/dropout overrides model.kind (cnn -> mlp), model.hidden "
                                   "([128] -> [256, 256]), train.epochs (20 -> 30) from base/digits-cnn")
    out = json.loads(cli(home, "presets", "new", "mine/again", "--from", "base/digits-cnn", "--from", "seed/dropout",
                         "--json").stdout)
    assert {"parent": "seed/dropout", "key": "model.kind", "old": "cnn", "new": "mlp",
            "from": "base/digits-cnn"} in out["overrides"]
    quiet = cli(home, "presets", "new", "mine/l2", "--from", "base/digits-mlp", "--from", "reg/l2")
    assert quiet.returncode == 0 and quiet.stderr == ""  # a block that only adds keys overrides nothing


@pytest.mark.parametrize(("item", "form"), [("model.hidden=512,512", "model.hidden=[512, 512]"),
                                            ("model.dropout=0.5,0.3", "model.dropout=[0.5, 0.3]")])
def test_a_comma_list_in_set_names_the_toml_form(home, item, form):
    proc = cli(home, "presets", "show", "base/digits-mlp", "--set", item)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert line.startswith(f"trialdeck: --set {item.split('=')[0]}: ")
    assert line.endswith(f"a list is written in TOML brackets: --set '{form}'")


def test_a_comma_in_a_key_that_takes_no_list_gets_no_list_hint(home):
    line = one_line(cli(home, "presets", "show", "base/digits-mlp", "--set", "model.activation=relu,gelu").stderr)
    assert "is not allowed" in line and "TOML brackets" not in line


# ---------------------------------------------------------------- --device cuda on a box without CUDA


@pytest.mark.skipif(bool(probe_gpus()), reason="this box has an NVIDIA GPU")
@pytest.mark.parametrize("args", [["--device", "cuda"], ["--device", "cuda:1"], ["--set", "train.device='cuda'"]],
                         ids=["device-cuda", "device-cuda-1", "preset-device"])
def test_run_pinned_to_a_gpu_this_box_lacks_is_refused_at_enqueue(home, args):
    proc = cli(home, "run", "base/digits-mlp", *args)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert "was asked for, but this machine has no NVIDIA GPU the engine can see" in line
    assert line.endswith("use --device cpu (or auto)")
    assert json.loads(cli(home, "runs", "list", "--json").stdout) == []
    assert not (home / "engine.pid").exists(), "a refused run must not start the engine"


@pytest.mark.skipif(bool(probe_gpus()), reason="this box has an NVIDIA GPU")
def test_with_an_engine_running_its_own_slots_decide(home):
    deck = Deck(home)
    deck.ok("engine", "start", "--cpu-slots", "2")
    proc = deck.cli("run", "base/digits-mlp", "--device", "cuda:0")
    assert proc.returncode == 2
    assert "device 'cuda:0' was asked for, but this machine has no NVIDIA GPU" in one_line(proc.stderr)
    assert deck.store.list_runs() == []
    record = deck.json("run", "base/digits-mlp", "--device", "cpu", "--set", "train.epochs=1")
    assert record["state"] == "queued"


# ---------------------------------------------------------------- engine status: torch and the driver


def test_engine_status_shows_torch_cuda_and_the_driver_without_importing_torch(home):
    import torch

    status = json.loads(cli(home, "engine", "status", "--json").stdout)
    assert status["torch_version"] == torch.__version__
    assert status["torch_cuda"] == torch.version.cuda
    assert {"driver_version", "driver_cuda", "gpus", "cuda_warning"} <= set(status)
    if not probe_gpus():
        assert status["driver_version"] is None and status["gpus"] == 0
    text = cli(home, "engine", "status")
    assert f"torch {torch.__version__}" in text.stdout
    if status["cuda_warning"]:
        assert f"trialdeck: warning: {status['cuda_warning']}" in text.stderr
    code = ("import sys; from typer.testing import CliRunner; from trialdeck.tui.cli import app; "
            f"r = CliRunner().invoke(app, ['engine', 'status', '--home', {str(home)!r}]); "
            "print(r.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.split()
    assert out == ["0", "False"], out


def test_torch_build_is_read_from_its_files_as_torch_reports_it():
    import torch

    assert torch_build() == (torch.__version__, torch.version.cuda)


@pytest.mark.parametrize(("torch_cuda", "driver", "driver_cuda", "gpus", "says"), [
    ("12.6", "560.35", "12.6", 1, None),
    ("12.4", "560.35", "12.6", 2, None),
    ("13.0", "550.54", "12.4", 1, "built for CUDA 13.0, but NVIDIA driver 550.54 supports CUDA up to 12.4: CUDA runs "
                                  "will fail; pip install torch torchvision --index-url "
                                  "https://download.pytorch.org/whl/cu124, or update the driver"),
    ("12.8", "535.1", "12.2", 1, "--index-url https://download.pytorch.org/whl/cu121, or update the driver"),
    ("12.1", "450.8", "11.0", 1, "supports CUDA up to 11.0: CUDA runs will fail; update the driver"),
    ("13.0", None, None, 0, "is a CUDA 13.0 build, but no NVIDIA driver answers here: runs train on the CPU (a CPU "
                            "build is far smaller: pip install torch torchvision --index-url "
                            "https://download.pytorch.org/whl/cpu)"),
    (None, "560.35", "12.6", 4, "is a CPU build, but this box has 4 NVIDIA GPU(s) (driver 560.35, CUDA 12.6): runs "
                                "train on the CPU; pip install torch torchvision --index-url "
                                "https://download.pytorch.org/whl/cu126"),
    (None, None, None, 0, None),
], ids=["same", "older-minor", "newer-major", "newer-minor", "driver-too-old", "no-driver", "cpu-build", "cpu-box"])
def test_fit_warning_with_made_up_versions(torch_cuda, driver, driver_cuda, gpus, says):
    warning = fit_warning("2.9.0", torch_cuda, driver, driver_cuda, gpus)
    if says is None:
        assert warning is None
    else:
        assert warning is not None and says in warning and warning.startswith("torch 2.9.0 ")


def test_wheel_index_is_the_newest_the_driver_supports():
    assert wheel_index("12.6") == "https://download.pytorch.org/whl/cu126"
    assert wheel_index("12.7") == "https://download.pytorch.org/whl/cu126"
    assert wheel_index("13.1") == "https://download.pytorch.org/whl/cu130"
    assert wheel_index("11.4") is None
    assert fit_warning(None, None, None, None, 0) == "torch is not installed: install trialdeck's dependencies (pip install -e .)"


# ---------------------------------------------------------------- kill -9 of the engine: no traceback


def _workers(engine: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(engine).children()
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if "spawn_main" in " ".join(_cmdline(c))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _kill_engine_then_wait_for_its_workers(deck: Deck, workers: list[psutil.Process], engine: int) -> None:
    os.kill(engine, signal.SIGKILL)
    deck.wait(lambda: gone(engine) and all(gone(w.pid) for w in workers), 60, "the engine and its workers to end")


def test_a_worker_orphaned_by_kill_9_of_its_engine_writes_one_line_not_a_traceback(home):
    deck = Deck(home)
    # The reported case: an engine with a running run, killed.
    deck.ok("run", "base/digits-mlp", "--set", "train.epochs=500")
    engine = deck.engine_pid()
    deck.wait(lambda: deck.store.list_runs("running"), 90, "the run to start")
    _kill_engine_then_wait_for_its_workers(deck, _workers(engine), engine)
    # Killed again while its worker still starts (importing torch): the worker outlives it,
    # and once sent its first message into the dead engine's pipe (a BrokenPipeError traceback).
    deck.ok("engine", "start")
    engine = deck.engine_pid()
    workers = deck.wait(lambda: _workers(engine), 30, "the new engine's worker process")
    _kill_engine_then_wait_for_its_workers(deck, workers, engine)
    log = deck.ws.engine_log.read_text(errors="replace")
    assert "Traceback" not in log, log
    assert "BrokenPipeError" not in log, log


# ---------------------------------------------------------------- pytest's own output


def test_no_test_writes_past_pytest_capture():
    """Timings belong in bench/ (bench/run_all.py writes BENCHMARKS.md), not in pytest's output."""
    offenders = [str(p.relative_to(REPO)) for p in sorted(REPO.glob("tests/**/*.py"))
                 if p.name != "test_newcomer.py" and ("capsys.disabled()" in p.read_text() or "[perf]" in p.read_text())]
    assert offenders == []


# ---------------------------------------------------------------- from a study to a final model

TINY_STUDY = """description = "two activations, two epochs"
extends = ["base/digits-mlp"]

[model]
hidden = [16]

[train]
epochs = 2

[tune]
sampler = "grid"
pruner = "none"
metric = "val_acc"
direction = "maximize"
trials = 2

[tune.space]
"model.activation" = { choices = ["relu", "tanh"] }
"""


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    """A workspace with a finished two-trial study, `tiny-grid`, run by the engine."""
    home = tmp_path_factory.mktemp("study") / "ws"
    (home / "presets" / "tiny").mkdir(parents=True)
    (home / "presets" / "tiny" / "grid.toml").write_text(TINY_STUDY)
    deck = Deck(home)
    done = deck.json("tune", "tiny/grid", "--wait", timeout=300)
    assert done["state"] == "completed" and done["best"], done
    yield deck, done
    deck.stop()


def _body(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("preset", "description", "tune")}


def test_studies_best_save_preset_writes_the_best_trials_config_that_runs_as_is(studied):
    deck, study = studied
    best = study["best"]
    saved = deck.json("studies", "best", "tiny-grid", "--save-preset", "final/best")
    assert saved["number"] == best["number"] and saved["saved_preset"]["name"] == "final/best"
    path = deck.home / "presets" / "final" / "best.toml"
    assert saved["saved_preset"]["path"] == str(path) and path.is_file()
    assert "tune" not in path.read_text() and "extends" not in path.read_text()

    shown = deck.json("presets", "show", "final/best")
    trial_run = deck.json("runs", "show", best["run_id"])
    assert shown["config"]["model"]["activation"] == best["params"]["model.activation"]
    assert _body(shown["config"]) == _body(trial_run["config"])  # the study's config with the trial's params
    assert "tune" not in shown["config"]
    deck.ok("presets", "validate", "final/best")

    before = path.read_bytes()
    refused = deck.cli("studies", "best", "tiny-grid", "--save-preset", "final/best")
    assert refused.returncode == 2
    assert one_line(refused.stderr) == f"trialdeck: {path}: already exists; pass --force to overwrite it"
    assert path.read_bytes() == before
    deck.ok("studies", "best", "tiny-grid", "--save-preset", "final/best", "--force")

    record = deck.json("run", "final/best", "--wait", timeout=180)
    assert record["state"] == "completed" and record["preset"] == "final/best"
    assert _body(record["config"]) == _body(trial_run["config"])


def test_runs_rerun_set_trains_a_trial_longer_and_validates_like_any_set(studied):
    deck, study = studied
    old = deck.json("runs", "show", study["best"]["run_id"])
    new = deck.json("runs", "rerun", old["id"], "--set", "train.epochs=3")
    assert new["id"] != old["id"] and new["state"] == "queued" and new.get("study") is None
    assert new["config"]["train"]["epochs"] == 3
    assert _body({**new["config"], "train": {**new["config"]["train"], "epochs": 2}}) == _body(old["config"])
    finished = deck.wait(lambda: (r := deck.store.get_run(new["id"]))["state"] in ("completed", "failed") and r,
                         120, "the longer run to end")
    assert finished["state"] == "completed" and len(finished["history"]) == 3

    count = len(deck.store.list_runs())
    bad = deck.cli("runs", "rerun", old["id"], "--set", "train.epochs=0")
    assert bad.returncode == 2
    assert one_line(bad.stderr).startswith("trialdeck: --set train.epochs: train.epochs = 0:")
    assert len(deck.store.list_runs()) == count
    text = deck.ok("runs", "rerun", old["id"], "--set", "train.epochs=2").stdout
    assert text.startswith("queued r") and f"(the configuration of {old['id']} with train.epochs=2)" in text


def test_studies_best_save_preset_refuses_a_bad_name_and_force_alone(studied):
    deck, _ = studied
    bad = deck.cli("studies", "best", "tiny-grid", "--save-preset", "../escape")
    assert bad.returncode == 2 and "preset name '../escape'" in one_line(bad.stderr)
    alone = deck.cli("studies", "best", "tiny-grid", "--force")
    assert alone.returncode == 2 and one_line(alone.stderr) == "trialdeck: --force: only with --save-preset NAME"
