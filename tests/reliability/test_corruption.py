"""Corrupt and stale files: a clear message, a recovery path, never silent loss, never a crash loop."""

from __future__ import annotations

import json
import time

import pytest

from tests.deck import cli, one_line
from trialdeck.engine.catalogue.metrics import JsonlMetricsWriter, read_jsonl
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.presets import resolve
from trialdeck.engine.workspace import Workspace


def seeded(home) -> Store:
    store = Store(Workspace(home).ensure())
    spec = resolve("seed/step-decay")
    for _ in range(3):
        store.create_run(preset=spec.preset, config=spec.config(), config_hash=spec.content_hash)
    return store


@pytest.mark.parametrize("damage", ["truncated", "nul-padded", "garbage"])
def test_a_corrupt_catalog_is_refused_with_the_file_and_the_backup_named(home, damage):
    store = seeded(home)
    good = store.path.read_bytes()
    if damage == "truncated":
        bad = good[: len(good) // 2]
    elif damage == "nul-padded":
        bad = good[: len(good) // 3] + b"\0" * 4096
    else:
        bad = b"{not json"
    store.path.write_bytes(bad)

    for args in (["runs", "list"], ["engine", "start"], ["run", "seed/step-decay"]):
        result = cli(home, *args)
        line = one_line(result.stderr)
        assert result.returncode == 3, (args, result.stderr)
        assert str(store.path) in line and "corrupt" in line
        assert "catalog.json.bak holds the last good state" in line
    assert store.path.read_bytes() == bad, "the corrupt file must be left untouched"
    copies = list(store.path.parent.glob("catalog.json.corrupt-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == bad  # one copy, not one per attempt
    assert not (home / "engine.pid").exists(), "no engine may start on a corrupt catalogue"

    # The recovery path the message names: restore the backup, and everything is there again.
    store.backup_path.replace(store.path)
    listed = json.loads(cli(home, "runs", "list", "--json").stdout)
    assert len(listed) >= 2


def test_a_torn_last_line_in_a_metric_stream_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with JsonlMetricsWriter(path) as w:
        w.write({"kind": "epoch", "epoch": 1})
        w.write({"kind": "epoch", "epoch": 2})
    with open(path, "ab") as fh:
        fh.write(b'{"kind": "epoch", "ep')  # a writer killed mid-line
    records, offset = read_jsonl(path)
    assert [r["epoch"] for r in records] == [1, 2]
    with JsonlMetricsWriter(path) as w:  # the next writer (a resumed run) carries on
        w.write({"kind": "epoch", "epoch": 3})
    more, _ = read_jsonl(path, offset)
    assert [r["epoch"] for r in more] == [3]


def test_a_torn_last_line_in_an_optuna_journal_is_tolerated(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path / "study.journal"
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    for x in (1.0, 2.0, 3.0):
        trial = study.ask()
        trial.suggest_float("x", 0, 10)
        study.tell(trial, x)
    with open(path, "ab") as fh:
        fh.write(b'{"op_code": 5, "worker_id": "dead", "trial_id": 9')  # killed mid-append
    again = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    assert len(again.trials) == 3 and again.best_value == 1.0


def test_a_stale_pid_file_from_a_dead_engine_does_not_block_a_new_one(home):
    ws = Workspace(home).ensure()
    ws.pid_path.write_text(json.dumps({"pid": 999_999, "started_at": time.time() - 100, "slots": ["cpu.0"]}))
    ws.lock_path.touch()  # a lock file left behind; the OS lock died with its process
    status = json.loads(cli(home, "engine", "status", "--json").stdout)
    assert status["running"] is False and status["pid"] is None
    started = cli(home, "engine", "start", "--json")
    try:
        assert started.returncode == 0, started.stderr
        info = json.loads(started.stdout)
        assert info["pid"] != 999_999
        status = json.loads(cli(home, "engine", "status", "--json").stdout)
        assert status["running"] is True and status["pid"] == info["pid"]
    finally:
        cli(home, "engine", "stop")


def test_a_second_engine_on_the_same_workspace_refuses(home):
    started = cli(home, "engine", "start", "--json")
    try:
        assert started.returncode == 0, started.stderr
        pid = json.loads(started.stdout)["pid"]
        second = cli(home, "engine", "run")
        assert second.returncode == 3
        assert "another engine already runs" in second.stderr and str(pid) in second.stderr
    finally:
        cli(home, "engine", "stop")
