"""A new user's second day (issue 28): what still tripped a newcomer on a fresh clone, each checked
the way they met it.

The README's first install block offers the CPU and the GPU line side by side; a preset saved from
a local file (and its `--set` paths) works from any folder; `runs show` names the Dask worker a run
trained on; early stopping's "best" says how min_delta counts; CI's PostgreSQL starts on a free
port; and a type checker (basedpyright, what VS Code's Pylance runs) resolves `trialdeck.*` in the
environment the README's install makes. (Exports into a missing folder and from float arrays are
in tests/test_export_model.py; the TUI's side in tests/tui/test_second_day.py.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.deck import REPO, cli
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.types import RunState
from trialdeck.engine.workspace import Workspace
from trialdeck.tui.cli import app
from trialdeck.tui.live import outcome

# ---------------------------------------------------------------- the README's first install block


def first_setup_block() -> str:
    """The first ```bash block of the README's "## Set up" section."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Set up\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def test_the_first_install_block_has_the_cpu_and_the_gpu_line_side_by_side_with_their_cost():
    block = first_setup_block()
    commands = [line for line in block.splitlines() if line.startswith("python3 -m venv .venv")]
    assert len(commands) == 2, block
    cpu = next(c for c in commands if "download.pytorch.org/whl/cpu" in c)
    gpu = next(c for c in commands if c is not cpu)
    for line in commands:  # each one line that makes the venv, installs and opens trialdeck
        assert ".venv/bin/pip install -e . --config-settings editable_mode=strict" in line
        assert line.endswith("&& .venv/bin/trialdeck")
    assert "--index-url" not in gpu  # the plain install: pip's default torch
    comments = [line for line in block.splitlines() if line.startswith("#")]
    assert len(comments) == 2 and all(re.search(r"\d(\.\d)? GB venv", c) and "minute" in c for c in comments), comments


# ---------------------------------------------------------------- a preset saved from a local file


def test_a_preset_saved_from_a_local_file_runs_from_another_folder(home, tmp_path):
    here, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (here / "data").mkdir(parents=True)
    elsewhere.mkdir()
    (here / "cnn.toml").write_text('extends = ["base/digits-cnn"]\n[train]\nepochs = 3\n')
    proc = cli(home, "presets", "new", "mycnn", "--from", "./cnn.toml", "--set", "data.dataset=arrays",
               "--set", "data.path=data/x.npz", cwd=here)
    assert proc.returncode == 0, proc.stderr
    shown = cli(home, "presets", "show", "mycnn", "--json", cwd=elsewhere)
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout)["config"]
    assert config["model"]["kind"] == "cnn" and config["train"]["epochs"] == 3  # the file parent was found
    assert config["data"]["path"] == str(here / "data" / "x.npz")  # where it was typed, not where it runs
    saved = (Workspace(home).presets_dir / "mycnn.toml").read_text()
    assert str(here / "cnn.toml") in saved


# ---------------------------------------------------------------- where a run ran


def test_runs_show_names_the_dask_worker_a_run_trained_on(home):
    store = Store(Workspace(home).ensure())
    run = store.create_run(preset="seed/step-decay", config={}, config_hash="x")
    store.transition(run["id"], RunState.RUNNING, slot="box1-cpu0", device="cpu", host="box1-cpu0")
    store.transition(run["id"], RunState.COMPLETED, history=[{"epoch": 1, "val_loss": 0.5, "val_acc": 0.8}])
    local = store.create_run(preset="seed/step-decay", config={}, config_hash="y")
    store.transition(local["id"], RunState.RUNNING, slot="cpu.0", device="cpu", host=None)
    store.transition(local["id"], RunState.COMPLETED, history=[{"epoch": 1, "val_loss": 0.5, "val_acc": 0.8}])
    runner = CliRunner()
    shown = runner.invoke(app, ["runs", "show", run["id"], "--home", str(home)])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines()[0] == f"run {run['id']}  seed/step-decay  completed  on box1-cpu0 (cpu)"
    shown = runner.invoke(app, ["runs", "show", local["id"], "--home", str(home)])
    assert shown.stdout.splitlines()[0] == f"run {local['id']}  seed/step-decay  completed  on cpu"


# ---------------------------------------------------------------- early stopping's "best" with min_delta


def early_stopped(min_delta: float) -> dict:
    """Keras' rule with min_delta 0.05: epoch 4 (0.2320) stays the best though epoch 6 is lower."""
    losses = [0.9, 0.5, 0.3, 0.232, 0.21, 0.1855]
    return {"state": "early_stopped", "kept_epoch": 4,
            "config": {"early_stopping": {"enabled": True, "min_delta": min_delta, "monitor": "val_loss"}},
            "history": [{"epoch": i + 1, "val_loss": v} for i, v in enumerate(losses)],
            "summary": {"monitor": "val_loss", "best_epoch": 4, "best_value": 0.232, "kept_epoch": 4}}


def test_the_best_of_an_early_stop_says_it_counts_only_improvements_past_min_delta():
    assert outcome(early_stopped(0.05)) == ["kept (epoch 4, the best val_loss by more than 0.05): val_loss 0.2320",
                                            "last epoch 6: val_loss 0.1855"]
    not_restored = {**early_stopped(0.05), "kept_epoch": 6}
    assert outcome(not_restored) == ["kept (epoch 6, the last): val_loss 0.1855",
                                     "best val_loss (improved by > 0.05): 0.2320 at epoch 4"]
    assert outcome({**early_stopped(0.0), "kept_epoch": 6})[1] == "best val_loss 0.2320 at epoch 4"


# ---------------------------------------------------------------- CI's PostgreSQL on a free port


@pytest.mark.slow
def test_ci_postgres_starts_on_a_free_port_with_another_process_on_55432():
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install -e '.[test]')")
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        pytest.skip("no PostgreSQL binaries in /usr/lib/postgresql/*/bin")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        squatter.bind(("127.0.0.1", 55432))
        squatter.listen()
    except OSError:
        pass  # something on this box already listens there: the same test
    probe = ("import os, psycopg2; url = os.environ['TRIALDECK_TEST_PG_URL']; "
             "psycopg2.connect(url).close(); print(url)")
    try:
        proc = subprocess.run(["bash", "-c", f"set -euo pipefail; source .ci/postgres; \"$PY\" -c \"{probe}\""],
                              cwd=REPO, env={**os.environ, "PY": sys.executable}, capture_output=True, text=True,
                              timeout=180)
    finally:
        squatter.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    url = proc.stdout.strip().splitlines()[-1]
    assert url.startswith("postgresql://trialdeck@127.0.0.1:") and ":55432/" not in url


# ---------------------------------------------------------------- editors see the package


@pytest.mark.slow
def test_a_type_checker_resolves_trialdeck_in_the_readmes_install(tmp_path):
    checker = shutil.which("basedpyright", path=str(Path(sys.executable).parent)) or shutil.which("basedpyright")
    if checker is None:
        pytest.skip("basedpyright is not installed (pip install -e '.[test]')")
    (tmp_path / "mine.py").write_text(
        "import trialdeck.engine\n"
        "from trialdeck.engine.report import report\n"
        "from trialdeck.tui.app import make_app\n\n"
        "report(epoch=1, val_loss=0.5)\n"
        "print(trialdeck.engine.__name__, make_app)\n")
    proc = subprocess.run([checker, "--pythonpath", sys.executable, "--outputjson", "mine.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    found = json.loads(proc.stdout)
    unresolved = [d["message"] for d in found["generalDiagnostics"]
                  if d.get("rule") in ("reportMissingImports", "reportMissingModuleSource", "reportAttributeAccessIssue")]
    assert not unresolved, ("install with `pip install -e . --config-settings editable_mode=strict` "
                            f"(the README's line): {unresolved}")
    assert found["summary"]["errorCount"] == 0, found["generalDiagnostics"]
