"""Bad input: exit 2, one plain line naming what is wrong, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deck import cli, one_line


def snapshot(home):
    """Every file under the workspace with its bytes (the workspace may not exist yet)."""
    if not home.exists():
        return {}
    return {p.relative_to(home): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}


BAD = [
    (["run", "seed/nope"], "preset 'seed/nope' not found"),
    (["run", "../../etc/passwd"], "name '../../etc/passwd'"),
    (["run", "seed/../../x"], "no '..'"),
    (["run", "/etc/passwd"], "no leading '/'"),
    (["run", "seed/step-decay", "--set", "train.epochs=1000000000000"], "train.epochs"),
    (["run", "seed/step-decay", "--set", "data.batch_size=99999999999999"], "data.batch_size"),
    (["run", "seed/step-decay", "--set", "optimizer.lr=1e400"], "optimizer.lr"),
    (["run", "seed/step-decay", "--set", "model.hidden=[1e9]"], "model.hidden"),
    (["run", "seed/step-decay", "--set", "modle.hidden=[8]"], "did you mean 'model'"),
    (["run", "seed/step-decay", "--set", "train.epochs"], "expected KEY=VALUE"),
    (["run", "seed/step-decay", "--device", "tpu:0"], "--device 'tpu:0'"),
    (["run", "seed/step-decay", "--priority", "99999999999"], "priority"),
    (["train", "seed/step-decay", "--set", "schedule.kind=stepp"], "did you mean 'step'"),
    (["tune", "seed/step-decay"], "has no [tune] block"),
    (["tune", "seed/tpe-mnist", "--set", "tune.space.model.nope.low=1"],
     "--set tune.space.model.nope.low: unknown key 'nope' in [tune.space.model]; allowed: float, int, choices"),
    (["tune", "seed/grid-search", "--study", "../evil"], "study name '../evil'"),
    (["tune", "seed/grid-search", "--study", "a/b"], "study name 'a/b'"),
    (["tune", "seed/grid-search", "--storage", "redis://x"], "--storage 'redis://x'"),
    (["studies", "show", "nope"], "no study 'nope'"),
    (["runs", "show", "r999"], "no run 'r999'"),
    (["runs", "show", "../../x"], "no run"),
    (["runs", "list", "--status", "runing"], "did you mean 'running'"),
    (["queue", "cancel", "r42"], "no run 'r42'"),
    (["presets", "new", "../escape", "--from", "base/digits-mlp"], "name '../escape'"),
    (["presets", "new", "mine", "--from", "base/digits-mlp", "--set", "train.epochs=0"], "train.epochs"),
    (["presets", "show", "seed/step-decay", "--set", "model.hidden.9=3"], "past the end"),
    (["studies", "export", "nope", "--format", "xml"], "--format 'xml'"),
]


@pytest.mark.parametrize(("args", "expected"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(home, args, expected):
    cli(home, "presets", "list")  # create the workspace first, so "nothing written" is about this command
    before = snapshot(home)
    result = cli(home, *args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    line = one_line(result.stderr)
    assert expected in line, line
    assert result.stdout == ""
    assert snapshot(home) == before, "a refused command must not write anything"
    assert not (home / "engine.pid").exists(), "a refused command must not start the engine"


def test_unknown_options_and_commands_are_usage_errors(home):
    cases = [(["run"], "Missing argument 'preset'; see `trialdeck run --help`"),
             (["frobnicate"], "No such command 'frobnicate'; see `trialdeck --help`"),
             (["runs", "list", "--colour"], "No such option: --colour; see `trialdeck runs list --help`"),
             (["runs", "lst"], "Did you mean 'list'"),
             (["run", "seed/step-decay", "--priority", "abc"], "Invalid value for '--priority'")]
    for args, expected in cases:
        result = cli(home, *args)
        assert result.returncode == 2
        assert expected in one_line(result.stderr), result.stderr
    result = cli(home, "engine", home_option=False)  # a group alone: its help
    assert result.returncode == 2 and "Start, stop and inspect the background engine." in result.stderr


def test_a_workspace_folder_that_cannot_be_made_is_one_line():
    result = cli(Path("/proc/trialdeck-nope"), "runs", "list")
    assert result.returncode == 2
    assert one_line(result.stderr) == \
        "trialdeck: cannot create the folder /proc/trialdeck-nope: /proc does not accept new folders"


def test_resuming_a_study_with_other_settings_is_refused_not_ignored(home):
    from trialdeck.engine.catalogue.store import Store
    from trialdeck.engine.presets import resolve
    from trialdeck.engine.tuning import launch
    from trialdeck.engine.workspace import Workspace

    ws = Workspace(home).ensure()
    spec = resolve("seed/tpe-mnist", ["data.dataset=digits", "train.epochs=3"])
    launch.request(Store(ws), "s", launch.storage_url(ws, "s", None), spec, 8, None)  # as `tune` leaves it
    before = snapshot(home)
    result = cli(home, "tune", "seed/tpe-mnist", "--study", "s", "--set", "data.dataset=digits",
                 "--set", "train.epochs=5", "--trials", "12")
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        "trialdeck: study 's' exists with train.epochs=3 (asked 5); resuming it keeps its own settings: "
        "drop those --set, or start another study with --study NAME")
    assert snapshot(home) == before and not (home / "engine.pid").exists()
    # More trials, or a timeout, may change on a resume.
    assert launch.config_changes(spec.config(), resolve("seed/tpe-mnist", [
        "data.dataset=digits", "train.epochs=3", "tune.trials=50", "tune.timeout=60"]).config()) == []
