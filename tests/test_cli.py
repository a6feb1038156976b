"""The `trialdeck` command line: parsing through CliRunner, exit codes and streams through real processes.

Every test works in its own workspace (`--home` or TRIALDECK_HOME under tmp_path);
an autouse fixture points TRIALDECK_HOME at a temp folder too, so nothing here
can touch ~/.trialdeck.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.deck import cli
from trialdeck.tui.cli import app

REPO = Path(__file__).resolve().parents[1]
SEED_PRESETS = {
    "seed/l1-l2", "seed/dropout", "seed/early-stopping", "seed/batch-norm", "seed/activations", "seed/step-decay",
    "seed/augmentation", "seed/grid-search", "seed/random-search", "seed/tpe-mnist", "seed/larger-dataset",
}
TUNED = {"seed/activations", "seed/grid-search", "seed/random-search", "seed/tpe-mnist", "seed/larger-dataset"}

runner = CliRunner()


def invoke(home: Path, *args: str):
    """The command line in this process (CliRunner): parsing and output, no engine."""
    return runner.invoke(app, ["--home", str(home), *args])


def assert_one_line_error(stderr: str, *needles: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# ---------------------------------------------------------------- presets list / show


def test_presets_list_json_has_the_11_seed_presets(home):
    result = invoke(home, "presets", "list", "--json")
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    by_name = {i["name"]: i for i in items}
    assert SEED_PRESETS <= set(by_name)
    assert {n for n in by_name if n.startswith("seed/")} == SEED_PRESETS
    for name in SEED_PRESETS:
        item = by_name[name]
        assert item["group"] == "seed"
        assert item["description"] and not item["description"].startswith("(invalid")
        assert item["tune"] == (name in TUNED), name
        assert Path(item["path"]).is_file()


def test_presets_list_text_is_one_line_per_preset(home):
    result = invoke(home, "presets", "list")
    assert result.exit_code == 0
    names = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert SEED_PRESETS <= names


def test_presets_show_json_is_the_fully_resolved_config(home):
    result = invoke(home, "presets", "show", "seed/step-decay", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["name"] == "seed/step-decay"
    config = shown["config"]
    assert config["schedule"]["kind"] == "step"
    assert config["schedule"]["drop"] == 0.5
    assert config["schedule"]["epochs_drop"] == 10
    assert config["optimizer"]["name"] == "sgd"
    assert config["optimizer"]["lr"] == 0.1
    assert config["train"]["epochs"] == 50
    # Fully resolved: values inherited from base/digits-mlp and schema defaults are present.
    assert config["data"]["dataset"] == "digits"
    assert config["data"]["batch_size"] == 64
    assert config["model"]["hidden"] == [256, 256]
    assert config["early_stopping"]["enabled"] is False
    assert any(p.endswith("base/digits-mlp.toml") for p in shown["extends"])


def test_presets_show_applies_set(home):
    result = invoke(home, "presets", "show", "seed/step-decay", "--set", "train.epochs=3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["train"]["epochs"] == 3


def test_presets_show_text_is_toml(home):
    result = invoke(home, "presets", "show", "seed/step-decay")
    assert result.exit_code == 0, result.output
    assert "epochs_drop = 10" in result.stdout
    assert 'kind = "step"' in result.stdout


# ---------------------------------------------------------------- presets validate


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_presets_validate_good_file(home, tmp_path):
    good = write(tmp_path / "good.toml", 'extends = ["base/digits-mlp"]\n[train]\nepochs = 3\n')
    result = invoke(home, "presets", "validate", str(good), "seed/step-decay")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert str(good) in result.stdout and "seed/step-decay" in result.stdout


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('extends = ["base/digits-mlp"]\n[optimizer]\nname = "adamm"\n', "optimizer.name"),
        ('extends = ["base/digits-mlp"]\n[trian]\nepochs = 3\n', "trian"),
        ('extends = ["base/digits-mlp"]\n[model]\nwidth = 3\n', "width"),
        ('extends = ["base/digits-mlp"]\n[train]\nepochs = 0\n', "train.epochs"),
    ],
    ids=["bad-value", "unknown-section", "unknown-key", "out-of-range"],
)
def test_presets_validate_bad_file_exits_2_with_one_line(home, tmp_path, body, key):
    bad = write(tmp_path / "bad.toml", body)
    proc = cli(home, "presets", "validate", str(bad))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr, "bad.toml", key)


def test_presets_validate_toml_syntax_error(home, tmp_path):
    bad = write(tmp_path / "broken.toml", "[train]\nepochs = \n")
    result = invoke(home, "presets", "validate", str(bad))
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "broken.toml")


def test_presets_validate_mixed_json_reports_each(home, tmp_path):
    good = write(tmp_path / "good.toml", 'extends = ["base/digits-mlp"]\n')
    bad = write(tmp_path / "bad.toml", 'extends = ["base/digits-mlp"]\n[optimizer]\nname = "adamm"\n')
    proc = cli(home, "presets", "validate", str(good), str(bad), "--json")
    assert proc.returncode == 2
    report = {Path(r["preset"]).name: r for r in json.loads(proc.stdout)}
    assert report["good.toml"]["ok"] is True and report["good.toml"]["hash"]
    assert report["bad.toml"]["ok"] is False and "optimizer.name" in report["bad.toml"]["error"]


# ---------------------------------------------------------------- presets new


def test_presets_new_writes_a_workspace_preset_that_resolves(home):
    result = invoke(home, "presets", "new", "mine", "--from", "base/digits-mlp", "--from", "reg/dropout",
                 "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    path = home / "presets" / "mine.toml"
    assert path.is_file()
    text = path.read_text()
    assert "base/digits-mlp" in text and "reg/dropout" in text and "epochs = 3" in text

    shown = invoke(home, "presets", "show", "mine", "--json")
    assert shown.exit_code == 0, shown.output
    config = json.loads(shown.stdout)["config"]
    assert config["preset"] == "mine"
    assert config["train"]["epochs"] == 3
    assert config["model"]["dropout"] == 0.5  # from reg/dropout
    assert config["data"]["dataset"] == "digits"  # from base/digits-mlp

    listed = {i["name"] for i in json.loads(invoke(home, "presets", "list", "--json").stdout)}
    assert "mine" in listed


def test_presets_new_refuses_to_overwrite_without_force(home):
    assert invoke(home, "presets", "new", "mine", "--from", "base/digits-mlp", "--set", "train.epochs=3").exit_code == 0
    path = home / "presets" / "mine.toml"
    before = path.read_text()

    again = invoke(home, "presets", "new", "mine", "--from", "base/digits-mlp", "--set", "train.epochs=7")
    assert again.exit_code == 2
    assert_one_line_error(again.stderr, "mine.toml", "--force")
    assert path.read_text() == before

    forced = invoke(home, "presets", "new", "mine", "--from", "base/digits-mlp", "--set", "train.epochs=7", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads(invoke(home, "presets", "show", "mine", "--json").stdout)["config"]["train"]["epochs"] == 7


@pytest.mark.parametrize(
    "bad_set",
    ["train.epochs=0", "train.epoch=3", "trian.epochs=3", "train.epochs", "optimizer.name=adamm", "model.hidden.0=32"],
)
def test_presets_new_with_bad_set_writes_nothing(home, bad_set):
    result = invoke(home, "presets", "new", "mine", "--from", "base/digits-mlp", "--set", bad_set)
    assert result.exit_code == 2
    assert_one_line_error(result.stderr)
    assert result.stdout == ""
    assert not (home / "presets" / "mine.toml").exists()
    assert not [p for p in (home / "presets").rglob("*") if p.is_file()], "no temp file left behind either"


def test_presets_new_rejects_a_name_escaping_the_workspace(home, tmp_path):
    result = invoke(home, "presets", "new", "../escape", "--from", "base/digits-mlp")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr)
    assert not (tmp_path / "escape.toml").exists()


def test_trialdeck_home_env_selects_the_workspace(tmp_path):
    ws = tmp_path / "from-env"
    result = runner.invoke(app, ["presets", "new", "mine", "--from", "base/digits-mlp"],
                           env={"TRIALDECK_HOME": str(ws)})
    assert result.exit_code == 0, result.output
    assert (ws / "presets" / "mine.toml").is_file()


# ---------------------------------------------------------------- train


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["no/such-preset"], "no/such-preset"),
        (["seed/step-decay", "--set", "train.epochs=0"], "train.epochs"),
        (["seed/step-decay", "--set", "train.epoch=3"], "epoch"),
        (["seed/step-decay", "--set", "trian.epochs=3"], "trian"),
        (["seed/step-decay", "--set", "train.epochs"], "train.epochs"),
        (["seed/step-decay", "--set", "optimizer.name=adamm"], "optimizer.name"),
    ],
    ids=["unknown-preset", "out-of-range", "unknown-key", "unknown-section", "no-value", "bad-choice"],
)
def test_train_bad_input_exits_2_with_one_stderr_line(home, args, needle):
    proc = cli(home, "train", *args, "--json")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr, needle)
    assert not list(home.glob("runs/r*")), "a rejected run must not be recorded"


def test_train_json_in_a_real_process(home):
    proc = cli(home, "train", "seed/step-decay", "--set", "train.epochs=3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    record = json.loads(proc.stdout)  # stdout is the JSON record and nothing else

    assert record["id"]
    assert record["preset"] == "seed/step-decay"
    assert record["state"] == "completed"
    assert record["config"]["train"]["epochs"] == 3
    assert record["config"]["schedule"]["kind"] == "step"
    assert isinstance(record["events"], list)
    history = record["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for h in history:
        assert {"epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds"} <= set(h)
        assert h["lr"] == pytest.approx(0.1)  # floor((1 + epoch) / 10) == 0 for the first 3 epochs
        assert 0.0 <= h["val_acc"] <= 1.0 and h["seconds"] > 0

    run_dir = home / "runs" / record["id"]
    assert (run_dir / "metrics.jsonl").is_file()
    assert (run_dir / "checkpoint.pt").is_file()
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if e.get("kind") == "epoch"] == [1, 2, 3]
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700


@pytest.mark.parametrize("args", [[], ["tui"]])
def test_the_tui_without_a_terminal_says_so_in_one_line(home, args):
    proc = subprocess.run([sys.executable, "-m", "trialdeck.tui.cli", *args, "--home", str(home)] if args else
                          [sys.executable, "-m", "trialdeck.tui.cli", "--home", str(home)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "trialdeck: the TUI needs a terminal; use a subcommand (trialdeck --help) for scripts"
