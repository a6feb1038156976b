"""`studies list|show|best|export --storage` on studies plain Optuna made (tests/optuna_studies.py), in
an SQLite file, a journal file and PostgreSQL: Optuna's own numbers, exactly, and nothing written.

Each storage is built once per module; the commands run in this process through CliRunner
(reading a storage starts no engine), against a workspace that never saw the studies.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from tests import optuna_studies
from trialdeck.tui.cli import app

runner = CliRunner()
NAMES = ["single", "three", "two"]


def invoke(home: Path, *args: str):
    return runner.invoke(app, ["studies", *args, "--home", str(home)])


def ok_json(home: Path, *args: str):
    result = invoke(home, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns


@pytest.fixture(scope="module", params=["sqlite", "journal"])
def built(request, tmp_path_factory):
    """(the --storage argument, the storage as Optuna opens it, the file) for studies plain Optuna wrote."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite":
        file = root / "db.sqlite3"
        where = f"sqlite:///{file}"
    else:
        file = root / "optuna.journal"
        where = str(file)
    optuna_studies.build(where)
    return where, optuna_studies.storage_of(where), file


def study_of(storage, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def test_list_gives_each_study_with_optunas_counts_and_best(built, tmp_path):
    where, storage, file = built
    before = digest(file)
    docs = {d["name"]: d for d in ok_json(tmp_path, "list", "--storage", where)}
    assert sorted(docs) == NAMES
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
        doc = docs[summary.study_name]
        assert doc["n_trials"] == summary.n_trials
        assert doc["directions"] == [d.name.lower() for d in summary.directions]
        assert doc["foreign"] is True and doc["preset"] is None
        if len(summary.directions) == 1:
            assert (doc["best"]["number"], doc["best"]["value"]) == (summary.best_trial.number, summary.best_trial.value)
        else:
            assert doc["pareto"] == sorted(t.number for t in study_of(storage, summary.study_name).best_trials)
    assert docs["two"]["objectives"] == [{"metric": "accuracy", "direction": "maximize"},
                                         {"metric": "size", "direction": "minimize"}]
    assert [o["metric"] for o in docs["three"]["objectives"]] == ["values_0", "values_1", "values_2"]
    assert digest(file) == before, "reading the storage changed the file"


@pytest.mark.parametrize("name", NAMES)
def test_show_gives_every_trial_as_optuna_has_it(built, tmp_path, name):
    where, storage, file = built
    before = digest(file)
    shown = ok_json(tmp_path, "show", name, "--storage", where)
    trials = study_of(storage, name).trials
    assert [t["number"] for t in shown["trials"]] == [t.number for t in trials]
    for doc, t in zip(shown["trials"], trials, strict=True):
        assert doc["state"] == t.state.name.lower()
        assert doc["params"] == t.params
        assert doc["values"] == (list(t.values) if t.values is not None else None)
        if len(shown["directions"]) == 1:
            assert doc["value"] == t.value
            assert doc["intermediate"] == {str(k): v for k, v in t.intermediate_values.items()}
    if name == "single":  # a foreign study with a failed and a pruned trial
        states = {t["number"]: t["state"] for t in shown["trials"]}
        assert (states[3], states[5]) == ("pruned", "fail")
        assert shown["counts"] == {"complete": 14, "pruned": 1, "fail": 1}
    assert digest(file) == before
    assert not (tmp_path / "catalog.json").exists() or name not in (tmp_path / "catalog.json").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_best_is_optunas_best_trial_or_its_whole_front(built, tmp_path, name):
    where, storage, _ = built
    study = study_of(storage, name)
    best = ok_json(tmp_path, "best", name, "--storage", where)
    if len(study.directions) == 1:
        assert (best["number"], best["value"], best["params"]) == (study.best_trial.number, study.best_trial.value,
                                                                 study.best_trial.params)
    else:
        front = sorted(study.best_trials, key=lambda t: t.number)
        assert [(t["number"], t["values"], t["params"]) for t in best["pareto"]] == \
            [(t.number, list(t.values), t.params) for t in front]
        text = invoke(tmp_path, "best", name, "--storage", where).stdout
        assert text.startswith(f"pareto front of {name}: {len(front)} trials")


@pytest.mark.parametrize("name", ["single", "two"])
def test_export_csv_holds_optunas_values_and_params_exactly(built, tmp_path, name):
    where, storage, _ = built
    result = invoke(tmp_path, "export", name, "--storage", where)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    trials = study_of(storage, name).trials
    assert len(rows) == len(trials)
    columns = ["value"] if name == "single" else ["accuracy", "size"]
    for row, t in zip(rows, trials, strict=True):
        assert (int(row["number"]), row["state"]) == (t.number, t.state.name.lower())
        got = [float(row[c]) if row[c] else None for c in columns]
        assert got == (list(t.values) if t.values is not None else [None] * len(columns))
        for key, value in t.params.items():
            assert row[key] == str(value)


def test_a_trial_of_a_foreign_study_cannot_be_saved_as_a_preset(built, tmp_path):
    where, _, _ = built
    result = invoke(tmp_path, "best", "two", "--storage", where, "--trial", "1", "--save-preset", "mine")
    assert result.exit_code == 2
    assert "was not made by trialdeck" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(("where", "said"), [
    ("sqlite:///{tmp}/nothing.sqlite3", "no such file"),
    ("{tmp}/nothing.journal", "no such file"),
    ("sqlite:///{tmp}/empty.sqlite3", "not an Optuna storage"),
    ("redis://localhost/0", "allowed: sqlite:///PATH"),
    ("postgresql://nobody@127.0.0.1:1/none", "cannot open: connection to server"),
])
def test_a_storage_that_cannot_be_opened_is_one_line_with_the_url_and_why(tmp_path, where, said):
    (tmp_path / "empty.sqlite3").write_bytes(b"")
    url = where.format(tmp=tmp_path)
    result = invoke(tmp_path / "home", "list", "--storage", url)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert said in lines[0] and ("nothing" in lines[0] or "empty" in lines[0] or "://" in lines[0]), lines[0]
    assert not (tmp_path / "nothing.sqlite3").exists() and not (tmp_path / "nothing.journal").exists()


def test_an_unknown_study_names_the_ones_there(built, tmp_path):
    where, _, _ = built
    result = invoke(tmp_path, "show", "nope", "--storage", where)
    assert result.exit_code == 2
    assert "no study 'nope'" in result.stderr and "single, two, three" in result.stderr


def test_a_postgresql_study_reads_as_optuna_has_it(pg_url, tmp_path):
    url = pg_url.replace("postgresql://", "postgresql+psycopg2://")
    study = optuna_studies.two(url, name="pg-two-foreign", n=12)
    best = ok_json(tmp_path, "best", "pg-two-foreign", "--storage", pg_url)
    assert [t["number"] for t in best["pareto"]] == sorted(t.number for t in study.best_trials)
    shown = ok_json(tmp_path, "show", "pg-two-foreign", "--storage", pg_url)
    assert [t["values"] for t in shown["trials"]] == [list(t.values) for t in study.trials]
    names = {d["name"] for d in ok_json(tmp_path, "list", "--storage", pg_url)}
    assert "pg-two-foreign" in names


def test_tui_storage_that_cannot_be_opened_is_one_line_before_the_screen(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIALDECK_FORCE_TUI", "1")  # CliRunner is no terminal: the storage is checked first anyway
    result = runner.invoke(app, ["tui", "--storage", str(tmp_path / "missing.journal"), "--home", str(tmp_path / "h")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.journal: no such file" in lines[0], result.output
