"""What the Studies view reads from Optuna storages, off the UI thread: opening one typed in the
view, every study of every opened storage, and importances of a study (engine/tuning/storages.py
and insight.py do the reading; this module only shapes it for the screen). No Textual here."""

from __future__ import annotations

from typing import Any

FRONT = -1
"""The objective choice "reaching the Pareto front" (tui/widgets/study_plots.py uses the same)."""


def open_storage(text: str) -> str:
    """A storage typed in the view, opened to read: its URL (BadInput, said as a notification, if not)."""
    from trialdeck.engine.tuning import storages

    url = storages.parse(text)
    storages.study_names(url)
    return url


def read_storages(urls: list[str], sep: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every study of every storage, keyed "name<sep>url", and one line for each storage that
    could not be read."""
    from trialdeck.engine.errors import TrialdeckError
    from trialdeck.engine.tuning import storages

    docs: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for url in urls:
        try:
            for doc in storages.list_studies(url):
                docs[f"{doc['name']}{sep}{url}"] = doc
        except TrialdeckError as exc:
            problems[url] = exc.message
    return docs, problems


def importances(url: str, name: str, objective: int, evaluator: str) -> tuple[dict[str, float], str]:
    """(importances, a note when there are none) of study `name` at `url`: of one objective, or
    for reaching the front (FRONT)."""
    from trialdeck.engine.tuning import insight, storages

    study = storages.load_study(url, name)
    found = insight.importances(study, objective=None if objective == FRONT else objective, evaluator=evaluator)
    return found.values, found.note
