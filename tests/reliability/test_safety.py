"""Safety: private workspace, no network listener, nothing unpickled, no shell, names stay inside."""

from __future__ import annotations

import ast
import json
import stat
from pathlib import Path

import psutil
import pytest

from tests.deck import cli, until
from trialdeck.engine.errors import BadInput
from trialdeck.engine.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("engine", "tui") for p in (ROOT / d).rglob("*.py"))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_workspace_is_0700_and_its_files_0600_after_a_real_run(home):
    result = cli(home, "run", "seed/step-decay", "--set", "train.epochs=2", "--set", "train.checkpoint_seconds=0",
                 "--wait", "--json")
    try:
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout)
        assert mode(home) == 0o700
        for sub in ("presets", "data", "runs", "studies", f"runs/{record['id']}"):
            assert mode(home / sub) == 0o700, sub
        files = [p for p in home.rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"catalog.json", "engine.log", "metrics.jsonl", "log.txt", "checkpoint.pt"}
        loose = {str(p.relative_to(home)): oct(mode(p)) for p in files if mode(p) & 0o077}
        assert not loose, f"files readable by others: {loose}"
    finally:
        cli(home, "engine", "stop")


def test_the_engine_and_its_workers_open_no_network_listener(home):
    started = cli(home, "engine", "start", "--json")
    try:
        assert started.returncode == 0, started.stderr
        pid = json.loads(started.stdout)["pid"]
        engine = psutil.Process(pid)
        until(engine.children, 60, "the engine's first worker", interval=0.1)
        cli(home, "run", "seed/step-decay", "--set", "train.epochs=2", "--wait")
        procs = [engine, *engine.children(recursive=True)]
        assert len(procs) >= 2, "expected the engine and at least one worker"
        for proc in procs:
            inet = [c for c in proc.net_connections(kind="inet")]
            assert not [c for c in inet if c.status == psutil.CONN_LISTEN], f"{proc.pid} listens: {inet}"
            assert not inet, f"{proc.pid} has network sockets: {inet}"
    finally:
        cli(home, "engine", "stop")


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    # The root: a name (`torch.load`), or `()` for a call's result (`model.to(d).eval()` is not eval).
    parts.append(func.id if isinstance(func, ast.Name) else "()")
    return ".".join(reversed(parts))


def test_every_torch_load_is_weights_only_and_nothing_is_unpickled():
    loads = 0
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve") for n in names), \
                    f"{path}: imports an unpickler"
        for call in _calls(tree):
            name = _name(call.func)
            if name.endswith("torch.load") or name == "load" and "torch" in path.read_text():
                if name.endswith("torch.load"):
                    loads += 1
                    kw = {k.arg: k.value for k in call.keywords}
                    assert "weights_only" in kw and isinstance(kw["weights_only"], ast.Constant) \
                        and kw["weights_only"].value is True, f"{path}:{call.lineno}: torch.load without weights_only=True"
            assert name not in ("eval", "exec"), f"{path}:{call.lineno}: {name}() on data"
    assert loads >= 1, "the checkpoint loader should have been found"


def test_no_subprocess_call_goes_through_a_shell():
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree):
            name = _name(call.func)
            assert name not in ("os.system", "os.popen"), f"{path}:{call.lineno}: {name}"
            if name.startswith("subprocess."):
                for kw in call.keywords:
                    assert not (kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False)), \
                        f"{path}:{call.lineno}: shell=True"
                assert call.args and isinstance(call.args[0], (ast.List, ast.Name)), f"{path}:{call.lineno}: argv must be a list"


@pytest.mark.parametrize("run_id", ["../x", "r1/../../etc", "/etc/passwd", "r1\0", "r-1", "runs", ""])
def test_run_ids_cannot_escape_the_workspace(tmp_path, run_id):
    ws = Workspace(tmp_path / "ws").ensure()
    with pytest.raises(BadInput):
        ws.run_dir(run_id)
    assert sorted(p.name for p in ws.runs_dir.iterdir()) == []


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden/..", "x" * 200, "a\\b", ""])
def test_study_names_cannot_escape_the_workspace(name):
    from trialdeck.engine.tuning.study import check_study_name

    with pytest.raises(BadInput):
        check_study_name(name)
