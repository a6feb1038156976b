"""Whole-run records in and out: `runs export --format records`, `runs import`, and archiving.

One job: move finished runs between workspaces as JSON lines, and in and out of the archive.

A record is one JSON object per line: `id`, `preset`, `state`, `config`, `history` (a list of
epoch records), `summary`, `tags`, `note`, `created_at`, `started_at`, `finished_at`, and, where
the run has them, `error`, `events`, `kept_epoch`, `device`, `host`, `workdir`, `code_hash`,
`config_hash`, `n_params`, `peak_memory`, `data_path`, `study`, `trial`, `params`,
`imported_from`. `preset`, `state` (a finished one), `config` and `history` are required.

Invariants:
- An import checks every line before it writes anything: a malformed line or an unfinished
  state is refused with its line number, and nothing is imported.
- Records are added in batches of `BATCH` (new ids, sealed straight into their segments): each
  batch is one commit of catalog.json, so a kill -9 leaves every record of the batches committed
  and none of the next. The catalogue remembers, by the file's content hash, how many lines were
  committed: importing the same file again continues after them.
- An imported run keeps its old id as `imported_from` (the first one, through several moves);
  a study's name and trial number become `imported_study`/`imported_trial` (the study itself,
  its Optuna storage, is not moved, so the run is no trial of a study here).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from trialdeck.engine.catalogue import sealing
from trialdeck.engine.catalogue.segments import SEGMENT_RUNS, segment_of
from trialdeck.engine.catalogue.store import NOTE_LIMIT, Store, check_tags
from trialdeck.engine.errors import BadInput
from trialdeck.engine.types import TERMINAL_STATES, RunState

__all__ = ["BATCH", "FIELDS", "REQUIRED", "Archived", "Imported", "archive", "check_record", "export_lines",
           "import_records", "record_of", "scan_records", "unarchive"]

BATCH = SEGMENT_RUNS
"""Records per committed batch of an import."""
REQUIRED = ("preset", "state", "config", "history")
_TEXT = ("id", "error", "device", "host", "workdir", "code_hash", "config_hash", "data_path", "study",
         "imported_from")
_TIMES = ("created_at", "started_at", "finished_at")
_WHOLE = ("kept_epoch", "n_params", "peak_memory", "trial")
FIELDS = ("id", "preset", "state", "config", "history", "summary", "tags", "note", *_TIMES, "error", "events",
          "kept_epoch", "device", "host", "workdir", "code_hash", "config_hash", "n_params", "peak_memory",
          "data_path", "study", "trial", "params", "imported_from")
FINISHED = tuple(s.value for s in RunState if s in TERMINAL_STATES)


# ----------------------------------------------------------------------------- out


def record_of(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run's export record (FIELDS, in that order; the required and listed ones always present)."""
    out: dict[str, Any] = {
        "id": run["id"], "preset": run.get("preset"), "state": run.get("state"), "config": run.get("config") or {},
        "history": run.get("history") or [], "summary": run.get("summary"), "tags": run.get("tags") or [],
        "note": run.get("note"), **{key: run.get(key) for key in _TIMES},
    }
    study = run.get("study") if run.get("study") is not None else run.get("imported_study")
    trial = run.get("trial") if run.get("trial") is not None else run.get("imported_trial")
    for key in FIELDS[len(out):]:
        value = {"study": study, "trial": trial}.get(key, run.get(key))
        if value is not None and value != []:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- in: checks


def _fail(where: str, text: str) -> BadInput:
    return BadInput(f"{where}: {text}")


def check_record(obj: Any, where: str) -> dict[str, Any]:
    """The record's fields, checked (BadInput naming `where`, e.g. "runs.jsonl line 12", the key
    and what is allowed)."""
    if not isinstance(obj, dict):
        raise _fail(where, f"a record is a JSON object with {', '.join(REQUIRED)}, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r}; allowed: {', '.join(FIELDS)}")
    missing = [key for key in REQUIRED if key not in obj]
    if missing:
        raise _fail(where, f"missing {missing[0]!r} (required: {', '.join(REQUIRED)})")
    if not isinstance(obj["preset"], str) or not obj["preset"]:
        raise _fail(where, "'preset' must be a preset name, e.g. \"seed/step-decay\"")
    if obj["state"] not in FINISHED:
        raise _fail(where, f"state {obj['state']!r} is not a finished state; allowed: {', '.join(FINISHED)} "
                           "(records hold finished runs)")
    for key, kind in (("config", dict), ("summary", dict), ("params", dict)):
        if obj.get(key) is not None and not isinstance(obj[key], kind):
            raise _fail(where, f"'{key}' must be a JSON object")
    for key in ("history", "events"):
        if obj.get(key) is not None and not (isinstance(obj[key], list) and all(isinstance(e, dict) for e in obj[key])):
            raise _fail(where, f"'{key}' must be a list of JSON objects (one per {'epoch' if key == 'history' else 'event'})")
    for event in obj.get("events") or ():
        if not isinstance(event.get("kind"), str) or not isinstance(event.get("message"), str):
            raise _fail(where, "each event needs a 'kind' and a 'message' (text)")
    for key in _TEXT:
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise _fail(where, f"'{key}' must be text or null")
    for key in _TIMES:
        value = obj.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise _fail(where, f"'{key}' must be a time in seconds since 1970 (a number) or null")
    for key in _WHOLE:
        if obj.get(key) is not None and (isinstance(obj[key], bool) or not isinstance(obj[key], int)):
            raise _fail(where, f"'{key}' must be a whole number or null")
    if obj.get("tags") is not None:
        if not isinstance(obj["tags"], list):
            raise _fail(where, "'tags' must be a list of tags")
        try:
            check_tags(obj["tags"])
        except BadInput as exc:
            raise _fail(where, exc.message) from None
    note = obj.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > NOTE_LIMIT):
        raise _fail(where, f"'note' must be text of at most {NOTE_LIMIT} characters")
    return obj


def _doc(record: dict[str, Any], number: int, seq: int, now: float) -> dict[str, Any]:
    """The run document of an imported record under its new number."""
    finished_at = record.get("finished_at") or now
    created_at = record.get("created_at") or finished_at
    config = record["config"]
    doc: dict[str, Any] = {
        "id": f"r{number}", "preset": record["preset"], "state": record["state"], "priority": 0,
        "device": record.get("device"), "pinned": None, "config": config,
        "config_hash": record.get("config_hash") or hashlib.sha256(
            orjson.dumps(config, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16],
        "created_at": created_at, "queued_at": created_at, "started_at": record.get("started_at"),
        "finished_at": finished_at, f"{record['state']}_at": finished_at, "history": record["history"],
        "events": record.get("events") or [], "error": record.get("error"), "study": None, "trial": None,
        "attempts": 1 if record.get("started_at") is not None else 0, "worker": None, "seq": seq,
    }
    for key in ("summary", "kept_epoch", "host", "workdir", "code_hash", "n_params", "peak_memory", "data_path",
                "params", "note"):
        if record.get(key) is not None:
            doc[key] = record[key]
    if record.get("tags"):
        doc["tags"] = check_tags(record["tags"])
    if record.get("study") is not None:
        doc["imported_study"] = record["study"]
    if record.get("trial") is not None:
        doc["imported_trial"] = record["trial"]
    doc["imported_from"] = record.get("imported_from") or record.get("id") or ""
    return doc


# ----------------------------------------------------------------------------- in: the file


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line


def scan_records(path: Path, label: str | None = None) -> tuple[int, str]:
    """Check every line of a records file; returns how many records it holds and its content hash.
    BadInput at the first line that is not a valid record, naming it."""
    label = label or str(path)
    digest = hashlib.blake2b(digest_size=16)
    count = 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            digest.update(line)
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise _fail(f"{label} line {n}", f"not valid JSON ({' '.join(str(exc).split())})") from None
            check_record(obj, f"{label} line {n}")
            count += 1
    return count, digest.hexdigest()


@dataclass
class Imported:
    """What an import did."""

    records: int
    """Records in the file."""
    added: int
    """Runs added by this call."""
    skipped: int
    """Records committed by an earlier, interrupted import of the same file (not added again)."""
    first: str | None
    last: str | None


def _commit_batch(store: Store, pending: list[tuple[int, dict[str, Any]]], digest: str, label: str) -> list[str]:
    """Add the first records of `pending` that fit in one segment as sealed runs, with how far the file
    got, in one commit; removes them from `pending` and returns their new ids."""
    with store._write() as db:
        first = store._allocate(db, 0)[0]
        count = min(len(pending), SEGMENT_RUNS - first % SEGMENT_RUNS)  # whole batches of one segment each
        number, seq = store._allocate(db, count)
        now = time.time()
        batch = pending[:count]
        docs = {str(number + i): _doc(record, number + i, seq + i, now) for i, (_, record) in enumerate(batch)}
        k = segment_of(number)
        old = sealing.registry(db).get(k)
        sealing.write_segment(store, db, k, {**store.segments.docs(old), **docs} if old else docs, old)
        imports = dict(store._meta(db).get("imports") or {})
        done = imports.get(digest) or {"file": label, "lines": 0, "runs": 0, "first": f"r{number}"}
        imports[digest] = {**done, "lines": batch[-1][0], "runs": int(done["runs"]) + count,
                           "last": f"r{number + count - 1}", "at": now}
        store._set_meta(db, imports=imports)
    del pending[:count]
    return [f"r{n}" for n in range(number, number + count)]


def import_records(store: Store, path: Path, *, label: str | None = None, again: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> Imported:
    """Import a records file (checked whole first) into `store`, in committed batches; a file
    imported before, in part, continues after what was committed (all of it again with `again`)."""
    label = label or str(path)
    total, digest = scan_records(path, label)
    done = {} if again else (store.meta().get("imports") or {}).get(digest) or {}
    if again:
        digest = f"{digest}-{time.time_ns()}"
    after = int(done.get("lines") or 0)
    skipped = int(done.get("runs") or 0)
    pending: list[tuple[int, dict[str, Any]]] = []
    added: list[str] = []
    for n, line in _lines(path):
        if n <= after:
            continue
        pending.append((n, orjson.loads(line)))
        if len(pending) >= BATCH:
            added += _commit_batch(store, pending, digest, label)
            if progress is not None:
                progress(skipped + len(added), total)
    while pending:
        added += _commit_batch(store, pending, digest, label)
    if progress is not None:
        progress(skipped + len(added), total)
    return Imported(total, len(added), skipped, added[0] if added else None, added[-1] if added else None)


@dataclass
class Archived:
    changed: list[str]
    skipped_active: int = 0
    """Finished runs left where they are because their study still wants trials."""


def _matches(doc: Mapping[str, Any], before: float | None, study: str | None, numbers: set[int] | None) -> bool:
    if numbers is not None and int(str(doc.get("id", "r0"))[1:] or 0) not in numbers:
        return False
    if study is not None and doc.get("study") != study and doc.get("imported_study") != study:
        return False
    if before is not None and float(doc.get("finished_at") or doc.get("created_at") or 0.0) >= before:
        return False
    return True


def archive(store: Store, *, before: float | None = None, study: str | None = None,
            numbers: Iterable[int] | None = None) -> Archived:
    """Archive finished runs (that ended before `before`, of `study`, or these numbers): out of the
    working set and of default lists, still found by id and by `--archived`. One commit per segment."""
    wanted = None if numbers is None else set(numbers)
    out = Archived([])
    with store._write() as db:
        runs = sealing._raw(db, "runs")
        active = sealing._active_studies(db)
        picked = [int(k) for k, d in runs.items() if RunState(d["state"]).terminal and _matches(d, before, study, wanted)]
        out.skipped_active = sum(1 for n in picked if runs[str(n)].get("study") in active)
        picked = [n for n in picked if runs[str(n)].get("study") not in active]
        sealing.seal(store, db, picked, archived=True)
        out.changed += [f"r{n}" for n in sorted(picked)]
        entries = sorted(sealing.registry(db).items())
    for k, entry in entries:
        if entry.get("runs", 0) - entry.get("archived", 0) <= 0:
            continue
        if study is not None and study not in (entry.get("studies") or ()):
            continue
        if before is not None and entry.get("finished_min") is not None and float(entry["finished_min"]) >= before:
            continue
        if wanted is not None and not any(segment_of(n) == k for n in wanted):
            continue
        out.changed += _flag_segment(store, k, True, lambda d: _matches(d, before, study, wanted))
    return out


def unarchive(store: Store, *, study: str | None = None, numbers: Iterable[int] | None = None,
              everything: bool = False) -> list[str]:
    """Bring archived runs back into default lists (their segment's flag cleared, one commit per segment)."""
    wanted = None if numbers is None else set(numbers)
    with store._read() as (db, _):
        entries = sorted(sealing.registry(db).items())
    changed: list[str] = []
    for k, entry in entries:
        if not entry.get("archived") or wanted is not None and not any(segment_of(n) == k for n in wanted):
            continue
        if not everything and wanted is None and study is None:
            continue
        changed += _flag_segment(store, k, False, lambda d: _matches(d, None, study, wanted))
    return changed


def _flag_segment(store: Store, k: int, archived: bool, match: Callable[[Mapping[str, Any]], bool]) -> list[str]:
    with store._write() as db:
        entry = sealing.registry(db).get(k)
        if entry is None:
            return []
        docs = store.segments.docs(entry)
        numbers = [int(key) for key, d in docs.items() if bool(d.get("archived")) != archived and match(d)]
        return [f"r{n}" for n in sealing.set_archived(store, db, numbers, archived)]


def export_lines(runs: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    """Export lines of finished runs (each ending in a newline)."""
    for run in runs:
        yield orjson.dumps(record_of(run), option=orjson.OPT_APPEND_NEWLINE)
