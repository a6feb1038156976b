"""The one-time moves of a catalog.json of an older layout to the working set plus segments.

One job: migrate a workspace the first time a `Store` of this version opens it. From layout 1
(no `meta.layout`: every run in it) every finished run moves to its segment
(`trialdeck.engine.catalogue.segments`) with its whole record; from layouts 1 and 2 (runs already
in segments), the trials of ended studies move to their studies' trial files by the working set's
own rule (`trialdeck.engine.catalogue.sealed_trials`: once more than `SEAL_AT` of them). catalog.json
keeps the unfinished runs, the studies, the trials of studies that want more, the events of the runs
it keeps, and gains the registries of segments and `meta.layout` = 3.

Invariants:
- Nothing is lost: a run's events stay in its record, and before catalog.json is replaced the old
  file is kept as `catalog.json.v1.bak` (from layout 1) or `catalog.json.v2.bak` (from 2), a hard
  link (no copy), which TinyDB reads as before.
- One commit point: the segment and trial files are written first and count only once the new
  catalog.json names them (one atomic replace). A kill -9 at any moment leaves the old catalog.json
  whole and in use; the next open starts the migration again, and files of the killed attempt are
  removed.
- A file in our line layout (one document per line: what trialdeck has written since it had
  segments in mind) is read a line at a time, so a 200 MB catalogue never sits in memory whole (the
  trials to seal wait as their JSON bytes, then are parsed a study at a time); any other file
  (TinyDB's own one-line layout, a hand edit) is parsed whole, and a file that does not parse is
  reported exactly as any read reports it (`CatalogCorrupt`), untouched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from trialdeck.engine.catalogue import sealed_trials, sealing
from trialdeck.engine.catalogue.file import META_ID, TABLES, gc_paused, layout_of
from trialdeck.engine.catalogue.lines import is_table
from trialdeck.engine.catalogue.segments import finished, segment_of
from trialdeck.engine.types import ACTIVE_STUDY_STATES

if TYPE_CHECKING:
    from trialdeck.engine.catalogue.store import Store

__all__ = ["BACKUP_SUFFIX", "migrate"]

BACKUP_SUFFIX = ".v1.bak"
"""catalog.json + this: the catalogue as it was before the migration from layout 1 (`.v2.bak`: from 2)."""
_GROWING = ("runs", "trials", "events")
_OPENERS = tuple((name, b'"' + name.encode() + b'":{') for name in _GROWING)


class _NotLines(Exception):
    """The file is not in the line layout: parse it whole instead."""


def backup_path(store: Store, layout: int | None = None) -> Path:
    """Where the catalogue of `layout` (None: 1) is kept when it is migrated."""
    suffix = BACKUP_SUFFIX if layout is None else f".v{layout}.bak"
    return store.path.with_name(store.path.name + suffix)


def migrate(store: Store) -> None:
    """Move `store`'s catalogue to the current layout, unless another process did meanwhile."""
    with store._locked():
        found = layout_of(store.path)
        if found == 0 or found is not None and found >= store.layout:
            return
        try:
            _streamed(store, found)
        except _NotLines:
            _whole(store, found)


def _keep_backup(store: Store, layout: int | None) -> None:
    """catalog.json.v<layout>.bak: another name for the file about to be replaced (once: a first backup is kept)."""
    target = backup_path(store, layout)
    if target.exists():
        return
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.link(store.path, tmp)
    except OSError:  # no hard links here: a copy
        tmp.write_bytes(store.path.read_bytes())
    os.replace(tmp, target)


def _counters(meta: dict[str, Any], numbers: list[int], seqs: list[int]) -> dict[str, Any]:
    """meta with `next_run` and `next_seq` past every run, so no id or place is ever reused."""
    out = dict(meta)
    out["next_run"] = max(int(meta.get("next_run", 1)), max(numbers, default=0) + 1)
    out["next_seq"] = max(int(meta.get("next_seq", 1)), max(seqs, default=0) + 1)
    return out


# ----------------------------------------------------------------------------- a file of any layout


def _whole(store: Store, layout: int | None) -> None:
    """Migrate through an ordinary transaction: the file parsed whole (CatalogCorrupt if it does not parse)."""
    with store._edit() as db:
        runs = sealing._raw(db, "runs")
        numbers = [int(key) for key in runs if key.isdigit()]
        seqs = [int(d.get("seq") or 0) for d in runs.values() if isinstance(d.get("seq"), int)]
        meta = _counters(store._meta(db), numbers, seqs)
        store._set_meta(db, **meta)  # always a write: it stamps the layout
        if layout is None:  # layout 2 has its runs in segments already
            sealing.seal(store, db, [int(key) for key, d in runs.items() if key.isdigit() and finished(d)])
        sealed_trials.seal_round(store, db)
        _keep_backup(store, layout)


# ----------------------------------------------------------------------------- our line layout, streamed


def _lines(f: IO[bytes]) -> Iterator[bytes]:
    for line in f:
        yield line[:-1] if line.endswith(b"\n") else line


def _streamed(store: Store, layout: int | None) -> None:
    """Migrate a file in the line layout reading one document at a time; _NotLines if it is not one."""
    try:
        f = open(store.path, "rb")
    except FileNotFoundError:
        raise _NotLines from None
    with f, gc_paused():
        read = _read(store, _lines(f), seal_runs=layout is None)
    outside, tables = read.outside, read.tables
    try:
        raw = orjson.loads(b"\n".join(outside))
    except orjson.JSONDecodeError:
        raise _NotLines from None
    if not isinstance(raw, dict) or not all(is_table(t) for name, t in raw.items() if name not in tables):
        raise _NotLines
    for name, table in tables.items():
        if raw.get(name) != {"\0": name}:
            raise _NotLines
        raw[name] = table
    if any(raw.get(name) and name not in tables for name in _GROWING):
        raise _NotLines  # a table on one line (TinyDB's own layout): parsed whole, sealed by `_whole`
    _commit(store, raw, read, layout)


class _Sealer:
    """Finished runs, a segment at a time, in the order the file lists them (ascending numbers)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.k: int | None = None
        self.docs: dict[str, dict[str, Any]] = {}
        self.entries: dict[int, dict[str, Any]] = {}

    def add(self, key: str, doc: dict[str, Any]) -> None:
        k = segment_of(int(key))
        if k != self.k:
            self.flush()
            if k in self.entries:  # out of order: not a file we wrote
                raise _NotLines
            self.k = k
        self.docs[key] = doc

    def flush(self) -> None:
        if self.k is not None and self.docs:
            self.entries[self.k] = self.store.segments.write(self.k, self.docs, 1)
        self.k, self.docs = None, {}


class _Shelf:
    """Trials of studies that want no more, met on the way: kept as their lines by study (a tenth
    of their parsed size; bytes orjson made would each hold ten times their length), until the
    table's end says whether they are sealed."""

    def __init__(self, active: set[str]) -> None:
        self.active = active
        self.by_study: dict[str, list[bytes]] = {}
        self.count = 0

    def take(self, doc: dict[str, Any], line: bytes) -> bool:
        study, number = doc.get("study"), doc.get("number")
        if not isinstance(study, str) or study in self.active or not isinstance(number, int) or isinstance(number, bool):
            return False
        self.by_study.setdefault(study, []).append(line)
        self.count += 1
        return True

    def settle(self, store: Store, table: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Past SEAL_AT, each study's trial file (its first version), parsed a study at a time: their
        entries by study; else the trials go back to `table`, in document order."""
        if self.count <= sealed_trials.SEAL_AT:
            for group in self.by_study.values():
                table.update(_member(line) for line in group)
            ordered = sorted(table.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0)
            table.clear()
            table.update(ordered)
            return {}
        entries: dict[str, dict[str, Any]] = {}
        for study, group in sorted(self.by_study.items()):
            by_number = {int(doc["number"]): doc for _, doc in map(_member, group)}
            entries[study] = store.segments.write_trials(study, sealed_trials.file_docs(by_number), 1)
        return entries


def _active_studies(outside: list[bytes]) -> set[str]:
    """The studies that want trials, from the lines read so far (up to the `trials` table's opener,
    which the `studies` table precedes in our layout); _NotLines when they do not say."""
    try:
        head = orjson.loads(b"\n".join(outside) + b"}}")
    except orjson.JSONDecodeError:
        raise _NotLines from None
    studies = head.get("studies") if isinstance(head, dict) else None
    if not isinstance(studies, dict) or not is_table(studies):
        raise _NotLines
    return {str(s.get("name")) for s in studies.values() if isinstance(s, dict) and s.get("state") in ACTIVE_STUDY_STATES}


@dataclass
class _Read:
    """What a streamed read found: the lines outside the growing tables (each table replaced by a
    placeholder), the kept documents of each growing table, every run number and seq, and the
    segments and trial files written on the way."""

    outside: list[bytes] = field(default_factory=list)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    numbers: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    entries: dict[int, dict[str, Any]] = field(default_factory=dict)
    trial_entries: dict[str, dict[str, Any]] = field(default_factory=dict)


def _member(line: bytes) -> tuple[str, dict[str, Any]]:
    """One `"key":{...},` document line."""
    try:
        member = orjson.loads(b"{" + line.rstrip(b",") + b"}")
    except orjson.JSONDecodeError:
        raise _NotLines from None
    if len(member) != 1:
        raise _NotLines
    [(key, doc)] = member.items()
    if not isinstance(doc, dict):
        raise _NotLines
    return key, doc


def _read(store: Store, lines: Iterator[bytes], *, seal_runs: bool) -> _Read:
    """Read the file a line at a time; finished runs (with `seal_runs`) go to their segments on the
    way, and the trials of ended studies to their files at their table's end."""
    read = _Read()
    outside, tables, numbers, seqs = read.outside, read.tables, read.numbers, read.seqs
    sealer = _Sealer(store)
    kept_runs: set[str] = set()
    line = next(lines, None)
    while line is not None:
        name = next((n for n, opener in _OPENERS if line.endswith(opener)), None)
        outside.append(line + (orjson.dumps("\0") + b":" + orjson.dumps(name) if name else b""))
        if name is None:
            line = next(lines, None)
            continue
        shelf = _Shelf(_active_studies(outside)) if name == "trials" else None
        table: dict[str, Any] = {}
        for doc_line in lines:
            if doc_line.startswith(b"}"):  # the table's closing line, which may open the next table
                break
            key, doc = _member(doc_line)
            if name == "runs" and key.isdigit():
                numbers.append(int(key))
                if isinstance(doc.get("seq"), int):
                    seqs.append(doc["seq"])
                if seal_runs and finished(doc):
                    sealer.add(key, doc)
                    continue
                kept_runs.add(str(doc.get("id")))
            if seal_runs and name == "events" and doc.get("run") not in kept_runs:
                continue  # a sealed run's: it is in that run's record
            if shelf is not None and shelf.take(doc, doc_line):
                continue
            table[key] = doc
        else:
            raise _NotLines  # the file ended inside a table
        if shelf is not None:
            read.trial_entries = shelf.settle(store, table)
        tables[name] = table
        line = doc_line
    sealer.flush()
    read.entries = sealer.entries
    return read


def _commit(store: Store, raw: dict[str, Any], read: _Read, layout: int | None) -> None:
    """Write the migrated catalog.json (the one commit point), keeping the old file as the backup."""
    entries, trial_entries = read.entries, read.trial_entries
    if layout is None and raw.get("segments") or raw.get("trial_segments"):
        raise _NotLines  # already had segments: only a whole parse merges with them
    meta_table = raw.get("meta") or {}
    meta = _counters(meta_table.get(str(META_ID), {}), read.numbers, read.seqs)
    state: dict[str, Any] = {name: {} for name in TABLES}
    state.update(raw)
    state["meta"] = {**meta_table, str(META_ID): meta}
    if layout is None:
        state["segments"] = {str(k + 1): entry for k, entry in sorted(entries.items())}
    state["trial_segments"] = {str(i): entry for i, (_, entry) in enumerate(sorted(trial_entries.items()), 1)}
    state = {name: state[name] for name in TABLES} | {k: v for k, v in state.items() if k not in TABLES}
    _keep_backup(store, layout)
    store._forget()
    store._save(state, {})
    for k, entry in entries.items():
        store.wrote(k, entry)
    for entry in trial_entries.values():
        store.wrote_trials(entry)
    store._committed()
