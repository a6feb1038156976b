"""The catalogue's records: runs, studies, trials and events, and their rules.

The only code that reads or writes the catalogue: `catalog.json` (the file itself: locking,
atomic writes, incremental re-reads, corruption, is `trialdeck.engine.catalogue.file`, which
`Store` extends) and the segment files of sealed runs and trials (`segments`, moved by `sealing`
and `sealed_trials`). catalog.json holds the working set (unfinished runs, the newest finished
ones, studies, the trials of studies that want more and of the latest that ended, recent events)
and the registries of segments; a finished run or an ended study's trials past that live in
their files, and every method here finds them there as well. Records handed out are copies (or,
on a Store's first read, the parsed objects themselves with the cache forgotten), so callers may
mutate them freely.

Run ids are "r<N>" and the TinyDB document id of a run is N, in catalog.json and in a segment.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import orjson
from tinydb import Query, TinyDB
from tinydb.table import Document

from trialdeck.engine.catalogue import sealed_trials, sealing, views
from trialdeck.engine.catalogue.file import META_ID, TABLES, CatalogFile, CatalogLocked, clone, gc_paused, layout_of
from trialdeck.engine.catalogue.segments import Segments, segment_of
from trialdeck.engine.errors import BadInput
from trialdeck.engine.types import (
    ACTIVE_STUDY_STATES,
    TRANSITIONS,
    UNFINISHED_STATES,
    EpochRecord,
    RunEvent,
    RunRecord,
    RunState,
    StudyRecord,
)
from trialdeck.engine.workspace import Workspace

__all__ = ["CatalogLocked", "LAYOUT", "SEGMENTS_DIR", "Store", "TABLES", "check_tags"]

LAYOUT = 3
"""catalog.json's layout (`meta.layout`): 2 = the working set plus segments of runs, 3 = and trial
files of ended studies. Files without it, or with 2, are migrated once (`trialdeck.engine.catalogue.migrate`)."""
SEGMENTS_DIR = "segments"

_PROTECTED_FIELDS = frozenset({"id", "state", "seq"})
TAG_RE = re.compile(r"^[^\s,]{1,64}$")
NOTE_LIMIT = 10_000
"""Characters a run's note may hold (it is stored in the catalogue, read whole by every list)."""


def check_tags(tags: Collection[Any], what: str = "tag") -> list[str]:
    """Tags as given, each once, in order; BadInput for one a person could not type back."""
    out: list[str] = []
    for tag in [tags] if isinstance(tags, str) else tags:
        if not isinstance(tag, str) or not TAG_RE.match(tag):
            raise BadInput(f"{what} {tag!r}: allowed: 1 to 64 characters without spaces or commas, e.g. baseline or lr-sweep")
        if tag not in out:
            out.append(tag)
    return out


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


def _table(db: TinyDB, name: str) -> dict[str, dict[str, Any]]:
    """A table's raw documents by id, as the storage holds them (no Document objects made)."""
    return (db.storage.read() or {}).get(name, {})


def _omitted(docs: list[dict[str, Any]], omit: Collection[str]) -> list[dict[str, Any]]:
    """Shallow copies without the `omit` fields (or the documents themselves, with none)."""
    if not omit:
        return docs
    dropped = frozenset(omit)
    with gc_paused():
        return [{k: v for k, v in d.items() if k not in dropped} for d in docs]


def _dispatch_key(doc: Mapping[str, Any]) -> tuple[int, int]:
    return (-int(doc.get("priority", 0)), int(doc.get("seq", 0)))


class Store(CatalogFile):
    """Locked, atomic access to the catalogue of one workspace.

    Safe to use from several threads and several processes at once. Unknown
    run ids raise `BadInput`; a state change that `trialdeck.engine.types.TRANSITIONS`
    does not allow raises `ValueError`; an unreadable file raises
    `CatalogCorrupt`; a lock held too long raises `CatalogLocked`.
    """

    layout = LAYOUT

    def __init__(self, workspace: Workspace | str | os.PathLike[str], *, lock_timeout: float = 60.0) -> None:
        if not isinstance(workspace, Workspace):
            workspace = Workspace.resolve(workspace)
        self.workspace = workspace.ensure()
        super().__init__(workspace.catalog_path, lock_timeout=lock_timeout)
        self.segments = Segments(workspace.root / SEGMENTS_DIR)
        self._layout_checked = False
        self._segments_swept = False
        # Segment and trial file versions written by the open transaction: swept or undone when it ends.
        self._wrote: dict[int, dict[str, Any]] = {}
        self._wrote_trials: dict[str, dict[str, Any]] = {}
        self._briefs_made: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        """Run id -> (its working-set document as last read, its brief): `views.working` reuses it."""

    # ----------------------------------------------------------------- layout, transactions

    def _ensure_layout(self) -> None:
        """Migrate a catalogue in an older layout, once (the first call of this Store)."""
        if self._layout_checked:
            return
        found = layout_of(self.path)
        if found is None or 0 < found < LAYOUT:
            from trialdeck.engine.catalogue.migrate import migrate  # deferred: needed once per workspace

            migrate(self)
        self._layout_checked = True

    @contextmanager
    def _write(self) -> Iterator[TinyDB]:
        """A transaction that may also write segment versions (see `sealing`)."""
        self._ensure_layout()
        with self._transaction() as db:
            yield db

    @contextmanager
    def _read(self) -> Iterator[tuple[TinyDB, bool]]:
        self._ensure_layout()
        with self._reading() as found:
            yield found

    def wrote(self, k: int, entry: dict[str, Any]) -> None:
        """`sealing` reports a segment version written in the open transaction."""
        self._wrote[k] = entry

    def wrote_trials(self, entry: dict[str, Any]) -> None:
        """`sealed_trials` reports a study's trial file version written in the open transaction."""
        self._wrote_trials[entry["study"]] = entry

    def rewrites(self, old: dict[str, Any] | None) -> int:
        """The generation to write next over registry entry `old` (a segment's or a study's trial
        file's): the next one, or `old`'s own when this open transaction wrote it (no catalog.json
        names it yet, so it is replaced: one new version per transaction, and the version the last
        commit named stays the one kept before it)."""
        if old is None:
            return 1
        written = self._wrote.get(int(old["segment"])) if "segment" in old else self._wrote_trials.get(old["study"])
        mine = written is not None and written["file"] == old["file"]
        return int(old["generation"]) + (0 if mine else 1)

    def _committed(self) -> None:
        wrote, self._wrote = self._wrote, {}
        wrote_trials, self._wrote_trials = self._wrote_trials, {}
        if wrote or wrote_trials or not self._segments_swept:
            state = self._snapshot.state if self._snapshot is not None else self._load()
            # After the first write, only the files just written: each keeps its current and previous version.
            swept = self._segments_swept
            self.segments.sweep(sealing.registry(state).values(), None if not swept else wrote)
            self.segments.sweep_trials(sealed_trials.registry(state).values(),
                                       None if not swept else [e["key"] for e in wrote_trials.values()])
            self._segments_swept = True

    def _aborted(self) -> None:
        wrote, self._wrote = self._wrote, {}
        wrote_trials, self._wrote_trials = self._wrote_trials, {}
        if not wrote and not wrote_trials:
            return
        self._forget()
        try:  # a failure after catalog.json was replaced (an fsync of its folder): those files are named
            state = self._load()
            named = {e["file"] for e in sealing.registry(state).values()}
            named |= {e["file"] for e in sealed_trials.registry(state).values()}
        except Exception:  # noqa: BLE001 - unreadable now: delete nothing, the next write's sweep decides
            return
        lost = [e for e in (*wrote.values(), *wrote_trials.values()) if e["file"] not in named]
        for entry in lost:  # never committed: not the catalogue's
            for name in (entry["file"], entry.get("index")):
                if name:
                    (self.segments.folder / name).unlink(missing_ok=True)
        self.segments.forget(entry["file"] for entry in lost)

    def copy(self, doc: Any) -> Any:
        """A deep copy of a document (for the segment cache's shared ones)."""
        return clone(doc)

    # ----------------------------------------------------------------- helpers

    def meta(self) -> dict[str, Any]:
        """catalog.json's `meta` record: counters, the layout, what imports committed."""
        with self._read() as (db, _):
            return clone(self._meta(db))

    def _meta(self, db: TinyDB) -> dict[str, Any]:
        doc = db.table("meta").get(doc_id=META_ID)
        return dict(doc) if doc is not None else {}

    def _set_meta(self, db: TinyDB, **fields: Any) -> None:
        db.table("meta").upsert(Document(fields, doc_id=META_ID))

    def _locate(self, db: TinyDB, number: int) -> tuple[dict[str, Any], bool]:
        """The run's document and whether it is sealed; BadInput if there is no such run."""
        doc = _table(db, "runs").get(str(number))
        if doc is not None:
            return doc, False
        sealed, _ = sealing.sealed_doc(self, db, number)
        if sealed is None:
            raise BadInput(f"no run r{number} in {self.path}")
        return sealed, True

    def _allocate(self, db: TinyDB, count: int) -> tuple[int, int]:
        """First run number and first seq for `count` new runs."""
        meta = self._meta(db)
        runs_raw = _table(db, "runs")
        sealed = max((int(e.get("last") or 0) for e in sealing.registry(db).values()), default=0)
        # Counters may be missing in a hand-made file; never go below what exists.
        number = max(int(meta.get("next_run", 1)), max(map(int, runs_raw), default=0) + 1, sealed + 1)
        self._set_meta(db, next_run=number + count)
        return number, self._take_seqs(db, count)

    def _take_seqs(self, db: TinyDB, count: int) -> int:
        """The first of `count` new places at the back of the queue's enqueue order."""
        meta = self._meta(db)
        if "next_seq" in meta:
            seq = int(meta["next_seq"])
        else:
            seq = max((int(d.get("seq", 0)) for d in _table(db, "runs").values()), default=0) + 1
        self._set_meta(db, next_seq=seq + count)
        return seq

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
            "pinned": device,  # what was asked for; `device` becomes where it runs
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
        doc, sealed = self._locate(db, number)
        current = RunState(doc["state"])
        if new_state not in TRANSITIONS[current]:
            allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "nothing (final state)"
            raise ValueError(f"run r{number} cannot go from {current.value} to {new_state.value}; allowed: {allowed}")
        if sealed:  # a finished run queued again: back to the working set
            sealing.unseal(self, db, number)

        def apply(d: MutableMapping[str, Any]) -> None:
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

        runs = db.table("runs")
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
    ) -> RunRecord:
        number = _run_number(run_id)
        with self._write() as db:
            _, sealed = self._locate(db, number)
            if sealed:  # changed where it is; its events stay in its own record
                return cast(RunRecord, clone(sealing.update_sealed(self, db, number, transform)))
            runs = db.table("runs")
            runs.update(cast(Callable[[MutableMapping[str, Any]], None], transform), doc_ids=[number])  # documents are dicts
            self._insert_events(db, number, events or [])
            return cast(RunRecord, clone(runs.get(doc_id=number)))

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
    ) -> RunRecord:
        """Queue one run; returns its record (id "r<N>", state "queued")."""
        item = dict(
            preset=preset, config=config, config_hash=config_hash, priority=priority, device=device, study=study, trial=trial
        )
        return self.create_runs([item])[0]

    def create_runs(self, items: list[Mapping[str, Any]]) -> list[RunRecord]:
        """Queue several runs in one write; each item takes `create_run`'s keywords."""
        if not items:
            return []
        with self._write() as db:
            number, seq = self._allocate(db, len(items))
            now = time.time()
            docs = [self._new_record(number + i, seq + i, now, **item) for i, item in enumerate(items)]
            db.table("runs").insert_multiple(docs)
            return cast(list[RunRecord], clone(docs))

    def get_run(self, run_id: str | int) -> RunRecord | None:
        """The run's record ("r12", "12" or 12), or None if there is no such run."""
        number = _run_number(run_id)
        for _ in range(5):
            with self._read() as (db, _fresh):
                doc = _table(db, "runs").get(str(number))
                if doc is not None:
                    return cast(RunRecord, clone(doc))
                entry = sealing.registry(db).get(segment_of(number))
            if entry is None:
                return None
            try:
                sealed = self.segments.docs(entry).get(str(number))
            except FileNotFoundError:  # replaced twice since we read the registry: read it again
                continue
            return None if sealed is None else cast(RunRecord, clone(sealed))
        raise CatalogLocked(f"{self.segments.folder} kept changing while r{number} was read; try again")

    def list_runs(self, status: RunState | str | None = None, *, omit: Collection[str] = (),
                  studies: Collection[str] | None = None, archived: bool | None = None) -> list[RunRecord]:
        """Runs (those in state `status`, or trials of `studies`; archived ones only, or none, with
        `archived`), oldest enqueue first.

        `omit` drops fields from the copies (e.g. `("config",)` for a table
        view): at 10,000 runs most of the cost is copying what is returned.
        Queued, running and interrupted runs are all in catalog.json, so a list of those reads
        nothing else; every other list reads the segments that may hold what it asks for.
        """
        wanted = None if status is None else _run_state(status)
        with self._read() as (db, fresh):
            runs = _table(db, "runs").values()
            selected = [d for d in runs if (wanted is None or d.get("state") == wanted.value)
                        and (studies is None or d.get("study") in studies)
                        and (archived is None or bool(d.get("archived")) == archived)]
            entries = [] if wanted is not None and wanted.unfinished else \
                self._segments_for(db, wanted, studies, archived)
            found = self._hand_out(_omitted(selected, omit), fresh)
        if entries:
            found += list(self._sealed_runs(entries, wanted, studies, archived, omit))
        found.sort(key=lambda d: int(d.get("seq", 0)))
        return cast(list[RunRecord], found)

    def _segments_for(self, db: TinyDB, state: RunState | None, studies: Collection[str] | None,
                      archived: bool | None) -> list[dict[str, Any]]:
        """Registry entries of the segments that may hold runs matching these filters."""
        out = []
        for _, entry in sorted(sealing.registry(db).items()):
            live = int(entry.get("runs", 0)) - int(entry.get("archived", 0))
            if archived is True and not entry.get("archived") or archived is False and live <= 0:
                continue
            if state is not None and archived is False and not (entry.get("states") or {}).get(state.value):
                continue
            if studies is not None and not set(entry.get("studies") or ()) & set(studies):
                continue
            if entry.get("runs"):
                out.append(entry)
        return out

    def _sealed_runs(self, entries: list[dict[str, Any]], state: RunState | None, studies: Collection[str] | None,
                     archived: bool | None, omit: Collection[str]) -> Iterator[dict[str, Any]]:
        """Copies of the matching runs of these segments, in run order (a segment at a time)."""
        dropped = frozenset(omit)
        for entry in entries:
            docs = self._segment_docs(entry)
            with gc_paused():
                picked = [{k: v for k, v in d.items() if k not in dropped} for d in docs.values()
                          if (state is None or d.get("state") == state.value)
                          and (studies is None or d.get("study") in studies)
                          and (archived is None or bool(d.get("archived")) == archived)]
            yield from clone(picked)

    def _segment_docs(self, entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """A segment's documents; if this version is gone (replaced twice meanwhile), the current one."""
        try:
            return self.segments.docs(entry)
        except FileNotFoundError:
            with self._read() as (db, _):
                current = sealing.registry(db).get(int(entry["segment"]))
            return self.segments.docs(current) if current is not None else {}

    def working(self, omit: Collection[str] = ("config",)) -> views.Working:
        """The working set as one snapshot (what the TUI polls): its runs without `omit`, their
        briefs, the registry of segments and the studies (`views.working`)."""
        return views.working(self, omit)

    def run_counts(self, archived: bool = False) -> dict[str, int]:
        """Runs by state over the whole catalogue, from the registry: no segment is read."""
        return self.working(omit=("config", "history", "events")).counts(archived)

    def segment_briefs(self, entry: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The briefs of one segment version, by document id (shared and read-only: do not change
        them). FileNotFoundError if that version is gone: read the registry again."""
        return self.segments.briefs(entry)

    def iter_runs(self, status: RunState | str | None = None, *, studies: Collection[str] | None = None,
                  archived: bool | None = False, since: float | None = None, tags: Collection[str] = (),
                  omit: Collection[str] = ()) -> Iterator[RunRecord]:
        """Runs in run-number order, one segment in memory at a time (`views.iter_runs`): in state
        `status`, of `studies`, created at or after `since`, with every tag of `tags`; not archived
        (default), only archived (True) or both (None). Each is a copy."""
        return views.iter_runs(self, status, studies=studies, archived=archived, since=since, tags=tags, omit=omit)

    def unfinished(self, omit: Collection[str] = ()) -> list[RunRecord]:
        """Queued, running and interrupted runs, oldest enqueue first: catalog.json alone holds them."""
        states = {s.value for s in UNFINISHED_STATES}
        with self._read() as (db, fresh):
            found = self._hand_out(_omitted([d for d in _table(db, "runs").values() if d.get("state") in states], omit),
                                   fresh)
        found.sort(key=lambda d: int(d.get("seq", 0)))
        return cast(list[RunRecord], found)

    def queued(self) -> list[RunRecord]:
        """Queued runs in dispatch order: priority descending, then enqueue order. Without their
        `history` and `events` (a requeued run's can be long; the engine reads the queue after
        every run)."""
        with self._read() as (db, _):
            runs = _table(db, "runs").values()
            selected = [{k: v for k, v in d.items() if k not in ("history", "events")}
                        for d in runs if d.get("state") == RunState.QUEUED.value]
            selected.sort(key=_dispatch_key)
            return cast(list[RunRecord], clone(selected))

    def transition(
        self,
        run_id: str | int,
        new_state: RunState | str,
        *,
        error: str | None = None,
        add_events: Sequence[RunEvent | Mapping[str, Any]] | None = None,
        to_back: bool = False,
        **fields: Any,
    ) -> RunRecord:
        """Move a run to `new_state` if TRANSITIONS allows it (ValueError if not).

        Stamps `started_at` (running), `<state>_at` and, for final states,
        `finished_at`; re-queueing clears `finished_at`, `error` and `worker`;
        each start increments `attempts`. `error` is the failure reason;
        `add_events` are appended in the same write; `fields` are stored as is.
        `to_back`: a re-queued run goes behind the runs already queued at its
        priority (a user's resume), not back to its old place (a recovery).
        A run that ends may make the oldest finished runs leave the working set (`sealing`).
        """
        target = _run_state(new_state)
        _check_fields(fields)
        now = time.time()
        extra = _to_json(fields, "run fields")
        events = [_event_doc(e, now) for e in add_events or ()]
        number = _run_number(run_id)
        with self._write() as db:
            if to_back and target is RunState.QUEUED:
                extra = {**extra, "seq": self._take_seqs(db, 1)}
            doc = clone(self._apply_transition(db, number, target, error=error, fields=extra, events=events, now=now))
            if target.terminal:
                sealing.seal_round(self, db)
            return cast(RunRecord, doc)

    def update_run(self, run_id: str | int, **fields: Any) -> RunRecord:
        """Set fields on a run (not id, state or seq); returns the new record."""
        _check_fields(fields)
        extra = _to_json(fields, "run fields")
        return self._mutate_run(run_id, lambda d: d.update(extra))

    def record_epoch_and_events(
        self,
        run_id: str | int,
        entry: EpochRecord | Mapping[str, Any] | None,
        events: Sequence[RunEvent | Mapping[str, Any]],
    ) -> RunRecord:
        """One epoch's summary and its events in a single write."""
        now = time.time()
        history_entry = None if entry is None else _epoch_doc(entry)
        event_docs = [_event_doc(e, now) for e in events]

        def apply(d: MutableMapping[str, Any]) -> None:
            if history_entry is not None:
                d.setdefault("history", []).append(history_entry)
            if event_docs:
                d.setdefault("events", []).extend(event_docs)

        return self._mutate_run(run_id, apply, event_docs)

    def tag_run(self, run_id: str | int, add: Collection[str] = (), remove: Collection[str] = ()) -> RunRecord:
        """Add and remove tags of a run in one locked write (a fresh read: no other write is lost);
        `tags` keeps the order tags were first given."""
        adding, removing = check_tags(add), check_tags(remove)

        def apply(d: dict[str, Any]) -> None:
            tags = [t for t in d.get("tags") or [] if t not in removing]
            d["tags"] = tags + [t for t in adding if t not in tags]

        return self._mutate_run(run_id, apply)

    def set_note(self, run_id: str | int, text: str) -> RunRecord:
        """Set the run's note (an empty text removes it)."""
        if not isinstance(text, str) or len(text) > NOTE_LIMIT:
            raise BadInput(f"a note is text of at most {NOTE_LIMIT} characters")
        note = text.strip() or None
        return self._mutate_run(run_id, lambda d: d.update(note=note))

    # ------------------------------------------------------------------- queue

    def move_top(self, run_id: str | int) -> RunRecord:
        """Make a queued run the next to dispatch (priority above every other queued run)."""
        number = _run_number(run_id)
        with self._write() as db:
            doc, _ = self._locate(db, number)
            if doc["state"] != RunState.QUEUED.value:
                raise BadInput(f"r{number} is {doc['state']}; only queued runs can be moved")
            runs = db.table("runs")
            waiting = sorted(runs.search(Query().state == RunState.QUEUED.value), key=_dispatch_key)
            if waiting[0].doc_id != number:
                top = max(int(d.get("priority", 0)) for d in waiting) + 1
                runs.update({"priority": top}, doc_ids=[number])
            return cast(RunRecord, clone(runs.get(doc_id=number)))

    def set_priority(self, run_id: str | int, priority: int) -> RunRecord:
        """Set a run's priority (higher is dispatched first)."""
        value = _check_priority(priority)
        return self._mutate_run(run_id, lambda d: d.update(priority=value))

    def cancel_queued(self, run_id: str | int) -> RunRecord:
        """Cancel a run that has not started (a running run is stopped by the engine)."""
        number = _run_number(run_id)
        now = time.time()
        with self._write() as db:
            doc, _ = self._locate(db, number)
            if doc["state"] != RunState.QUEUED.value:
                raise BadInput(f"r{number} is {doc['state']}, not queued; only queued runs can be cancelled here")
            event = _event_doc({"kind": "cancelled", "message": "cancelled while queued"}, now)
            done = clone(self._apply_transition(db, number, RunState.CANCELLED, error=None, fields={}, events=[event],
                                                now=now))
            sealing.seal_round(self, db)
            return cast(RunRecord, done)

    def clear_queue(self) -> int:
        """Cancel every queued run; returns how many were cancelled."""
        now = time.time()
        with self._write() as db:
            waiting = db.table("runs").search(Query().state == RunState.QUEUED.value)
            for doc in waiting:
                event = _event_doc({"kind": "cancelled", "message": "cancelled when the queue was cleared"}, now)
                self._apply_transition(
                    db, doc.doc_id, RunState.CANCELLED, error=None, fields={}, events=[event], now=now
                )
            if waiting:
                sealing.seal_round(self, db)
            return len(waiting)

    # --------------------------------------------------------- studies, trials

    def upsert_study(self, name: str, doc: Mapping[str, Any]) -> StudyRecord:
        """Create or update the study `name`: fields in `doc` replace stored ones, others stay. A
        study that wants trials again gets its sealed trials back in the same write."""
        body = _to_json(dict(doc), "study")
        body["name"] = name
        with self._write() as db:
            return self._put_study(db, name, body)

    def _put_study(self, db: TinyDB, name: str, body: dict[str, Any]) -> StudyRecord:
        """Write a study's summary (only if it changed), then keep its trials where its state says
        (`sealed_trials`): back in the working set if it wants trials, else maybe sealed."""
        studies = db.table("studies")
        cond = Query().name == name
        old_doc = studies.get(cond)
        # Summaries get re-sent unchanged often; skip the whole-file write then.
        if old_doc is None or any(old_doc.get(k) != v for k, v in body.items()):
            studies.upsert(body, cond)
        doc = clone(studies.get(cond))
        if doc.get("state") in ACTIVE_STUDY_STATES:
            sealed_trials.bring_back(self, db, name)
        else:
            sealed_trials.seal_round(self, db)
        return cast(StudyRecord, doc)

    def get_study(self, name: str) -> StudyRecord | None:
        with self._read() as (db, _):
            doc = db.table("studies").get(Query().name == name)
            return None if doc is None else cast(StudyRecord, clone(doc))

    def list_studies(self) -> list[StudyRecord]:
        """All studies, by name."""
        with self._read() as (db, _):
            return cast(list[StudyRecord], clone(sorted(db.table("studies").all(), key=lambda d: str(d.get("name", "")))))

    def active_studies(self) -> list[StudyRecord]:
        """The studies that want trials (running, stopping), by name: what the engine's loop asks
        every second, without copying the summaries of every study that ended."""
        with self._read() as (db, _):
            docs = [d for d in _table(db, "studies").values() if d.get("state") in ACTIVE_STUDY_STATES]
            return cast(list[StudyRecord], clone(sorted(docs, key=lambda d: str(d.get("name", "")))))

    def upsert_trials(self, study: str, docs: list[Mapping[str, Any]]) -> int:
        """Create or update many trials of `study` in one write (each doc has a `number`), sealed or
        not; returns how many changed. Nothing is written when none did."""
        bodies = [{**_to_json(dict(d), "trial"), "study": study} for d in docs]
        with self._write() as db:
            changed = sealed_trials.merge(self, db, study, bodies)
            if changed:
                sealed_trials.seal_round(self, db)
            return changed

    def sync_study(self, name: str, doc: Mapping[str, Any], trials: list[Mapping[str, Any]]) -> StudyRecord:
        """A study summary and its trials in one write (the tuning mirror's per-trial update)."""
        body = _to_json(dict(doc), "study")
        body["name"] = name
        bodies = [{**_to_json(dict(d), "trial"), "study": name} for d in trials]
        with self._write() as db:
            sealed_trials.merge(self, db, name, bodies)
            return self._put_study(db, name, body)

    def list_trials(self, study: str) -> list[dict[str, Any]]:
        """The study's trials, by number: from the working set, or from its trial file once sealed."""
        for _ in range(5):
            with self._read() as (db, _fresh):
                found = clone([d for d in _table(db, "trials").values() if d.get("study") == study])
                entry = sealed_trials.registry(db).get(study)
            if entry is not None and entry.get("trials"):
                try:
                    shelf = self.segments.trials(entry)
                except FileNotFoundError:  # replaced twice since we read the registry: read it again
                    continue
                numbers = {d.get("number") for d in found}
                found += clone([d for d in shelf.values() if d.get("number") not in numbers])
            return sorted(found, key=lambda d: int(d.get("number", 0)))
        raise CatalogLocked(f"{self.segments.folder} kept changing while the trials of {study} were read; try again")

    # ------------------------------------------------------------------ events

    def events(self, since: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Events of the runs in the working set (each with `run`), oldest first; only those after
        `since`; the last `limit`. (A sealed run's events are in its own record.)"""
        with self._read() as (db, fresh):
            raw = _table(db, "events")
            found = [(float(d.get("time", 0.0)), int(k), d) for k, d in raw.items()]
            if since is not None:
                found = [f for f in found if f[0] > since]
            found.sort(key=lambda f: (f[0], f[1]))
            if limit is not None:
                found = found[-limit:] if limit > 0 else []
            return self._hand_out([d for _, _, d in found], fresh)
