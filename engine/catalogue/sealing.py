"""The working set and the sealed runs: which runs live in catalog.json, and moving them out and back.

One job: the moves between catalog.json's `runs` table (the working set) and the segment files
(`trialdeck.engine.catalogue.segments`), inside a store transaction (the catalogue lock held).

Invariants:
- Every unfinished run (queued, running, interrupted) is in the working set; a segment holds
  only finished runs. A run number is in exactly one place: the working set or its segment.
- The working set also keeps the newest finished runs (at least `KEEP_FINISHED`) and every run
  of a study that still wants trials (the tuning driver reads them each tick). Past
  `SEAL_AT` finished runs, the oldest finished beyond `KEEP_FINISHED` are sealed in one write
  (a few segment versions, once per hundred runs that finish), with their lines of the
  `events` table (each run document keeps its own events).
- A change to a sealed run (a tag, a note) writes a new version of its segment; a sealed run
  queued again (resume) comes back to the working set. Either way the new version and the
  catalog.json change commit in the one write of catalog.json.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tinydb import TinyDB
from tinydb.table import Document

from trialdeck.engine.catalogue.segments import finished, segment_of
from trialdeck.engine.types import ACTIVE_STUDY_STATES

if TYPE_CHECKING:
    from trialdeck.engine.catalogue.store import Store

__all__ = ["KEEP_FINISHED", "SEAL_AT", "registry", "seal", "seal_round", "sealed_doc", "unseal", "update_sealed"]

KEEP_FINISHED = 100
"""Finished runs the working set keeps after a sealing round (the newest by when they ended)."""
SEAL_AT = 200
"""Finished runs in the working set past which the oldest are sealed."""


def _raw(db: TinyDB, name: str) -> dict[str, dict[str, Any]]:
    return (db.storage.read() or {}).get(name, {})


def registry(state_or_db: TinyDB | dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Segment number -> its current registry entry (catalog.json's `segments` table)."""
    table = _raw(state_or_db, "segments") if isinstance(state_or_db, TinyDB) else state_or_db.get("segments", {})
    return {int(entry["segment"]): entry for entry in table.values()}


def sealed_doc(store: Store, db: TinyDB, number: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A sealed run's document (shared with the segment cache: copy before changing) and its segment's
    registry entry; (None, entry or None) when the segment does not hold it."""
    entry = registry(db).get(segment_of(number))
    if entry is None:
        return None, None
    return store.segments.docs(entry).get(str(number)), entry


def write_segment(store: Store, db: TinyDB, k: int, docs: dict[str, dict[str, Any]],
                  old: dict[str, Any] | None) -> dict[str, Any]:
    """Write the next version of segment k and put it in the registry (committed with catalog.json)."""
    entry = store.segments.write(k, docs, store.rewrites(old))
    store.wrote(k, entry)
    db.table("segments").upsert(Document(entry, doc_id=k + 1))
    return entry


def _active_studies(db: TinyDB) -> set[str]:
    return {str(s.get("name")) for s in _raw(db, "studies").values() if s.get("state") in ACTIVE_STUDY_STATES}


def seal(store: Store, db: TinyDB, numbers: Iterable[int], *, archived: bool | None = None) -> int:
    """Move finished runs of the working set into their segments; `archived` sets or clears their flag.
    Returns how many moved."""
    runs = _raw(db, "runs")
    by_segment: dict[int, list[int]] = {}
    for number in numbers:
        by_segment.setdefault(segment_of(number), []).append(number)
    found = registry(db)
    moved: list[int] = []
    for k, group in sorted(by_segment.items()):
        old = found.get(k)
        docs = dict(store.segments.docs(old)) if old else {}
        for number in group:
            doc = runs[str(number)]
            if archived is not None:
                doc = {key: value for key, value in doc.items() if key != "archived"}
                if archived:
                    doc["archived"] = True
            docs[str(number)] = doc
            moved.append(number)
        write_segment(store, db, k, docs, old)
    if moved:
        db.table("runs").remove(doc_ids=moved)
        ids = {f"r{n}" for n in moved}
        events = [int(key) for key, e in _raw(db, "events").items() if e.get("run") in ids]
        if events:
            db.table("events").remove(doc_ids=events)
    return len(moved)


def seal_round(store: Store, db: TinyDB) -> int:
    """Seal the oldest finished runs once the working set holds more than SEAL_AT; returns how many."""
    runs = _raw(db, "runs")
    done = [d for d in runs.values() if finished(d)]
    if len(done) <= SEAL_AT:
        return 0
    active = _active_studies(db)
    ended = sorted((float(d.get("finished_at") or 0.0), int(key)) for key, d in runs.items()
                   if finished(d) and d.get("study") not in active)
    return seal(store, db, [number for _, number in ended[: max(0, len(ended) - KEEP_FINISHED)]])


def unseal(store: Store, db: TinyDB, number: int) -> dict[str, Any] | None:
    """Bring a sealed run back to the working set (not archived any more); None if no segment holds it."""
    doc, entry = sealed_doc(store, db, number)
    if doc is None or entry is None:
        return None
    docs = dict(store.segments.docs(entry))
    del docs[str(number)]
    write_segment(store, db, segment_of(number), docs, entry)
    back = store.copy(doc)
    back.pop("archived", None)
    db.table("runs").insert(Document(back, doc_id=number))
    return back


def update_sealed(store: Store, db: TinyDB, number: int,
                  change: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
    """Change a sealed run where it is (a new version of its segment); its new document, or None."""
    doc, entry = sealed_doc(store, db, number)
    if doc is None or entry is None:
        return None
    new = store.copy(doc)
    change(new)
    docs = dict(store.segments.docs(entry))
    docs[str(number)] = new
    write_segment(store, db, segment_of(number), docs, entry)
    return new


def set_archived(store: Store, db: TinyDB, numbers: Iterable[int], archived: bool) -> list[int]:
    """Set or clear the archived flag of sealed runs (one new version per segment touched); returns the
    numbers that changed."""
    by_segment: dict[int, list[int]] = {}
    for number in numbers:
        by_segment.setdefault(segment_of(number), []).append(number)
    found = registry(db)
    changed: list[int] = []
    for k, group in sorted(by_segment.items()):
        entry = found.get(k)
        if entry is None:
            continue
        docs = dict(store.segments.docs(entry))
        hits = [n for n in group if str(n) in docs and bool(docs[str(n)].get("archived")) != archived]
        for n in hits:
            doc = {key: value for key, value in docs[str(n)].items() if key != "archived"}
            if archived:
                doc["archived"] = True
            docs[str(n)] = doc
        if hits:
            write_segment(store, db, k, docs, entry)
            changed += hits
    return changed
