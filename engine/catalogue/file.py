"""`catalog.json` on disk: locked, atomic writes and incremental re-reads.

`CatalogFile` is the file half of `trialdeck.engine.catalogue.store.Store` (which adds the record
API on top). `catalog.json` is a TinyDB file (tables `meta`, `runs`,
`studies`, `trials`, `events`) so a person or a script can read it with TinyDB
alone. TinyDB itself has no locking, caches query results and the next
document id per process and rewrites the whole file on each write, so two
processes holding TinyDB objects on one file corrupt it. TinyDB therefore
never touches the file:

- Every write is a transaction under an exclusive `filelock` on
  `catalog.json.lock`: read the file fresh, run the operation with a throwaway
  TinyDB over an in-memory storage, and if anything changed write the whole
  JSON atomically (temp file, fsync, `os.replace`). Ids are allocated from a
  counter in the `meta` table under that lock, so they are unique across
  processes and never reused.
- Reads take no file lock: `os.replace` means a reader sees the old or the new
  file, never a mix. A fresh TinyDB per call means no stale query cache.
- Parsing is skipped when the file is the one this process last read or wrote:
  same (device, inode, mtime, size) and same first bytes, which hold a
  generation counter bumped on every write (inodes get reused, mtimes are
  coarse; the counter is not). `meta` is therefore always the first table.
- The file is compact JSON except that the tables that grow (`runs`, `trials`,
  `events`) hold one document per line:
  `{"meta":{..},"runs":{\n"1":{..},\n"2":{..}\n},"studies":{..},...}`.
  Newlines between members are plain JSON whitespace, and orjson never writes
  one inside a document, so TinyDB and `json.load` read the file as before.
- A file that changed is parsed incrementally. This process keeps each
  growing table's lines as it last read or wrote them, in chunks of about
  64 KB, with the documents they parsed to. A chunk found again byte for byte
  (one `startswith`) keeps its documents; around a change, lines are compared
  one by one and only changed or new lines are parsed, plus the small tables.
  With 10,000 runs (43 MB) that is ~10 ms instead of ~300 ms for a whole
  parse. A file in another layout (one line, as TinyDB or older versions write
  it, or edited by hand) is parsed whole, and a file that does not parse is
  reported exactly as by a whole parse.
- Before each replace the previous good file is hard-linked to
  `catalog.json.bak`. A file that does not parse is never replaced: every call
  raises `CatalogCorrupt` naming it, after saving a copy next to it.
- A writer re-encodes only the documents its transactions changed (TinyDB
  reports their ids) and reuses the cached lines of the others (its own, or
  what it read); the file is still rewritten whole, as TinyDB's format requires.
- The cache (parsed state, and the chunks of lines) is mutated only inside a
  transaction, which TinyDB does in place: a transaction that fails after
  changing anything forgets the whole cache. Records handed out are copies
  (or, on a Store's first read, the parsed objects themselves with the cache
  forgotten: see `_reading`), so no object is ever shared between the cache
  and a caller; callers may mutate them freely. One lock (`_mutex`) covers
  the cache, so a Store may be shared by threads.
"""

from __future__ import annotations

import datetime
import gc
import io
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import orjson
from filelock import FileLock, Timeout
from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Table

from trialdeck.engine.catalogue.lines import Fragments, is_table, parse_lines, serialize
from trialdeck.engine.errors import CatalogCorrupt, EngineUnavailable
from trialdeck.engine.workspace import FILE_MODE, atomic_write

__all__ = ["CatalogFile", "CatalogLocked", "TABLES", "META_ID", "HEAD_BYTES", "clone", "gc_paused", "layout_of"]

TABLES = ("meta", "segments", "trial_segments", "runs", "studies", "trials", "events")
"""catalog.json's tables, in file order: `segments` and `trial_segments` (which files hold the sealed
runs and the sealed trials) come before `runs` so that a reader streaming the file knows them first."""
META_ID = 1
"""The document id of the one `meta` record (counters and the generation)."""
# The first bytes of the file, compared with what we last saw: they hold
# `{"meta":{"1":{"generation":N,...`, so any write by anyone changes them.
HEAD_BYTES = 64


_LAYOUT = re.compile(rb'^\s*\{\s*"meta"\s*:\s*\{\s*"1"\s*:\s*\{\s*"generation"\s*:\s*\d+\s*,\s*"layout"\s*:\s*(\d+)')


def layout_of(path: Path) -> int | None:
    """The layout a catalogue file says it has (`meta`'s `layout`, right after the generation, as
    `CatalogFile` writes it and TinyDB keeps it); None when it says none (an older file), 0 when
    there is no file or it is empty."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except FileNotFoundError:
        return 0
    if not head.strip():
        return 0
    match = _LAYOUT.match(head)
    return int(match.group(1)) if match else None


class CatalogLocked(EngineUnavailable):
    """Another process held the catalogue lock for longer than the timeout."""


class _DictStorage(Storage):
    """TinyDB storage over a dict we own; records what TinyDB changed."""

    def __init__(self, data: dict[str, dict[str, Any]]) -> None:
        self.data = data
        self.dirty = False
        # Set before TinyDB changes anything, so a failure midway is noticed.
        self.mutating = False
        # table -> ids of documents changed in this transaction (None: all).
        self.touched: dict[str, set[str] | None] = {}

    def read(self) -> dict[str, dict[str, Any]]:
        return self.data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        self.data = data
        self.dirty = True

    def touch(self, table: str, doc_ids: Iterable[int] | None) -> None:
        if doc_ids is None:
            self.touched[table] = None
            return
        ids = self.touched.setdefault(table, set())
        if ids is not None:
            ids.update(str(i) for i in doc_ids)


class _TrackedTable(Table):
    """A TinyDB table that reports which documents each write changed.

    TinyDB updates documents in place, so object identity cannot tell a
    changed document from an unchanged one; the ids these methods return can.
    """

    def _touch(self, doc_ids: Iterable[int] | None) -> None:
        self._storage.touch(self.name, doc_ids)  # type: ignore[attr-defined]

    def _update_table(self, updater: Callable[[dict[int, Mapping[str, Any]]], None]) -> None:
        self._storage.mutating = True  # type: ignore[attr-defined]
        super()._update_table(updater)

    def insert(self, document: Mapping[str, Any]) -> int:
        doc_id = super().insert(document)
        self._touch([doc_id])
        return doc_id

    def insert_multiple(self, documents: Iterable[Mapping[str, Any]]) -> list[int]:
        doc_ids = super().insert_multiple(documents)
        self._touch(doc_ids)
        return doc_ids

    def update(self, fields: Any, cond: Any = None, doc_ids: Iterable[int] | None = None) -> list[int]:
        changed = super().update(fields, cond, doc_ids)
        self._touch(changed)
        return changed

    def update_multiple(self, updates: Any) -> list[int]:
        changed = super().update_multiple(updates)
        self._touch(changed)
        return changed

    def upsert(self, document: Mapping[str, Any], cond: Any = None) -> list[int]:
        changed = super().upsert(document, cond)
        self._touch(changed)
        return changed

    def remove(self, cond: Any = None, doc_ids: Iterable[int] | None = None) -> list[int]:
        removed = super().remove(cond, doc_ids)
        self._touch(removed)
        return removed

    def truncate(self) -> None:
        super().truncate()
        self._touch(None)


class _CatalogDB(TinyDB):
    table_class = _TrackedTable


@dataclass
class _Snapshot:
    key: tuple[int, int, int, int]
    head: bytes
    state: dict[str, dict[str, Any]]
    fragments: Fragments = field(default_factory=dict)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Build many objects without the cyclic GC scanning them as they appear.

    Parsing or copying 10,000 runs creates about a million dicts, lists and
    floats; the generation scans they trigger (which also walk the cached
    catalogue) measured 5-10x the cost of the parse itself. JSON trees hold no
    reference cycles, so nothing is lost by collecting later.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def clone(obj: Any) -> Any:
    with gc_paused():
        return orjson.loads(orjson.dumps(obj))


def _empty_state() -> dict[str, dict[str, Any]]:
    return {name: {} for name in TABLES}


class CatalogFile:
    """One catalogue file and this process's cache of it. Thread-safe (`_mutex`)."""

    layout: int | None = None
    """Written into `meta` right after the generation on every save (None: nothing)."""

    def __init__(self, path: Path, *, lock_timeout: float = 60.0) -> None:
        self.path = path
        self.backup_path: Path = self.path.with_name(self.path.name + ".bak")
        self.lock_path: Path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = lock_timeout
        self._file_lock = FileLock(str(self.lock_path), timeout=lock_timeout, mode=FILE_MODE)
        # One lock for the in-process cache: a write transaction mutates the
        # cached state in place, so readers in other threads must wait.
        self._mutex = threading.RLock()
        self._snapshot: _Snapshot | None = None
        self._parses = 0
        self._buffer = bytearray()
        self._swept = False

    def version(self) -> tuple[Any, ...]:
        """A cheap token that changes whenever the catalogue file changes."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, f.read(HEAD_BYTES))
        except FileNotFoundError:
            return ()

    def _load(self) -> dict[str, dict[str, Any]]:
        """The current catalogue, parsed only if the file changed since last time.

        The result is this process's cache: mutate it only inside a
        transaction, and never hand its objects to a caller.
        """
        try:
            f = open(self.path, "rb", buffering=0)
        except FileNotFoundError:
            self._snapshot = None
            return _empty_state()
        with f:
            # fstat and read the same open file: the name may be replaced meanwhile.
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            head = f.read(HEAD_BYTES)
            snap = self._snapshot
            if snap is not None and snap.key == key and snap.head == head:
                return snap.state
            f.seek(0)
            data, size = self._read_whole(f, st.st_size)
        state, fragments = self._parse(data, size, snap.fragments if snap is not None else {})
        self._snapshot = _Snapshot(key, bytes(data[:HEAD_BYTES]), state, fragments)
        self._parses += 1
        return state

    def _read_whole(self, f: io.RawIOBase, expected: int) -> tuple[bytearray, int]:
        """The open file's bytes, read into this Store's reusable buffer: (buffer, length).

        A new bytes object per read costs more than the read itself once the
        file passes 32 MB (glibc maps such allocations afresh and every page
        faults): measured 16 ms against 2 ms for 36 MB.
        """
        buf = self._buffer
        if len(buf) <= expected:
            # A new one, never resized: a memoryview of the old may still be alive in a traceback.
            buf = self._buffer = bytearray(expected + expected // 4 + 65536)
        view = memoryview(buf)
        size = 0
        while got := f.readinto(view[size:]):
            size += got
            if size == len(buf):  # grown since fstat (someone writing in place): read the rest as it comes
                rest = f.read()
                return buf + rest, size + len(rest)
        return buf, size

    def _parse(self, data: bytearray, size: int, previous: Fragments) -> tuple[dict[str, dict[str, Any]], Fragments]:
        """The tables in `data[:size]`, and the fragment cache for the next parse (see `parse_lines`)."""
        if not data[: min(size, HEAD_BYTES)].strip() and not data[:size].strip():
            return _empty_state(), {}
        with gc_paused():
            parsed = parse_lines(data, size, previous)
            raw, fragments = parsed if parsed is not None else (self._parse_whole(bytes(data[:size])), {})
        # Keep `meta` first so the generation counter sits in the head bytes.
        state = {name: raw.pop(name, {}) for name in TABLES}
        state.update(raw)
        return state, fragments

    def _parse_whole(self, data: bytes) -> dict[str, Any]:
        """One `loads` of the whole file, whatever its layout; raises `CatalogCorrupt` if it is not a catalogue."""
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self._corrupt(data, f"not valid JSON: {exc}")
        if not isinstance(raw, dict):
            self._corrupt(data, "not a TinyDB catalogue (top level is not an object)")
        for name, table in raw.items():
            if not is_table(table):
                self._corrupt(data, f"not a TinyDB catalogue (table {name!r} is not an object of documents)")
        return raw

    def _corrupt(self, data: bytes, reason: str) -> NoReturn:
        copy = self._save_corrupt_copy(data)
        if self.backup_path.exists():
            restore = f"{self.backup_path} holds the last good state"
        else:
            restore = f"there is no {self.backup_path.name} to restore from"
        reason = " ".join(reason.split())
        raise CatalogCorrupt(
            f"{self.path} is corrupt ({reason}); it was left untouched, "
            f"a copy was saved as {copy}, and {restore}"
        ) from None

    def _save_corrupt_copy(self, data: bytes) -> Path:
        # Every call would otherwise add a copy; reuse one with the same bytes.
        for existing in sorted(self.path.parent.glob(self.path.name + ".corrupt-*")):
            try:
                if existing.stat().st_size == len(data) and existing.read_bytes() == data:
                    return existing
            except OSError:
                continue
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        copy = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        suffix = 1
        while copy.exists():
            copy = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{suffix}")
            suffix += 1
        atomic_write(copy, data)
        return copy

    def _save(self, state: dict[str, dict[str, Any]], touched: dict[str, set[str] | None]) -> None:
        snap = self._snapshot
        fragments = snap.fragments if snap is not None and snap.state is state else {}
        meta_table = state.setdefault("meta", {})
        meta = meta_table.get(str(META_ID), {})
        generation = int(meta.get("generation", 0)) + 1
        stamp: dict[str, Any] = {"generation": generation}
        if self.layout is not None:  # right after the generation: inside the bytes `layout_of` reads
            stamp["layout"] = self.layout
        meta_table[str(META_ID)] = {**stamp, **{k: v for k, v in meta.items() if k not in stamp}}
        if next(iter(state)) != "meta":
            state = {"meta": state.pop("meta"), **state}
        data = serialize(state, fragments, touched)
        try:
            atomic_write(self.path, data, backup=self.backup_path)
        except BaseException:
            # The transaction changed the cached state in place but the file kept the old
            # version: forget the cache so the next read sees what is really on disk.
            self._snapshot = None
            raise
        st = os.stat(self.path)  # ours: we hold the lock
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        self._snapshot = _Snapshot(key, data[:HEAD_BYTES], state, fragments)

    def _sweep_temp_files(self) -> None:
        """Remove temp files left by a writer killed mid-write (we hold the lock)."""
        for pattern in (f".{self.path.name}.tmp-*", f".{self.backup_path.name}.tmp-*"):
            for leftover in self.path.parent.glob(pattern):
                try:
                    leftover.unlink()
                except FileNotFoundError:
                    pass
        self._swept = True

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The catalogue's exclusive file lock (and this object's mutex) for a read-modify-write."""
        with self._mutex:
            try:
                self._file_lock.acquire()
            except Timeout:
                raise CatalogLocked(
                    f"could not lock {self.lock_path} within {self.lock_timeout:g} s: another trialdeck "
                    f"process is holding it; try again, or see which one with `fuser {self.lock_path}`"
                ) from None
            try:
                if not self._swept:
                    self._sweep_temp_files()
                yield
            finally:
                self._file_lock.release()

    @contextmanager
    def _transaction(self) -> Iterator[TinyDB]:
        """Exclusive read-modify-write of the whole catalogue."""
        with self._locked(), self._edit() as db:
            yield db

    @contextmanager
    def _edit(self) -> Iterator[TinyDB]:
        """Read-modify-write of the file; the caller holds `_locked()`. `_committed()` runs after a
        save (still under the lock), `_aborted()` when the body failed."""
        db = _CatalogDB(storage=_DictStorage, data=self._load())
        storage: _DictStorage = db.storage  # type: ignore[assignment]
        try:
            yield db
            if storage.dirty:
                self._save(storage.data, storage.touched)
        except BaseException:
            # Refused before any change (unknown run, illegal
            # transition): the cache is intact. Otherwise it may be
            # half-modified: forget it.
            if storage.mutating:
                self._snapshot = None
            self._aborted()
            raise
        self._committed()

    def _committed(self) -> None:
        """After a transaction's write reached the disk (under the lock): subclasses clean up."""

    def _aborted(self) -> None:
        """After a transaction failed (under the lock): subclasses undo what the file does not hold."""

    @contextmanager
    def _reading(self) -> Iterator[tuple[TinyDB, bool]]:
        """A TinyDB over the current state, and whether its objects may be handed out as they are.

        They may when this Store's first read parsed them just now: a one-shot
        command (`runs list --json`) then skips a copy that would cost as much
        as the parse, and a long-lived process (engine, worker, TUI) pays one
        extra full parse, once, and keeps its cache afterwards. (Forgetting the
        cache after every such read would make every later read a full parse.)
        """
        with self._mutex:
            before = self._snapshot
            state = self._load()
            fresh = self._snapshot is None or (self._snapshot is not before and self._parses == 1)
            yield _CatalogDB(storage=_DictStorage, data=state), fresh

    def _forget(self) -> None:
        self._snapshot = None

    def _hand_out(self, records: list[Any], fresh: bool) -> list[Any]:
        """Records the caller owns: the parsed objects themselves if fresh (see `_reading`), else copies."""
        if fresh:
            self._forget()
            return records
        return clone(records)
