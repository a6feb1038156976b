"""trialdeck.engine never loads the UI, and `trialdeck --help` loads no heavy library.

Every check runs in a fresh interpreter (this pytest process already has
everything in sys.modules), like harlequin's tests/unit_tests/test_import_hygiene.py.
Engine modules are discovered with pkgutil, so a new module is covered the day
it lands.

Per-module checks share one start-up: a fresh interpreter imports torch, numpy
and pydantic (checked to load neither textual nor rich), then forks one child
per engine module; each child starts with no engine module loaded, imports its
module and reports what it loaded. That keeps one clean interpreter per module
without paying torch's ~1 s import twenty times on a 2-core box.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import trialdeck.engine

REPO = Path(__file__).resolve().parents[1]
UI = {"textual", "rich"}
HEAVY = {"torch", "optuna", "textual"}
MARK = "@@MODULES@@"

KNOWN = ("trialdeck.engine.presets", "trialdeck.engine.catalogue.store", "trialdeck.engine.workspace",
         "trialdeck.engine.types", "trialdeck.engine.errors", "trialdeck.engine.training.schedules",
         "trialdeck.engine.training.trainer", "trialdeck.engine.datasets", "trialdeck.engine.training.augment",
         "trialdeck.engine.training.models")


def engine_modules() -> list[str]:
    names = ["trialdeck.engine"]
    for info in pkgutil.walk_packages(trialdeck.engine.__path__, prefix="trialdeck.engine."):
        names.append(info.name)
    return sorted(names)


def run_probe(code: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=env)
    assert MARK in proc.stdout, f"probe did not report (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout.rpartition(MARK)[2]


def loaded_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """Run `code` in a fresh interpreter; the top-level packages in sys.modules once it exits,
    and every trialdeck module by its full name."""
    probe = (
        "import atexit, json, sys\n"
        "def _dump():\n"
        "    loaded = {m.split('.')[0] for m in sys.modules} | {m for m in sys.modules if m.startswith('trialdeck')}\n"
        f"    sys.__stdout__.write('\\n{MARK}' + json.dumps(sorted(loaded)))\n"
        "    sys.__stdout__.flush()\n"
        "atexit.register(_dump)\n"
        + code
    )
    return set(json.loads(run_probe(probe, env)))


FORK_SERVER = r"""
import json, os, sys
import numpy, pydantic, torch  # allowed heavy dependencies, preloaded once for every child
UI = ("textual", "rich")
assert not [m for m in sys.modules if m.split(".")[0] in UI], "the preloaded libraries pulled in the UI"
assert not [m for m in sys.modules if m == "trialdeck.engine" or m.startswith("trialdeck.engine.")]
results = {}
for name in json.loads(sys.argv[1]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            __import__(name)
            out = {"ui": sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in UI})}
        except BaseException as exc:  # report, never let the child run the parent's loop
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    results[name] = json.loads(b"".join(chunks) or b'{"error": "child died"}')
sys.stdout.write("\n@@MODULES@@" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def per_module() -> dict[str, dict]:
    modules = engine_modules()
    proc = subprocess.run([sys.executable, "-c", FORK_SERVER, json.dumps(modules)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert MARK in proc.stdout, f"fork server failed (rc {proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout.rpartition(MARK)[2])


def test_discovery_finds_the_known_modules():
    names = set(engine_modules())
    assert set(KNOWN) <= names


@pytest.mark.parametrize("module", engine_modules())
def test_engine_module_never_loads_textual_or_rich(module, per_module):
    result = per_module[module]
    assert "error" not in result, f"importing {module} failed: {result.get('error')}"
    assert not result["ui"], f"importing {module} loaded {result['ui']}"


def test_all_engine_modules_together_never_load_textual_or_rich():
    """Belt and braces: a truly fresh interpreter (nothing preloaded) importing every module."""
    loaded = loaded_after("\n".join(f"import {m}" for m in engine_modules()))
    assert not loaded & UI, f"importing engine loaded {sorted(loaded & UI)}"


def test_import_engine_does_not_import_torch():
    loaded = loaded_after("import trialdeck.engine")
    assert "trialdeck.engine" in loaded
    assert not loaded & (HEAVY | UI), f"import trialdeck.engine loaded {sorted(loaded & (HEAVY | UI))}"


PUBLIC_SURFACE = r"""
import importlib.metadata, os, sys, tempfile
from trialdeck.engine import __version__, report
assert "torch" not in sys.modules, "report needs no torch"
path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
os.environ["TRIALDECK_METRICS"] = path
report(epoch=1, val_loss=0.5)
from trialdeck.engine.report import report as deep_report, run_dir
import trialdeck.engine.report as deep_module
deep_report(epoch=2)
deep_module.report(epoch=3)
assert deep_module is report and run_dir() == report.run_dir()
assert [line.count("epoch") for line in open(path)] == [1, 1, 1]
from trialdeck.engine import load_model
from trialdeck.engine.training.export import load_model as deep_load_model
assert load_model is deep_load_model
assert __version__ == importlib.metadata.version("trialdeck"), (__version__, importlib.metadata.version("trialdeck"))
"""


def test_the_public_surface_is_report_load_model_and_the_one_version():
    """`from trialdeck.engine import report, load_model, __version__`: report is callable and the
    same object as the deep path, loads no torch; load_model is the export's; the installed
    distribution's version is the package's."""
    loaded = loaded_after(PUBLIC_SURFACE)
    assert "torch" in loaded, "load_model loads torch (on first use)"


def _help_probe(argv: list[str]) -> str:
    return (
        f"sys.argv = {argv!r}\n"
        "from trialdeck.tui.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), f'exit code {exc.code}'\n"
    )


@pytest.mark.parametrize(
    "argv",
    [["trialdeck", "--help"], ["trialdeck", "presets", "--help"], ["trialdeck", "train", "--help"]],
    ids=["root", "presets", "train"],
)
def test_trialdeck_help_loads_neither_torch_optuna_nor_textual(tmp_path, argv):
    env = {**os.environ, "TRIALDECK_HOME": str(tmp_path / "home")}
    loaded = loaded_after(_help_probe(argv), env=env)
    assert {"typer", "trialdeck.tui.cli"} <= loaded, "the probe should have run the CLI"
    assert not loaded & HEAVY, f"{' '.join(argv)} loaded {sorted(loaded & HEAVY)}"


def test_import_linter_contracts_hold():
    """The static half of the rule, and the rooms' order: import-linter's contracts in
    pyproject.toml (the engine never imports the UI; runtime above tuning and training,
    above the catalogue, datasets and presets, above the shared types)."""
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.exists(), f"import-linter is not installed beside {sys.executable} (pip install -e '.[test]')"
    proc = subprocess.run([str(exe)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "4 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


TUI_API = ("trialdeck.engine", "trialdeck.engine.errors", "trialdeck.engine.types", "trialdeck.engine.kinds",
           "trialdeck.engine.workspace", "trialdeck.engine.presets*", "trialdeck.engine.catalogue*",
           "trialdeck.engine.tuning.launch", "trialdeck.engine.tuning.results", "trialdeck.engine.tuning.study",
           "trialdeck.engine.tuning.storages", "trialdeck.engine.tuning.pareto", "trialdeck.engine.tuning.insight",
           "trialdeck.engine.capture.session", "trialdeck.engine.capture.tboard",
           "trialdeck.engine.runs.folder", "trialdeck.engine.runtime.control*", "trialdeck.engine.runtime.config",
           "trialdeck.engine.runtime.daemon", "trialdeck.engine.runtime.placement.gpus",
           "trialdeck.engine.training.export", "trialdeck.engine.training.schedules",
           "trialdeck.engine.training.callbacks", "trialdeck.engine.datasets._export")
"""The engine modules the TUI may import (pyproject.toml's contract names the rooms it may not)."""


def test_the_tui_imports_the_engine_only_through_its_api_modules():
    import fnmatch

    import grimp

    graph = grimp.build_graph("trialdeck.engine", "trialdeck.tui")
    used = {imported for module in graph.modules if module.startswith("trialdeck.tui")
            for imported in graph.find_modules_directly_imported_by(module) if imported.startswith("trialdeck.engine")}
    outside = sorted(m for m in used if not any(fnmatch.fnmatch(m, pattern) for pattern in TUI_API))
    assert not outside, f"the TUI imports engine modules outside its API: {outside}"
    assert {"trialdeck.engine.runtime.control.actions", "trialdeck.engine.runtime.control.client"} <= used


ENGINE_WITHOUT_CLUSTER = r"""
import os, signal, threading, time
from tests.deck import until
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.presets import resolve
from trialdeck.engine.runtime import daemon
from trialdeck.engine.runtime.control import actions as control, client
from trialdeck.engine.workspace import Workspace
from trialdeck.tui.probes import SystemProbe, status_text

ws = Workspace.resolve(HOME).ensure()
store = Store(ws)
[run] = control.enqueue(store, [resolve("seed/step-decay", ["train.epochs=1"])])

def stop_when_done():
    try:
        until(lambda: store.get_run(run["id"])["state"] == "completed", 90, "the run", interval=0.1)
    finally:
        status_text(SystemProbe(ws).engine(), None, {}, time.time())  # the TUI's engine line, while it runs
        os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=stop_when_done, daemon=True).start()
assert daemon.main(["--home", HOME]) == 0
assert store.get_run(run["id"])["state"] == "completed"
assert client.status(ws)["cluster"] is None
"""


@pytest.mark.slow
def test_an_engine_without_a_cluster_never_imports_distributed(tmp_path):
    """The local placement is today's behaviour: an engine that ran a run (and the status it
    reports, and the TUI's engine line) never loads Dask's `distributed`."""
    loaded = loaded_after(f"HOME = {str(tmp_path / 'ws')!r}\n" + ENGINE_WITHOUT_CLUSTER)
    assert "trialdeck.engine.runtime.placement.local" in loaded and "trialdeck.engine.runtime.daemon" in loaded
    assert not loaded & {"distributed", "dask"}, f"the engine loaded {sorted(loaded & {'distributed', 'dask'})}"
    assert "trialdeck.engine.runtime.placement.dask" not in loaded
