"""`trialdeck runs export --format records`, `runs import`, `runs archive` and `runs unarchive`, as a
user types them (real processes, TRIALDECK_NO_AUTOSTART=1: nothing here needs an engine).

What a user checks: a workspace's finished runs exported and imported into another reproduce each
run's config, history, summary, tags and note exactly, under new ids that say where they came from;
a bad records file is refused with its line number and nothing is imported; archived runs leave
`runs list` and come back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.deck import cli, one_line
from trialdeck.engine.catalogue import records
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.workspace import Workspace
from trialdeck.tui.testing import seed_workspace

QUIET = {"TRIALDECK_NO_AUTOSTART": "1"}
EXACT = ("config", "history", "summary", "tags", "note")


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    home = tmp_path / "from"
    ws = Workspace(home).ensure()
    seed_workspace(ws)
    store = Store(ws)
    store.tag_run("r1", add=["baseline", "best"])
    store.set_note("r2", "stopped early — worth a rerun with patience 10")
    store.update_run("r3", summary={"best_val_loss": 0.5, "kept_epoch": None})
    return home


def ok(home: Path, *args: str) -> str:
    proc = cli(home, *args, env=QUIET)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_export_then_import_reproduces_every_run_exactly(seeded: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs.jsonl"
    proc = cli(seeded, "runs", "export", "--format", "records", "--all", "--output", str(out), env=QUIET)
    assert proc.returncode == 0, proc.stderr
    assert "left out 3 unfinished run(s)" in proc.stderr  # r5 running, r6 and r7 queued
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["r1", "r2", "r3", "r4", "r8", "r9", "r10"]
    assert list(lines[0])[:11] == ["id", "preset", "state", "config", "history", "summary", "tags", "note",
                                   "created_at", "started_at", "finished_at"]

    target = tmp_path / "to"
    said = json.loads(ok(target, "runs", "import", str(out), "--json"))
    assert said == {"file": str(out), "records": 7, "added": 7, "skipped": 0, "first": "r1", "last": "r7"}
    old, new = Store(Workspace(seeded)), Store(Workspace(target))
    for record, run in zip(lines, new.list_runs(), strict=True):
        before = old.get_run(record["id"])
        assert run["imported_from"] == before["id"] and run["preset"] == before["preset"]
        for key in EXACT:
            assert run.get(key) == before.get(key), (record["id"], key)
        for key in ("state", "created_at", "started_at", "finished_at", "events", "error", "kept_epoch"):
            assert run.get(key) == before.get(key), (record["id"], key)
    assert new.get_run("r5")["imported_study"] == "seed-activations" and new.get_run("r5")["study"] is None

    # Exported again from the new workspace: the same records, but for the ids.
    again = tmp_path / "again.jsonl"
    ok(target, "runs", "export", "--format", "records", "--all", "-o", str(again))
    for first, second in zip(lines, (json.loads(x) for x in again.read_text().splitlines()), strict=True):
        assert second.pop("imported_from") == first["id"]
        second.pop("id"), first.pop("id")
        assert second == first
    # The same file again: nothing new, unless asked.
    assert "was imported before (7 runs)" in ok(target, "runs", "import", str(out))
    assert "imported 7 run(s)" in ok(target, "runs", "import", str(out), "--again")


def test_export_of_chosen_runs_to_stdout_and_by_tag_and_date(seeded: Path) -> None:
    picked = [json.loads(x)["id"] for x in ok(seeded, "runs", "export", "r2", "r1", "--format", "records").splitlines()]
    assert picked == ["r2", "r1"]
    assert [json.loads(x)["id"] for x in ok(seeded, "runs", "export", "--format", "records", "--tag",
                                              "baseline").splitlines()] == ["r1"]
    assert ok(seeded, "runs", "export", "--format", "records", "--since", "2100-01-01") == ""


@pytest.mark.parametrize("args, words", [
    (("r5", "--format", "records"), "r5 is running: records hold finished runs"),
    (("--format", "records"), "--format records needs run ids, or --all, --since DATE or --tag T"),
    (("--all",), "--all, --since and --tag select runs for --format records"),
    (("--format", "records", "--since", "last week"), "--since 'last week': allowed: a date like 2025-01-31"),
    (("--format", "xml", "r1"), "--format 'xml': allowed: csv, json, records"),
])
def test_export_refuses_with_one_plain_line(seeded: Path, args: tuple[str, ...], words: str) -> None:
    proc = cli(seeded, "runs", "export", *args, env=QUIET)
    assert proc.returncode == 2 and words in one_line(proc.stderr)


GOOD = {"preset": "seed/step-decay", "state": "completed", "config": {"train": {"epochs": 1}},
        "history": [{"epoch": 1, "train_loss": 1.0}]}


@pytest.mark.parametrize("bad, words", [
    ("{not json", "line 3: not valid JSON"),
    (json.dumps({**GOOD, "state": "running"}), "line 3: state 'running' is not a finished state; allowed: completed,"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "history"}), "line 3: missing 'history'"),
    (json.dumps({**GOOD, "colour": "red"}), "line 3: unknown key 'colour'; allowed: id, preset, state"),
    (json.dumps({**GOOD, "tags": ["no spaces please"]}), "line 3: tag 'no spaces please'"),
    (json.dumps({**GOOD, "history": [1, 2]}), "line 3: 'history' must be a list of JSON objects"),
    (json.dumps([GOOD]), "line 3: a record is a JSON object"),
])
def test_a_bad_line_is_named_and_nothing_is_imported(tmp_path: Path, bad: str, words: str) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + bad + "\n" + json.dumps(GOOD) + "\n")
    home = tmp_path / "ws"
    proc = cli(home, "runs", "import", str(path), env=QUIET)
    assert proc.returncode == 2 and f"{path} {words}" in one_line(proc.stderr)
    assert not Workspace(home).catalog_path.exists() or Store(Workspace(home)).list_runs() == []


def test_import_from_stdin(seeded: Path, tmp_path: Path) -> None:
    data = ok(seeded, "runs", "export", "r1", "--format", "records")
    import subprocess

    from tests.deck import TRIALDECK

    home = tmp_path / "to"
    proc = subprocess.run([*TRIALDECK, "runs", "import", "-", "--home", str(home)], input=data, text=True,
                          capture_output=True, env={**__import__("os").environ, **QUIET}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "imported 1 run(s) from stdin: r1 to r1" in proc.stdout
    assert not list(home.glob(".import-*"))  # the spooled copy is gone


def test_archive_hides_runs_from_lists_and_unarchive_brings_them_back(seeded: Path) -> None:
    said = json.loads(ok(seeded, "runs", "archive", "--before", "2100-01-01", "--json"))
    # r8..r10 are trials of a study that still runs: left where they are.
    assert said == {"archived": ["r1", "r2", "r3", "r4"], "skipped_active": 3}
    listed = [r["id"] for r in json.loads(ok(seeded, "runs", "list", "--json"))]
    assert listed == ["r5", "r6", "r7", "r8", "r9", "r10"]
    assert [r["id"] for r in json.loads(ok(seeded, "runs", "list", "--archived", "--json"))] == ["r1", "r2", "r3", "r4"]
    assert "archived: listed by `runs list --archived`" in ok(seeded, "runs", "show", "r1")
    assert json.loads(ok(seeded, "runs", "show", "r1", "--json"))["archived"] is True
    assert json.loads(ok(seeded, "runs", "unarchive", "r1", "--json")) == {"unarchived": ["r1"]}
    assert "unarchived 3 run(s)" in ok(seeded, "runs", "unarchive", "--all")
    assert len(json.loads(ok(seeded, "runs", "list", "--json"))) == 10
    proc = cli(seeded, "runs", "archive", "r5", env=QUIET)
    assert proc.returncode == 2 and "r5 is running: only finished runs are archived" in one_line(proc.stderr)


def test_a_batch_never_spans_two_segments(tmp_path: Path) -> None:
    """Each committed batch is whole records of one segment (the unit the README says survives a kill)."""
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(GOOD) + "\n" for _ in range(600)))
    store = Store(Workspace(tmp_path / "ws").ensure())
    seen: list[int] = []
    records.import_records(store, path, progress=lambda done, total: seen.append(done))
    assert seen == [255, 511, 600]  # r1..r255 fill segment 0, r256..r511 segment 1, the rest segment 2
    meta = store.meta()["imports"]
    [done] = meta.values()
    assert done["lines"] == 600 and done["runs"] == 600 and done["first"] == "r1" and done["last"] == "r600"
