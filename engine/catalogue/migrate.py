"""The one-time move of a catalog.json of an older layout (every run in it) to the working set plus segments.

One job: migrate a workspace the first time a `Store` of this version opens it. Every finished
run moves to its segment (`trialdeck.engine.catalogue.segments`) with its whole record; catalog.json
keeps the unfinished runs, the studies, the trials, the events of the runs it keeps, and gains
the registry of segments and `meta.layout` = 2.

Invariants:
- Nothing is lost: a run's events stay in its record, and before catalog.json is replaced the old
  file is kept as `catalog.json.v1.bak` (a hard link: no copy), which TinyDB reads as before.
- One commit point: the segment files are written first and count only once the new catalog.json
  names them (one atomic replace). A kill -9 at any moment leaves the old catalog.json whole and
  in use; the next open starts the migration again, and files of the killed attempt are removed.
- A file in our line layout (one document per line: what trialdeck has written since it had
  segments in mind) is read a line at a time, so a 200 MB catalogue never sits in memory whole;
  any other file (TinyDB's own one-line layout, a hand edit) is parsed whole, and a file that does
  not parse is reported exactly as any read reports it (`CatalogCorrupt`), untouched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from trialdeck.engine.catalogue import sealing
from trialdeck.engine.catalogue.file import META_ID, TABLES, gc_paused, layout_of
from trialdeck.engine.catalogue.lines import is_table
from trialdeck.engine.catalogue.segments import finished, segment_of

if TYPE_CHECKING:
    from trialdeck.engine.catalogue.store import Store

__all__ = ["BACKUP_SUFFIX", "migrate"]

BACKUP_SUFFIX = ".v1.bak"
"""catalog.json + this: the catalogue as it was before the migration."""
_GROWING = ("runs", "trials", "events")


class _NotLines(Exception):
    """The file is not in the line layout: parse it whole instead."""


def backup_path(store: Store) -> Path:
    return store.path.with_name(store.path.name + BACKUP_SUFFIX)


def migrate(store: Store) -> None:
    """Move `store`'s catalogue to layout 2, unless another process did meanwhile."""
    with store._locked():
        if layout_of(store.path) is not None:
            return
        try:
            _streamed(store)
        except _NotLines:
            _whole(store)


def _keep_backup(store: Store) -> None:
    """catalog.json.v1.bak: another name for the file about to be replaced (once: a first backup is kept)."""
    target = backup_path(store)
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


def _whole(store: Store) -> None:
    """Migrate through an ordinary transaction: the file parsed whole (CatalogCorrupt if it does not parse)."""
    with store._edit() as db:
        runs = sealing._raw(db, "runs")
        numbers = [int(key) for key in runs if key.isdigit()]
        seqs = [int(d.get("seq") or 0) for d in runs.values() if isinstance(d.get("seq"), int)]
        meta = _counters(store._meta(db), numbers, seqs)
        store._set_meta(db, **meta)  # always a write: it stamps the layout
        sealing.seal(store, db, [int(key) for key, d in runs.items() if key.isdigit() and finished(d)])
        _keep_backup(store)


# ----------------------------------------------------------------------------- our line layout, streamed


def _lines(f: IO[bytes]) -> Iterator[bytes]:
    for line in f:
        yield line[:-1] if line.endswith(b"\n") else line


def _streamed(store: Store) -> None:
    """Migrate a file in the line layout reading one document at a time; _NotLines if it is not one."""
    try:
        f = open(store.path, "rb")
    except FileNotFoundError:
        raise _NotLines from None
    with f, gc_paused():
        read = _read(store, _lines(f))
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
    _commit(store, raw, read)


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


@dataclass
class _Read:
    """What a streamed read found: the lines outside the growing tables (each table replaced by a
    placeholder), the kept documents of each growing table, every run number and seq, and the
    segments written on the way."""

    outside: list[bytes] = field(default_factory=list)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    numbers: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    entries: dict[int, dict[str, Any]] = field(default_factory=dict)


def _read(store: Store, lines: Iterator[bytes]) -> _Read:
    """Read the file a line at a time; finished runs go to their segments on the way."""
    read = _Read()
    outside, tables, numbers, seqs = read.outside, read.tables, read.numbers, read.seqs
    sealer = _Sealer(store)
    kept_runs: set[str] = set()
    for line in lines:
        name = next((n for n in _GROWING if line.endswith(b'"' + n.encode() + b'":{')), None)
        outside.append(line + (orjson.dumps("\0") + b":" + orjson.dumps(name) if name else b""))
        if name is None:
            continue
        table: dict[str, Any] = {}
        for doc_line in lines:
            if doc_line.startswith(b"}"):  # the table's closing line
                outside.append(doc_line)
                break
            try:
                member = orjson.loads(b"{" + doc_line.rstrip(b",") + b"}")
            except orjson.JSONDecodeError:
                raise _NotLines from None
            if len(member) != 1:
                raise _NotLines
            [(key, doc)] = member.items()
            if not isinstance(doc, dict):
                raise _NotLines
            if name == "runs" and key.isdigit():
                numbers.append(int(key))
                if isinstance(doc.get("seq"), int):
                    seqs.append(doc["seq"])
                if finished(doc):
                    sealer.add(key, doc)
                    continue
                kept_runs.add(str(doc.get("id")))
            if name == "events" and doc.get("run") not in kept_runs:
                continue  # a sealed run's: it is in that run's record
            table[key] = doc
        else:
            raise _NotLines  # the file ended inside a table
        tables[name] = table
    sealer.flush()
    read.entries = sealer.entries
    return read


def _commit(store: Store, raw: dict[str, Any], read: _Read) -> None:
    """Write the migrated catalog.json (the one commit point), keeping the old file as the backup."""
    entries = read.entries
    if raw.get("segments"):
        raise _NotLines  # already had segments: only a whole parse merges with them
    meta_table = raw.get("meta") or {}
    meta = _counters(meta_table.get(str(META_ID), {}), read.numbers, read.seqs)
    state: dict[str, Any] = {name: {} for name in TABLES}
    state.update(raw)
    state["meta"] = {**meta_table, str(META_ID): meta}
    state["segments"] = {str(k + 1): entry for k, entry in sorted(entries.items())}
    state = {name: state[name] for name in TABLES} | {k: v for k, v in state.items() if k not in TABLES}
    _keep_backup(store)
    store._forget()
    store._save(state, {})
    for k, entry in entries.items():
        store.wrote(k, entry)
    store._committed()
