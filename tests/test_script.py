"""Script runs without an engine: the [script] and [params] schema, placeholders, `run --script`,
the reported-lines reader, the history's resume rule, the GPU memory reading, the stdlib
`report` helper, and the process-tree stop (real processes, no engine)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from tests.deck import REPO, until
from trialdeck.engine.catalogue.reported import ReportedLines, ScriptHistory
from trialdeck.engine.errors import PresetError
from trialdeck.engine.presets.loader import resolve, resolve_script
from trialdeck.engine.presets.schema import RunSpec, expand, format_param
from trialdeck.engine.runtime.placement.scheduler import footprint
from trialdeck.engine.runtime.runners.proctree import gpu_memory, stop_processes
from trialdeck.engine.runtime.runners.script import command_of, environment, script_file
from trialdeck.engine.training.membership import ensemble_key
from trialdeck.engine.tuning.study import trial_value


def preset(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = '[script]\ncommand = ["python3", "train.py", "--lr", "{params.lr}", "--epochs={params.epochs}"]\n' \
       '[params]\nlr = 0.1\nepochs = 3\n'


# ----------------------------------------------------------------------------- the schema


def test_placeholders_become_single_arguments_in_toml_spellings():
    params = {"lr": 1e-5, "on": True, "sizes": [64, 32], "opt": {"name": "adam w"}, "n": 3}
    assert format_param(0.1) == "0.1" and format_param(1e-5) == "1e-05" and format_param(3) == "3"
    assert format_param(False) == "false" and format_param([1, 2]) == "[1,2]"
    assert expand("--lr={params.lr}", params) == "--lr=1e-05"
    assert expand("{params.opt.name}", params) == "adam w"  # one argument, spaces and all: no shell
    assert expand("{params.sizes} {params.on} {other} {params.n}", params) == "[64,32] true {other} 3"


def test_a_script_preset_resolves_with_its_workdir_next_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "elsewhere" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere")
    spec = resolve(str(preset(tmp_path, BASE.replace("[params]", 'workdir = "sub"\n[params]'))), ["params.lr=0.5"])
    assert spec.script is not None and spec.script.workdir == str(tmp_path / "sub")  # the preset file's folder
    assert spec.params == {"lr": 0.5, "epochs": 3}
    # `python3` is found on this (the queuing) shell's PATH, and the run starts what it found there.
    assert spec.script.command[0] == "python3" and spec.script.program == os.path.abspath(shutil.which("python3"))
    assert command_of(spec) == [spec.script.program, "train.py", "--lr", "0.5", "--epochs=3"]
    spec = resolve(str(tmp_path / "s.toml"), ["script.workdir='sub'"])
    assert spec.script.workdir == str(tmp_path / "elsewhere" / "sub")  # --set: the folder it is queued from
    spec = resolve(str(preset(tmp_path, BASE)))
    assert spec.script.workdir == str(tmp_path / "elsewhere")  # unset: the folder it is queued from
    config = spec.config()
    assert set(config) == {"preset", "description", "early_stopping", "train", "script", "params"}
    assert config["train"] == {"device": "auto"}
    assert RunSpec.model_validate(config).content_hash == spec.content_hash  # the stored config round-trips


def test_a_built_in_preset_is_unchanged_by_scripts():
    spec = resolve("seed/step-decay")
    assert spec.script is None and "script" not in spec.config() and "params" not in spec.config()
    assert ensemble_key(spec) is not None


@pytest.mark.parametrize(("text", "sets", "wanted"), [
    ('[script]\ncommand = []\n', [], "script.command"),
    ('[script]\ncommand = ["", "x"]\n', [], "program (its first element) is empty"),
    (BASE, ["script.command=['x', '{params.lrr}']"],
     "{params.lrr} names no param; params has lr, epochs; did you mean {params.lr}?"),
    (BASE, ["script.grace_seconds=-1"], "script.grace_seconds"),
    (BASE, ["model.hidden=[3]"], "model.hidden: [model] does not apply to script runs"),
    (BASE, ["optimizer.lr=0.1"], "[optimizer] does not apply to script runs"),
    (BASE, ["train.epochs=5"], "train.epochs does not apply to script runs"),
    (BASE, ["script.env={TRIALDECK_RUN_ID='x'}"], "set by the engine"),
    (BASE, ["params.when=1979-05-27"], "a date cannot be a param"),
    (BASE, ["script.workdir='no-such-folder'"], "does not exist"),
    ('[params]\nlr = 1\n', [], "add a [script] table"),
    ('[early_stopping]\nmonitor = "val_bleu"\n', [], "not a recorded metric"),
])
def test_bad_script_input_is_one_plain_line_naming_the_key(tmp_path, text, sets, wanted):
    path = preset(tmp_path, text)
    with pytest.raises(PresetError) as info:
        resolve(str(path), sets)
    assert wanted in info.value.message and "\n" not in info.value.message


def test_a_script_may_monitor_any_metric_it_reports(tmp_path):
    text = BASE + '[early_stopping]\nenabled = true\nmonitor = "val_bleu"\nmode = "max"\n' \
                  '[tune]\nmetric = "val_bleu"\ndirection = "maximize"\n[tune.space]\n"params.lr" = { float = [1e-4, 1.0] }\n'
    spec = resolve(str(preset(tmp_path, text)))
    assert spec.early_stopping.monitor == "val_bleu" and spec.tune.metric == "val_bleu"
    with pytest.raises(PresetError, match="not a preset key"):
        resolve(str(preset(tmp_path, text.replace('"params.lr"', '"model.hidden"'))))
    assert ensemble_key(spec) is None  # a script trial never joins an ensemble


def test_footprint_of_script_trials_ignores_float_params():
    def config(**params):
        return {"script": {"command": ["t"], "workdir": "/w", "env": {}}, "params": params}

    assert footprint(config(lr=0.1, batch=32)) == footprint(config(lr=0.5, batch=32))
    assert footprint(config(lr=0.1, batch=32)) != footprint(config(lr=0.1, batch=64))
    assert footprint(config(lr=0.1)) != footprint({"script": {"command": ["other"], "workdir": "/w", "env": {}}})


# ----------------------------------------------------------------------------- run --script


def test_run_script_picks_the_interpreter(tmp_path):
    py = tmp_path / "train.py"
    py.write_text("print(1)\n")
    spec = resolve_script("train.py", ["--lr", "0.1"], ["params.x=1"], cwd=tmp_path)
    assert spec.script.command == [sys.executable, str(py), "--lr", "0.1"]
    assert spec.script.workdir == str(tmp_path) and spec.params == {"x": 1} and spec.preset == "script:train.py"
    py.write_text("#!/usr/bin/python3\nprint(1)\n")
    py.chmod(0o755)
    assert resolve_script("train.py", [], cwd=tmp_path).script.command == [str(py)]  # runs itself
    sh = tmp_path / "train.sh"
    sh.write_text("echo hi\n")
    with pytest.raises(PresetError, match="not executable"):
        resolve_script("train.sh", [], cwd=tmp_path)
    with pytest.raises(PresetError, match="no such file"):
        resolve_script("nope.py", [], cwd=tmp_path)


def test_run_script_on_the_command_line(home, tmp_path):
    from tests.deck import cli, one_line

    (tmp_path / "train.py").write_text("print(1)\n")
    proc = cli(home, "run", "--script", "nope.py", "--", "--lr", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "--script nope.py: no such file" in one_line(proc.stderr)
    proc = cli(home, "run", "--script", "train.py", "--set", "model.hidden=[3]", "--", "--lr", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "does not apply to script runs" in one_line(proc.stderr)
    proc = cli(home, "run", "seed/step-decay", "--lr", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "No such option: --lr" in one_line(proc.stderr)
    assert "sys.executable" in " ".join(cli(home, "run", "--help").stdout.split())


# ----------------------------------------------------------------------------- reading and history


def test_reported_lines_wait_for_a_torn_line_and_skip_garbage(tmp_path):
    path = tmp_path / "reported.jsonl"
    reader = ReportedLines(path)
    assert reader.prepare() == [] and path.exists()
    with open(path, "a") as f:
        f.write('{"epoch": 1, "val_loss": 0.5}\n{"epoch": 2, "val_lo')
    assert reader.read() == [{"epoch": 1, "val_loss": 0.5}]
    assert reader.read() == []  # the torn line waits
    with open(path, "a") as f:
        f.write('ss": NaN}\nnot json\n[1, 2]\n{"epoch": 3}')
    second = reader.read()
    assert len(second) == 1 and second[0]["epoch"] == 2 and second[0]["val_loss"] != second[0]["val_loss"]  # NaN
    assert reader.problems == ["not json", "[1, 2]"]
    assert reader.read(final=True) == [{"epoch": 3}]  # at the end, an unterminated last line counts


def test_prepare_cuts_a_killed_scripts_torn_line(tmp_path):
    path = tmp_path / "reported.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert ReportedLines(path).prepare() == [{"epoch": 1}, {"epoch": 2}]
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'  # the next line starts clean


def test_history_replaces_epochs_reported_again_and_numbers_the_rest():
    history = ScriptHistory()
    for line in ({"epoch": 1, "loss": 3}, {"epoch": 2, "loss": 2}, {"epoch": 3, "loss": 1.5}):
        history.add(line)
    record, rewound = history.add({"epoch": 3, "loss": 1.4, "note": "resumed"})  # went back to its checkpoint
    assert rewound and record.epoch == 3
    assert [(h["epoch"], h["loss"]) for h in history.entries] == [(1, 3), (2, 2), (3, 1.4)]
    _, rewound = history.add({"epoch": 2, "loss": 1.9})
    assert rewound and [h["epoch"] for h in history.entries] == [1, 2]
    record, rewound = history.add({"loss": float("inf"), "tag": "x"})  # unnumbered: the next epoch
    assert not rewound and history.entries[-1] == {"epoch": 3, "loss": None, "tag": "x"}
    assert record.metric("loss") is None and record.metric("tag") is None
    assert trial_value(SimpleNamespace(metric="loss", reduce="best", direction="minimize"), history.entries) == 1.9


def test_gpu_memory_sums_the_run_processes_from_nvml():
    nvml = [SimpleNamespace(pid=10, usedGpuMemory=300 << 20), SimpleNamespace(pid=11, usedGpuMemory=None),
            SimpleNamespace(pid=12, usedGpuMemory=1 << 30), SimpleNamespace(pid=99, usedGpuMemory=5 << 30)]
    assert gpu_memory({10, 11, 12}, nvml) == (300 << 20) + (1 << 30)
    assert gpu_memory({7}, nvml) == 0


def test_script_file_is_what_the_command_runs(tmp_path):
    (tmp_path / "train.py").write_text("x = 1\n")
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    assert script_file(["/usr/bin/python3", "-u", "train.py", "--lr", "1"], str(tmp_path)) == tmp_path / "train.py"
    assert script_file(["./run.sh", "--lr"], str(tmp_path)) == tmp_path / "run.sh"
    assert script_file(["/usr/bin/python3", "-m", "train"], str(tmp_path)) is None


def test_the_environment_names_the_run_and_the_slot(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIALDECK_DEBUG", "1")
    spec = resolve(str(preset(tmp_path, BASE.replace("[params]", '[script.env]\nLR = "{params.lr}"\n[params]'))))
    env = environment(spec, "r3", tmp_path / "files", tmp_path / "reported.jsonl", "cpu", resume=True, threads=2)
    assert env["TRIALDECK_RUN_ID"] == "r3" and env["TRIALDECK_RESUME"] == "1" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert json.loads(env["TRIALDECK_PARAMS"]) == {"lr": 0.1, "epochs": 3} and env["LR"] == "0.1"
    assert "TRIALDECK_DEBUG" not in env and env["OMP_NUM_THREADS"] == "2"
    env = environment(spec, "r3", tmp_path / "files", tmp_path / "reported.jsonl", "cuda", resume=False)
    assert "TRIALDECK_RESUME" not in env and env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


# ----------------------------------------------------------------------------- the report helper


def test_report_is_stdlib_only_and_writes_one_line_per_call(tmp_path):
    code = ("import sys; from trialdeck.engine.report import report, resuming, run_dir, params;"
            "report(epoch=1, train_loss=0.5, val_loss=float('nan'), note='x'); report(epoch=2, val_loss=0.25);"
            "mods = [m for m in sys.modules if m.startswith('trialdeck')];"
            "print(sorted(mods), 'torch' in sys.modules, resuming(), str(run_dir()), params())")
    out = tmp_path / "m.jsonl"
    env = {**os.environ, "TRIALDECK_METRICS": str(out), "TRIALDECK_RESUME": "1", "TRIALDECK_RUN_DIR": str(tmp_path),
           "TRIALDECK_PARAMS": '{"lr": 0.1}'}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.split("]", 1)[0] + "]" == "['trialdeck', 'trialdeck.engine', 'trialdeck.engine.report']"
    assert proc.stdout.split("]", 1)[1].split() == ["False", "True", str(tmp_path), "{'lr':", "0.1}"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [{"epoch": 1, "train_loss": 0.5, "val_loss": None, "note": "x"}, {"epoch": 2, "val_loss": 0.25}]
    env.pop("TRIALDECK_METRICS")
    subprocess.run([sys.executable, "-c", "from trialdeck.engine.report import report; report(epoch=1)"],
                   env=env, check=True)  # outside trialdeck: nothing to write, no error


# ----------------------------------------------------------------------------- stopping


def test_stop_processes_takes_the_whole_tree_even_children_that_left_the_group(tmp_path):
    marker_dir = str(tmp_path / "files")
    tag = f"tag-{uuid.uuid4().hex}"
    code = ("import subprocess, sys, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            f"[subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '{tag}'], start_new_session=s)"
            " for s in (False, True)]; time.sleep(60)")
    env = {**os.environ, "TRIALDECK_RUN_DIR": marker_dir}
    child = subprocess.Popen([sys.executable, "-c", code, tag], env=env, start_new_session=True)

    def tagged() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline", "status"])
                if p.info["status"] != psutil.STATUS_ZOMBIE and tag in (p.info["cmdline"] or [])]

    until(lambda: len(tagged()) >= 3, 30, "the test's processes to start")
    started = time.monotonic()
    killed = stop_processes(marker_dir, 0.5, child)  # SIGTERM is ignored: SIGKILL after the grace
    assert killed == 3 and not tagged() and child.returncode is not None
    assert time.monotonic() - started < 10


def test_the_example_preset_resolves_from_a_clone():
    spec = resolve("examples/script")
    assert spec.script is not None and Path(spec.script.workdir) == REPO / "bench" / "scripts"
    assert script_file(command_of(spec), spec.script.workdir) == REPO / "bench" / "scripts" / "train.py"


def test_a_script_run_in_process_replaces_epochs_it_reports_again(tmp_path):
    """ScriptRun itself (what a worker calls), on a real store and a real child process: a script that
    goes back to an earlier epoch (as a resumed one does) leaves one entry per epoch with the later
    values, early stopping counts each epoch once, and nothing after the stop is recorded."""
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.runtime.control.actions import enqueue
    from trialdeck.engine.runtime.runners.recorder import RunRecorder
    from trialdeck.engine.runtime.runners.script import ScriptRun
    from trialdeck.engine.types import RunState
    from trialdeck.engine.workspace import Workspace

    reports = [(1, 3.0), (2, 2.0), (3, 1.0), (2, 2.5), (3, 2.6), (4, 2.7), (5, 0.1)]
    code = ("import json, os; f = open(os.environ['TRIALDECK_METRICS'], 'a');"
            f"[f.write(json.dumps({{'epoch': e, 'val_loss': v}}) + '\\n') for e, v in {reports!r}]; f.close()")
    path = preset(tmp_path, f'[script]\ncommand = {json.dumps([sys.executable, "-c", code])}\nworkdir = "."\n'
                            '[early_stopping]\nenabled = true\npatience = 2\n')
    ws = Workspace(tmp_path / "ws").ensure()
    store = Store(ws)
    spec = resolve(str(path))
    (record,) = enqueue(store, [spec])
    record = store.transition(record["id"], RunState.RUNNING, device="cpu")
    recorder = RunRecorder(store, record["id"], ws.run_dir(record["id"]))
    try:
        state = ScriptRun(store, ws, record, spec, "cpu", recorder).run()
    finally:
        recorder.close()
    final = store.get_run(record["id"])
    assert state == "early_stopped", final.get("error")
    # 2.5 is the best after the script went back; 2.6 and 2.7 are two epochs without improvement.
    assert [(h["epoch"], h["val_loss"]) for h in final["history"]] == [(1, 3.0), (2, 2.5), (3, 2.6), (4, 2.7)]
    assert final["summary"]["best_epoch"] == 2 and final["summary"]["best_value"] == 2.5
    log = (ws.runs_dir / record["id"] / "log.txt").read_text()
    assert "epoch 2 reported again: the script went back to an earlier checkpoint; its epochs 2..3 are replaced" in log


def test_presets_new_saves_a_set_workdir_as_the_folder_it_was_typed_in(tmp_path, monkeypatch):
    import tomllib

    from trialdeck.engine.presets import preset_roots
    from trialdeck.engine.presets.authoring import write_preset

    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    path, _ = write_preset(tmp_path / "presets", "mine", parents=["examples/script"], sets=["script.workdir='.'"],
                           roots=preset_roots(None))
    # In the file a relative workdir would mean the presets folder; `.` was typed in the project.
    assert tomllib.loads(path.read_text())["script"]["workdir"] == str(project)
