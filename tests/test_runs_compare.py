"""`trialdeck runs compare | tag | untag | note | export` and `runs list --tag`, as a user types them.

Most tests read a seeded workspace (trialdeck.tui.testing: runs in every state with fixed
histories), with TRIALDECK_NO_AUTOSTART=1 so its queued runs start no engine. The tests of
`run --tag` and `tune --tag` queue real work in a real engine (slow).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.deck import TRIALDECK, Deck, cli, one_line
from trialdeck.engine.catalogue import compare
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.workspace import Workspace
from trialdeck.tui.testing import seed_workspace

QUIET = {"TRIALDECK_NO_AUTOSTART": "1"}


@pytest.fixture
def seeded(home: Path) -> Path:
    seed_workspace(Workspace(home).ensure())
    return home


def run_json(home: Path, *args: str):
    proc = cli(home, *args, "--json", env=QUIET)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def history(home: Path, run_id: str) -> list[dict]:
    return Store(Workspace(home)).get_run(run_id)["history"]


# ----------------------------------------------------------------------------- compare


def test_compare_json_keeps_the_order_given_and_only_the_keys_that_differ(seeded):
    out = run_json(seeded, "runs", "compare", "r2", "r1", "r3")
    assert [r["id"] for r in out["runs"]] == ["r2", "r1", "r3"]
    assert [r["state"] for r in out["runs"]] == ["early_stopped", "completed", "failed"]
    assert [r["preset"] for r in out["runs"]] == ["seed/early-stopping", "seed/step-decay", "seed/dropout"]
    # One value per run, in the order given; keys equal in all three are left out.
    assert out["differs"]["optimizer.lr"] == [0.001, 0.1, 0.001]
    assert out["differs"]["optimizer.name"] == ["adam", "sgd", "adam"]
    assert out["differs"]["train.epochs"] == [100, 12, 30]
    assert "data.dataset" not in out["differs"] and "data.val_fraction" not in out["differs"]
    assert list(out["differs"]) == sorted(out["differs"])
    for run in out["runs"]:
        hist = history(seeded, run["id"])
        best = min(hist, key=lambda h: h["val_loss"])
        s = run["summary"]
        assert (s["metric"], s["best"], s["best_epoch"], s["epochs"]) == ("val_loss", best["val_loss"], best["epoch"], len(hist))
        assert s["state"] == run["state"] and s["seconds"] > 0


def test_compare_best_of_a_chosen_metric_and_as_text(seeded):
    out = run_json(seeded, "runs", "compare", "r1", "r2", "--metric", "val_acc")
    for run in out["runs"]:
        hist = history(seeded, run["id"])
        assert run["summary"]["best"] == max(h["val_acc"] for h in hist)  # accuracy: the highest is best
    proc = cli(seeded, "runs", "compare", "r1", "r2", env=QUIET)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["r1", "r2"]
    assert any(line.split()[:3] == ["optimizer.name", "sgd", "adam"] for line in lines), proc.stdout
    assert any(line.startswith("config keys that differ:") for line in lines)


@pytest.mark.parametrize("args, words", [
    (("r1",), "two or more different runs"),
    (("r1", "r1"), "two or more different runs"),
    (("r1", "r99"), "no run 'r99'"),
    (("r1", "r2", "--metric", "accuracy"), "allowed: val_loss, train_loss, val_acc, lr"),
])
def test_compare_refuses_with_one_plain_line(seeded, args, words):
    proc = cli(seeded, "runs", "compare", *args, env=QUIET)
    assert proc.returncode == 2
    assert words in one_line(proc.stderr)


def test_compare_logic_handles_missing_keys_and_nan():
    a = {"id": "r1", "config": {"x": 1, "only_a": True},
         "history": [{"epoch": 1, "val_loss": None}, {"epoch": 2, "val_loss": 0.5}]}
    b = {"id": "r2", "config": {"x": 1}, "history": []}
    assert compare.differs([a, b]) == {"only_a": [True, None]}
    assert compare.best(a, "val_loss") == (0.5, 2)  # the null (a NaN loss) is skipped
    assert compare.best(b, "val_loss") == (None, None)
    assert compare.ema([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])  # debiased: no pull towards 0
    smoothed = compare.ema([0.0, 10.0], 0.6)
    assert smoothed[0] == 0.0 and 0.0 < smoothed[1] < 10.0


# ----------------------------------------------------------------------------- tags and notes


def test_tags_are_added_listed_filtered_and_removed(seeded):
    assert run_json(seeded, "runs", "tag", "r1", "baseline", "lr-0.1") == {"id": "r1", "tags": ["baseline", "lr-0.1"]}
    assert run_json(seeded, "runs", "tag", "r1", "baseline", "good")["tags"] == ["baseline", "lr-0.1", "good"]
    run_json(seeded, "runs", "tag", "r3", "baseline")
    assert [r["id"] for r in run_json(seeded, "runs", "list", "--tag", "baseline")] == ["r1", "r3"]
    assert [r["id"] for r in run_json(seeded, "runs", "list", "--tag", "baseline", "--tag", "good")] == ["r1"]
    assert run_json(seeded, "runs", "list", "--tag", "nobody-has-it") == []
    text = cli(seeded, "runs", "list", "--tag", "baseline", env=QUIET).stdout
    assert "#baseline #lr-0.1 #good" in text and "r3" in text and "r2 " not in text

    proc = cli(seeded, "runs", "untag", "r1", "lr-0.1", "never-had", env=QUIET)
    assert proc.returncode == 0
    assert "r1 had no tag 'never-had'" in one_line(proc.stderr)
    assert Store(Workspace(seeded)).get_run("r1")["tags"] == ["baseline", "good"]
    assert run_json(seeded, "runs", "compare", "r1", "r3")["runs"][0]["tags"] == ["baseline", "good"]


@pytest.mark.parametrize("tag", ["two words", "a,b", "", "x" * 65])
def test_a_tag_nobody_could_type_back_is_refused(seeded, tag):
    proc = cli(seeded, "runs", "tag", "r1", tag, env=QUIET)
    assert proc.returncode == 2
    assert "allowed: 1 to 64 characters without spaces or commas" in one_line(proc.stderr)
    assert not Store(Workspace(seeded)).get_run("r1").get("tags")


def test_a_note_is_set_shown_and_removed(seeded):
    assert run_json(seeded, "runs", "note", "r2", "stopped", "at", "epoch", "9;", "try", "patience", "10") == {
        "id": "r2", "note": "stopped at epoch 9; try patience 10"}
    assert run_json(seeded, "runs", "show", "r2")["note"] == "stopped at epoch 9; try patience 10"
    assert "note: stopped at epoch 9; try patience 10" in cli(seeded, "runs", "show", "r2", env=QUIET).stdout
    assert run_json(seeded, "runs", "note", "r2", "")["note"] is None
    assert run_json(seeded, "runs", "show", "r2")["note"] is None


def test_tags_written_at_once_from_many_processes_all_land(seeded):
    procs = [subprocess.Popen([*TRIALDECK, "runs", "tag", "r1", f"t{i}", "--home", str(seeded)],
                              env={**os.environ, **QUIET}, stdout=subprocess.DEVNULL)
             for i in range(6)]
    assert all(p.wait(120) == 0 for p in procs)
    assert sorted(Store(Workspace(seeded)).get_run("r1")["tags"]) == [f"t{i}" for i in range(6)]


# ----------------------------------------------------------------------------- export


def test_export_csv_has_one_row_per_run_and_epoch(seeded):
    proc = cli(seeded, "runs", "export", "r1", "r3", env=QUIET)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert list(rows[0]) == ["run", "preset", "epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds"]
    expected = [("r1", h) for h in history(seeded, "r1")] + [("r3", h) for h in history(seeded, "r3")]
    assert len(rows) == len(expected) == 14
    for row, (run_id, h) in zip(rows, expected):
        assert row["run"] == run_id and int(row["epoch"]) == h["epoch"]
        assert float(row["val_loss"]) == h["val_loss"] and float(row["lr"]) == h["lr"]
    assert rows[0]["preset"] == "seed/step-decay" and rows[-1]["preset"] == "seed/dropout"


def test_export_json_to_a_file_with_other_metrics_as_extra_columns(seeded, tmp_path):
    store = Store(Workspace(seeded))
    hist = store.get_run("r2")["history"]
    store.update_run("r2", history=[{**h, "val_top5": 1.0} for h in hist])  # e.g. what a script reported
    out_file = tmp_path / "hist.json"
    summary = run_json(seeded, "runs", "export", "r1", "r2", "--output", str(out_file))
    assert summary == {"output": str(out_file), "format": "json", "runs": ["r1", "r2"], "rows": 21}
    rows = json.loads(out_file.read_text())
    assert len(rows) == 21
    assert rows[0]["val_top5"] is None and rows[-1]["val_top5"] == 1.0  # the same keys in every row
    assert list(rows[0])[-1] == "val_top5"
    assert run_json(seeded, "runs", "export", "r2") == json.loads(json.dumps(rows[12:]))  # --json alone: JSON on stdout


@pytest.mark.parametrize("args, words", [
    (("r1", "--format", "xlsx"), "--format 'xlsx': allowed: csv, json"),
    (("r1", "--format", "csv", "--json"), "with --format csv, give --output FILE too"),
    (("r1", "--output", "/no/such/folder/h.csv"), "folder /no/such/folder does not exist"),
    (("r1", "r2", "--model", "m.pt"), "--model takes one run"),
    (("r4", "--model", "m.pt"), "r4 has no checkpoint"),
])
def test_export_refuses_with_one_plain_line(seeded, args, words, tmp_path):
    proc = cli(seeded, "runs", "export", *args, env=QUIET, cwd=tmp_path)
    assert proc.returncode == 2
    assert words in one_line(proc.stderr)


# ----------------------------------------------------------------------------- run --tag, tune --tag (real engine)


@pytest.mark.slow
def test_run_tag_tags_at_enqueue_and_a_bad_tag_queues_nothing(home):
    deck = Deck(home)
    proc = deck.cli("run", "seed/step-decay", "--tag", "bad tag", "--json")
    assert proc.returncode == 2 and "--tag 'bad tag'" in one_line(proc.stderr)
    assert not home.exists() or deck.store.list_runs() == []
    records = deck.json("run", "seed/step-decay", "--set", "train.epochs=1", "--repeat", "2", "--tag", "sweep",
                        "--tag", "first")
    assert [r["tags"] for r in records] == [["sweep", "first"]] * 2
    assert [r["id"] for r in deck.json("runs", "list", "--tag", "sweep")] == [r["id"] for r in records]


@pytest.mark.slow
def test_a_studys_trials_carry_its_tags(home):
    deck = Deck(home)
    out = deck.json("tune", "seed/random-search", "--trials", "2", "--set", "train.epochs=1", "--tag", "sweep",
                    "--wait", timeout=300)
    runs = [deck.store.get_run(t["run_id"]) for t in out["trials"]]
    assert len(runs) == 2 and all(r["tags"] == ["sweep"] for r in runs)
    assert deck.store.get_study("seed-random-search")["tags"] == ["sweep"]
    assert sorted(r["id"] for r in deck.json("runs", "list", "--tag", "sweep")) == sorted(r["id"] for r in runs)
