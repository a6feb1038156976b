"""The trials of ended studies: which live in catalog.json's `trials` table, and sealing them per study.

One job: the moves between catalog.json's `trials` table and the studies' trial files
(`segments/trials-<study>-g<version>.json`, written by `Segments.write_trials`) inside a store
transaction (the catalogue lock held), and merging a study's trials wherever they are.

Invariants:
- A study's trials are in one place: the `trials` table, or the version of its trial file that
  catalog.json's `trial_segments` table names. Every trial of a study that still wants trials
  (running, stopping) is in the table (the tuning driver merges them each tick).
- Once the table holds more than `SEAL_AT` trials of studies that want no more (completed,
  stopped, failed, remote, or trials with no study record), all of those are sealed in one write,
  a file per study: catalog.json keeps what tuning now touches, however many studies ended.
- A merge that changes or adds a trial of a sealed study (a `trialdeck worker`, `studies show
  --storage` merging another box's trials), and a study that wants trials again (tuned again),
  bring its trials back to the table in the same write; the same write's round may seal them
  again as the study's next version.
- A study's `trial_segments` entry is never removed: bringing its trials back writes an empty
  version, so the catalog.json.bak of the write before still finds the file it names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tinydb import Query, TinyDB
from tinydb.table import Document

from trialdeck.engine.types import ACTIVE_STUDY_STATES

if TYPE_CHECKING:
    from trialdeck.engine.catalogue.store import Store

__all__ = ["SEAL_AT", "bring_back", "file_docs", "merge", "registry", "seal", "seal_round", "sealed"]

SEAL_AT = 1_000
"""Trials of ended studies the working set may hold (about 0.5 MB) before all of them are sealed."""


def _raw(db: TinyDB, name: str) -> dict[str, dict[str, Any]]:
    return (db.storage.read() or {}).get(name, {})


def registry(state_or_db: TinyDB | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Study name -> the entry of its current trial file (catalog.json's `trial_segments` table)."""
    table = _raw(state_or_db, "trial_segments") if isinstance(state_or_db, TinyDB) \
        else state_or_db.get("trial_segments", {})
    return {str(entry["study"]): entry for entry in table.values()}


def _active(db: TinyDB) -> set[str]:
    return {str(s.get("name")) for s in _raw(db, "studies").values() if s.get("state") in ACTIVE_STUDY_STATES}


def sealed(store: Store, db: TinyDB, study: str) -> dict[int, dict[str, Any]]:
    """The study's sealed trials by number (shared with the file cache: copy before changing)."""
    entry = registry(db).get(study)
    if entry is None or not entry.get("trials"):
        return {}
    return {int(d["number"]): d for d in store.segments.trials(entry).values()}


def file_docs(by_number: Mapping[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Trial documents as a trial file holds them: by number, document ids 1, 2, ..."""
    return {str(i): doc for i, (_, doc) in enumerate(sorted(by_number.items()), 1)}


def _write(store: Store, db: TinyDB, study: str, by_number: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
    """The study's next trial file version holding these trials, put in the registry (committed with catalog.json)."""
    table = db.table("trial_segments")
    old = table.get(Query().study == study)
    entry = store.segments.write_trials(study, file_docs(by_number), store.rewrites(old))
    store.wrote_trials(entry)
    if old is not None:
        table.upsert(Document(entry, doc_id=old.doc_id))
    else:
        table.insert(entry)
    return entry


def seal(store: Store, db: TinyDB, studies: Iterable[str]) -> int:
    """Move these studies' trials from the table to their files; returns how many moved."""
    wanted = set(studies)
    groups: dict[str, dict[int, int]] = {}
    for key, doc in _raw(db, "trials").items():
        study, number = doc.get("study"), doc.get("number")
        if study in wanted and isinstance(number, int) and not isinstance(number, bool):
            groups.setdefault(study, {})[number] = int(key)
    trials = _raw(db, "trials")
    moved: list[int] = []
    for study, ids in sorted(groups.items()):
        by_number = dict(sealed(store, db, study))
        by_number.update({number: trials[str(doc_id)] for number, doc_id in ids.items()})
        _write(store, db, study, by_number)
        moved += ids.values()
    if moved:
        db.table("trials").remove(doc_ids=moved)
    return len(moved)


def seal_round(store: Store, db: TinyDB) -> int:
    """Seal the trials of every study that wants no more once the table holds more than SEAL_AT of them."""
    trials = _raw(db, "trials")
    if len(trials) <= SEAL_AT:
        return 0
    active = _active(db)
    ended: dict[str, int] = {}
    for doc in trials.values():
        study = doc.get("study")
        if isinstance(study, str) and study not in active:
            ended[study] = ended.get(study, 0) + 1
    if sum(ended.values()) <= SEAL_AT:
        return 0
    return seal(store, db, ended)


def bring_back(store: Store, db: TinyDB, study: str) -> int:
    """Move a sealed study's trials back to the table (its file's next version is empty); returns how many."""
    found = sealed(store, db, study)
    if not found:
        return 0
    back = [store.copy(doc) for _, doc in sorted(found.items())]
    _write(store, db, study, {})
    db.table("trials").insert_multiple(back)
    return len(back)


def merge(store: Store, db: TinyDB, study: str, bodies: list[dict[str, Any]]) -> int:
    """Insert or update `study`'s trial documents by number (only those that changed); returns how
    many did. A change to a sealed study brings its trials back first."""
    table = db.table("trials")
    existing = {int(t["number"]): t for t in table.search(Query().study == study)}
    outside = sealed(store, db, study)

    def changes(body: dict[str, Any]) -> bool:
        number = int(body["number"])
        old = existing.get(number) or outside.get(number)
        return old is None or any(old.get(k) != v for k, v in body.items())

    bodies = [body for body in bodies if changes(body)]
    if not bodies:
        return 0
    if outside and bring_back(store, db, study):
        existing = {int(t["number"]): t for t in table.search(Query().study == study)}
    for body in bodies:
        old = existing.get(int(body["number"]))
        if old is None:
            table.insert(body)
        else:
            table.update(body, doc_ids=[old.doc_id])
    return len(bodies)
