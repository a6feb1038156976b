"""The catalogue: the only code that reads or writes `catalog.json`.

`catalog.json` is a TinyDB file (tables `meta`, `runs`, `studies`, `trials`,
`events`) so a person or a script can read it with TinyDB alone. TinyDB itself
has no locking, caches query results and the next document id per process and
rewrites the whole file on each write, so two processes holding TinyDB objects
on one file corrupt it. This module therefore never lets TinyDB touch the file:

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

Run ids are "r<N>" and the TinyDB document id of a run is N.
"""

from __future__ import annotations

import datetime
import gc
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import orjson
from filelock import FileLock, Timeout
from tinydb import Query, TinyDB
from tinydb.storages import Storage
from tinydb.table import Document, Table

from engine.catalog_lines import Fragments, is_table, parse_lines, serialize
from engine.errors import BadInput, CatalogCorrupt, EngineUnavailable
from engine.types import TRANSITIONS, EpochRecord, RunEvent, RunState
from engine.workspace import FILE_MODE, Workspace, atomic_write

__all__ = ["CatalogLocked", "Store", "TABLES"]

TABLES = ("meta", "runs", "studies", "trials", "events")
_META_ID = 1
# The first bytes of the file, compared with what we last saw: they hold
# `{"meta":{"1":{"generation":N,...`, so any write by anyone changes them.
_HEAD_BYTES = 64
_PROTECTED_FIELDS = frozenset({"id", "state", "seq"})


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


def _json_default(obj: Any) -> Any:
    # numpy / torch scalars and small arrays end up in configs and metrics.
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _to_json(obj: Any, what: str) -> Any:
    """A deep, JSON-normalised copy of `obj` (so callers cannot alias our state)."""
    try:
        return orjson.loads(orjson.dumps(obj, default=_json_default))
    except TypeError as exc:
        raise TypeError(f"{what} cannot be stored in the catalogue: {exc}") from None


@contextmanager
def _gc_paused() -> Iterator[None]:
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


def _clone(obj: Any) -> Any:
    with _gc_paused():
        return orjson.loads(orjson.dumps(obj))


def _empty_state() -> dict[str, dict[str, Any]]:
    return {name: {} for name in TABLES}


def _run_number(run_id: str | int) -> int:
    """12, "12", "r12" -> 12."""
    if isinstance(run_id, int) and not isinstance(run_id, bool):
        number = run_id
    elif isinstance(run_id, str):
        text = run_id.strip()
        text = text[1:] if text[:1] in ("r", "R") else text
        number = int(text) if text.isdigit() and text.isascii() else -1
    else:
        number = -1
    if number < 1:
        raise BadInput(f"{run_id!r} is not a run id (expected r<number>, e.g. r12)")
    return number


def _run_state(value: RunState | str) -> RunState:
    try:
        return RunState(value)
    except ValueError:
        allowed = ", ".join(s.value for s in RunState)
        raise BadInput(f"unknown run state {value!r}; allowed: {allowed}") from None


def _event_doc(event: RunEvent | Mapping[str, Any], now: float) -> dict[str, Any]:
    raw = event.to_json() if isinstance(event, RunEvent) else dict(event)
    if "kind" not in raw or "message" not in raw:
        raise ValueError(f"an event needs 'kind' and 'message', got keys {sorted(raw)}")
    raw.setdefault("epoch", None)
    raw.setdefault("time", now)
    raw.pop("run", None)
    return _to_json(raw, "event")


def _epoch_doc(entry: EpochRecord | Mapping[str, Any]) -> dict[str, Any]:
    raw = entry.to_json() if isinstance(entry, EpochRecord) else dict(entry)
    return _to_json(raw, "epoch entry")


def _check_fields(fields: Mapping[str, Any]) -> None:
    bad = _PROTECTED_FIELDS.intersection(fields)
    if bad:
        raise ValueError(f"fields {sorted(bad)} cannot be set directly (state changes go through transition())")


def _check_priority(priority: Any) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise BadInput(f"priority must be a whole number, got {priority!r}")
    return priority


def _dispatch_key(doc: Mapping[str, Any]) -> tuple[int, int]:
    return (-int(doc.get("priority", 0)), int(doc.get("seq", 0)))


def _merge_trials(db: TinyDB, study: str, bodies: list[dict[str, Any]]) -> int:
    """Insert or update trial documents by number (only those that changed); returns how many did."""
    table = db.table("trials")
    existing = {int(t["number"]): t for t in table.search(Query().study == study)}
    changed = 0
    for body in bodies:
        old = existing.get(int(body["number"]))
        if old is None:
            table.insert(body)
        elif any(old.get(k) != v for k, v in body.items()):
            table.update(body, doc_ids=[old.doc_id])
        else:
            continue
        changed += 1
    return changed


class Store:
    """Locked, atomic access to the catalogue of one workspace.

    Safe to use from several threads and several processes at once. Unknown
    run ids raise `BadInput`; a state change that `engine.types.TRANSITIONS`
    does not allow raises `ValueError`; an unreadable file raises
    `CatalogCorrupt`; a lock held too long raises `CatalogLocked`.
    """

    def __init__(self, workspace: Workspace | str | os.PathLike[str], *, lock_timeout: float = 60.0) -> None:
        if not isinstance(workspace, Workspace):
            workspace = Workspace.resolve(workspace)
        self.workspace = workspace.ensure()
        self.path: Path = workspace.catalog_path
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

    # ---------------------------------------------------------------- file I/O

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
            head = f.read(_HEAD_BYTES)
            snap = self._snapshot
            if snap is not None and snap.key == key and snap.head == head:
                return snap.state
            f.seek(0)
            data, size = self._read_whole(f, st.st_size)
        state, fragments = self._parse(data, size, snap.fragments if snap is not None else {})
        self._snapshot = _Snapshot(key, bytes(data[:_HEAD_BYTES]), state, fragments)
        self._parses += 1
        return state

    def _read_whole(self, f: BinaryIO, expected: int) -> tuple[bytearray, int]:
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
        if not data[: min(size, _HEAD_BYTES)].strip() and not data[:size].strip():
            return _empty_state(), {}
        with _gc_paused():
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
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
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
        meta = meta_table.get(str(_META_ID), {})
        generation = int(meta.get("generation", 0)) + 1
        meta_table[str(_META_ID)] = {"generation": generation, **{k: v for k, v in meta.items() if k != "generation"}}
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
        self._snapshot = _Snapshot(key, data[:_HEAD_BYTES], state, fragments)

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
    def _transaction(self) -> Iterator[TinyDB]:
        """Exclusive read-modify-write of the whole catalogue."""
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
                    raise
            finally:
                self._file_lock.release()

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
        return _clone(records)

    # ----------------------------------------------------------------- helpers

    def _meta(self, db: TinyDB) -> dict[str, Any]:
        doc = db.table("meta").get(doc_id=_META_ID)
        return dict(doc) if doc is not None else {}

    def _set_meta(self, db: TinyDB, **fields: Any) -> None:
        db.table("meta").upsert(Document(fields, doc_id=_META_ID))

    def _require_run(self, runs: Table, number: int) -> Document:
        doc = runs.get(doc_id=number)
        if doc is None:
            raise BadInput(f"no run r{number} in {self.path}")
        return doc

    def _allocate(self, db: TinyDB, count: int) -> tuple[int, int]:
        """First run number and first seq for `count` new runs."""
        meta = self._meta(db)
        runs_raw = db.storage.read().get("runs", {})
        # Counters may be missing in a hand-made file; never go below what exists.
        number = max(int(meta.get("next_run", 1)), max(map(int, runs_raw), default=0) + 1)
        if "next_seq" in meta:
            seq = int(meta["next_seq"])
        else:
            seq = max((int(d.get("seq", 0)) for d in runs_raw.values()), default=0) + 1
        self._set_meta(db, next_run=number + count, next_seq=seq + count)
        return number, seq

    @staticmethod
    def _new_record(
        number: int,
        seq: int,
        now: float,
        *,
        preset: str,
        config: Mapping[str, Any],
        config_hash: str,
        priority: int = 0,
        device: str | None = None,
        study: str | None = None,
        trial: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Document:
        _check_fields(extra or {})
        record = {
            "id": f"r{number}",
            "preset": str(preset),
            "state": RunState.QUEUED.value,
            "priority": _check_priority(priority),
            "device": device,
            "config": _to_json(dict(config), "config"),
            "config_hash": str(config_hash),
            "created_at": now,
            "queued_at": now,
            "started_at": None,
            "finished_at": None,
            "history": [],
            "events": [],
            "error": None,
            "study": study,
            "trial": trial,
            "attempts": 0,
            "worker": None,
            "seq": seq,
        }
        if extra:
            record.update(_to_json(dict(extra), "run fields"))
        return Document(record, doc_id=number)

    def _apply_transition(
        self,
        db: TinyDB,
        number: int,
        new_state: RunState,
        *,
        error: str | None,
        fields: Mapping[str, Any],
        events: list[dict[str, Any]],
        now: float,
    ) -> dict[str, Any]:
        runs = db.table("runs")
        doc = self._require_run(runs, number)
        current = RunState(doc["state"])
        if new_state not in TRANSITIONS[current]:
            allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "nothing (final state)"
            raise ValueError(f"run r{number} cannot go from {current.value} to {new_state.value}; allowed: {allowed}")

        def apply(d: dict[str, Any]) -> None:
            d["state"] = new_state.value
            if new_state is RunState.QUEUED:
                d.update(queued_at=now, finished_at=None, error=None, worker=None)
            elif new_state is RunState.RUNNING:
                d["started_at"] = now
                d["attempts"] = int(d.get("attempts", 0)) + 1
            else:
                d[f"{new_state.value}_at"] = now
            if new_state.terminal:
                d["finished_at"] = now
            if error is not None:
                d["error"] = error
            elif new_state is RunState.FAILED and not d.get("error"):
                d["error"] = "failed without a recorded reason"
            d.update(fields)
            if events:
                d.setdefault("events", []).extend(events)

        runs.update(apply, doc_ids=[number])
        self._insert_events(db, number, events)
        return runs.get(doc_id=number)  # type: ignore[return-value]

    def _insert_events(self, db: TinyDB, number: int, events: list[dict[str, Any]]) -> None:
        if events:
            db.table("events").insert_multiple([{**e, "run": f"r{number}"} for e in events])

    def _mutate_run(
        self,
        run_id: str | int,
        transform: Callable[[dict[str, Any]], None],
        events: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        number = _run_number(run_id)
        with self._transaction() as db:
            runs = db.table("runs")
            self._require_run(runs, number)
            runs.update(transform, doc_ids=[number])
            self._insert_events(db, number, events or [])
            return _clone(runs.get(doc_id=number))

    # -------------------------------------------------------------------- runs

    def create_run(
        self,
        *,
        preset: str,
        config: Mapping[str, Any],
        config_hash: str,
        priority: int = 0,
        device: str | None = None,
        study: str | None = None,
        trial: int | None = None,
    ) -> dict[str, Any]:
        """Queue one run; returns its record (id "r<N>", state "queued")."""
        item = dict(
            preset=preset, config=config, config_hash=config_hash, priority=priority, device=device, study=study, trial=trial
        )
        return self.create_runs([item])[0]

    def create_runs(self, items: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Queue several runs in one write; each item takes `create_run`'s keywords."""
        if not items:
            return []
        with self._transaction() as db:
            number, seq = self._allocate(db, len(items))
            now = time.time()
            docs = [self._new_record(number + i, seq + i, now, **item) for i, item in enumerate(items)]
            db.table("runs").insert_multiple(docs)
            return _clone(docs)

    def get_run(self, run_id: str | int) -> dict[str, Any] | None:
        """The run's record ("r12", "12" or 12), or None if there is no such run."""
        number = _run_number(run_id)
        with self._reading() as (db, _):
            doc = db.table("runs").get(doc_id=number)
            return None if doc is None else _clone(doc)

    def list_runs(self, status: RunState | str | None = None, *, omit: Collection[str] = ()) -> list[dict[str, Any]]:
        """All runs (or those in state `status`), oldest enqueue first.

        `omit` drops fields from the copies (e.g. `("config",)` for a table
        view): at 10,000 runs most of the cost is copying what is returned.
        """
        wanted = None if status is None else _run_state(status).value
        with self._reading() as (db, fresh):
            runs = db.storage.read().get("runs", {}).values()
            selected = [d for d in runs if wanted is None or d.get("state") == wanted]
            selected.sort(key=lambda d: int(d.get("seq", 0)))
            if omit:
                dropped = frozenset(omit)
                with _gc_paused():
                    selected = [{k: v for k, v in d.items() if k not in dropped} for d in selected]
            return self._hand_out(selected, fresh)

    def queued(self) -> list[dict[str, Any]]:
        """Queued runs in dispatch order: priority descending, then enqueue order. Without their
        `history` and `events` (a requeued run's can be long; the engine reads the queue after
        every run)."""
        with self._reading() as (db, _):
            runs = db.storage.read().get("runs", {}).values()
            selected = [{k: v for k, v in d.items() if k not in ("history", "events")}
                        for d in runs if d.get("state") == RunState.QUEUED.value]
            selected.sort(key=_dispatch_key)
            return _clone(selected)

    def transition(
        self,
        run_id: str | int,
        new_state: RunState | str,
        *,
        error: str | None = None,
        add_events: list[RunEvent | Mapping[str, Any]] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Move a run to `new_state` if TRANSITIONS allows it (ValueError if not).

        Stamps `started_at` (running), `<state>_at` and, for final states,
        `finished_at`; re-queueing clears `finished_at`, `error` and `worker`;
        each start increments `attempts`. `error` is the failure reason;
        `add_events` are appended in the same write; `fields` are stored as is.
        """
        target = _run_state(new_state)
        _check_fields(fields)
        now = time.time()
        extra = _to_json(fields, "run fields")
        events = [_event_doc(e, now) for e in add_events or ()]
        number = _run_number(run_id)
        with self._transaction() as db:
            doc = self._apply_transition(db, number, target, error=error, fields=extra, events=events, now=now)
            return _clone(doc)

    def update_run(self, run_id: str | int, **fields: Any) -> dict[str, Any]:
        """Set fields on a run (not id, state or seq); returns the new record."""
        _check_fields(fields)
        extra = _to_json(fields, "run fields")
        return self._mutate_run(run_id, lambda d: d.update(extra))

    def record_epoch(self, run_id: str | int, entry: EpochRecord | Mapping[str, Any]) -> dict[str, Any]:
        """Append one epoch summary to the run's `history`."""
        return self.record_epoch_and_events(run_id, entry, [])

    def add_event(self, run_id: str | int, event: RunEvent | Mapping[str, Any]) -> dict[str, Any]:
        """Append an event (kind, epoch, message) to the run and the `events` table."""
        return self.record_epoch_and_events(run_id, None, [event])

    def record_epoch_and_events(
        self,
        run_id: str | int,
        entry: EpochRecord | Mapping[str, Any] | None,
        events: list[RunEvent | Mapping[str, Any]],
    ) -> dict[str, Any]:
        """One epoch's summary and its events in a single write."""
        now = time.time()
        history_entry = None if entry is None else _epoch_doc(entry)
        event_docs = [_event_doc(e, now) for e in events]

        def apply(d: dict[str, Any]) -> None:
            if history_entry is not None:
                d.setdefault("history", []).append(history_entry)
            if event_docs:
                d.setdefault("events", []).extend(event_docs)

        return self._mutate_run(run_id, apply, event_docs)

    # ------------------------------------------------------------------- queue

    def move_top(self, run_id: str | int) -> dict[str, Any]:
        """Make a queued run the next to dispatch (priority above every other queued run)."""
        number = _run_number(run_id)
        with self._transaction() as db:
            runs = db.table("runs")
            doc = self._require_run(runs, number)
            if doc["state"] != RunState.QUEUED.value:
                raise BadInput(f"r{number} is {doc['state']}; only queued runs can be moved")
            waiting = sorted(runs.search(Query().state == RunState.QUEUED.value), key=_dispatch_key)
            if waiting[0].doc_id != number:
                top = max(int(d.get("priority", 0)) for d in waiting) + 1
                runs.update({"priority": top}, doc_ids=[number])
            return _clone(runs.get(doc_id=number))

    def set_priority(self, run_id: str | int, priority: int) -> dict[str, Any]:
        """Set a run's priority (higher is dispatched first)."""
        value = _check_priority(priority)
        return self._mutate_run(run_id, lambda d: d.update(priority=value))

    def cancel_queued(self, run_id: str | int) -> dict[str, Any]:
        """Cancel a run that has not started (a running run is stopped by the engine)."""
        number = _run_number(run_id)
        now = time.time()
        with self._transaction() as db:
            doc = self._require_run(db.table("runs"), number)
            if doc["state"] != RunState.QUEUED.value:
                raise BadInput(f"r{number} is {doc['state']}, not queued; only queued runs can be cancelled here")
            event = _event_doc({"kind": "cancelled", "message": "cancelled while queued"}, now)
            doc = self._apply_transition(db, number, RunState.CANCELLED, error=None, fields={}, events=[event], now=now)
            return _clone(doc)

    def clear_queue(self) -> int:
        """Cancel every queued run; returns how many were cancelled."""
        now = time.time()
        with self._transaction() as db:
            waiting = db.table("runs").search(Query().state == RunState.QUEUED.value)
            for doc in waiting:
                event = _event_doc({"kind": "cancelled", "message": "cancelled when the queue was cleared"}, now)
                self._apply_transition(
                    db, doc.doc_id, RunState.CANCELLED, error=None, fields={}, events=[event], now=now
                )
            return len(waiting)

    # --------------------------------------------------------- studies, trials

    def upsert_study(self, name: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Create or update the study `name`: fields in `doc` replace stored ones, others stay."""
        body = _to_json(dict(doc), "study")
        body["name"] = name
        return self._upsert(db_table="studies", cond=Query().name == name, body=body)

    def get_study(self, name: str) -> dict[str, Any] | None:
        with self._reading() as (db, _):
            doc = db.table("studies").get(Query().name == name)
            return None if doc is None else _clone(doc)

    def list_studies(self) -> list[dict[str, Any]]:
        """All studies, by name."""
        with self._reading() as (db, _):
            return _clone(sorted(db.table("studies").all(), key=lambda d: str(d.get("name", ""))))

    def upsert_trial(self, study: str, number: int, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Create or update trial `number` of `study` (same merge rule as studies)."""
        body = _to_json(dict(doc), "trial")
        body.update(study=study, number=number)
        q = Query()
        return self._upsert(db_table="trials", cond=(q.study == study) & (q.number == number), body=body)

    def upsert_trials(self, study: str, docs: list[Mapping[str, Any]]) -> int:
        """Create or update many trials of `study` in one write (each doc has a `number`);
        returns how many changed. Nothing is written when none did."""
        bodies = [{**_to_json(dict(d), "trial"), "study": study} for d in docs]
        with self._transaction() as db:
            return _merge_trials(db, study, bodies)

    def sync_study(self, name: str, doc: Mapping[str, Any], trials: list[Mapping[str, Any]]) -> dict[str, Any]:
        """A study summary and its trials in one write (the tuning mirror's per-trial update)."""
        body = _to_json(dict(doc), "study")
        body["name"] = name
        bodies = [{**_to_json(dict(d), "trial"), "study": name} for d in trials]
        with self._transaction() as db:
            _merge_trials(db, name, bodies)
            studies = db.table("studies")
            cond = Query().name == name
            old_doc = studies.get(cond)
            if old_doc is None or any(old_doc.get(k) != v for k, v in body.items()):
                studies.upsert(body, cond)
            return _clone(studies.get(cond))

    def list_trials(self, study: str) -> list[dict[str, Any]]:
        """The study's trials, by number."""
        with self._reading() as (db, _):
            found = db.table("trials").search(Query().study == study)
            return _clone(sorted(found, key=lambda d: int(d.get("number", 0))))

    def _upsert(self, *, db_table: str, cond: Any, body: dict[str, Any]) -> dict[str, Any]:
        with self._transaction() as db:
            table = db.table(db_table)
            existing = table.get(cond)
            # Summaries get re-sent unchanged often; skip the whole-file write then.
            if existing is None or any(existing.get(k) != v for k, v in body.items()):
                table.upsert(body, cond)
            return _clone(table.get(cond))

    # ------------------------------------------------------------------ events

    def events(self, since: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Events (each with `run`), oldest first; only those after `since`; the last `limit`."""
        with self._reading() as (db, fresh):
            raw = db.storage.read().get("events", {})
            found = [(float(d.get("time", 0.0)), int(k), d) for k, d in raw.items()]
            if since is not None:
                found = [f for f in found if f[0] > since]
            found.sort(key=lambda f: (f[0], f[1]))
            if limit is not None:
                found = found[-limit:] if limit > 0 else []
            return self._hand_out([d for _, _, d in found], fresh)

    # ----------------------------------------------------------------- version

    def version(self) -> tuple[Any, ...]:
        """A cheap token that changes whenever the catalogue file changes."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, f.read(_HEAD_BYTES))
        except FileNotFoundError:
            return ()
