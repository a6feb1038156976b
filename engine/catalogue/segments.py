"""Sealed runs: finished runs kept out of catalog.json, in immutable TinyDB files by run number.

One job: read and write the files of `segments/` in the workspace. The store decides what to
seal and when (`trialdeck.engine.catalogue.store`); this module knows the files.

Layout and invariants:
- Segment k holds finished runs numbered k * SEGMENT_RUNS to (k + 1) * SEGMENT_RUNS - 1, as a
  TinyDB file (`meta` and `runs` tables, one run document per line, the run number as the
  document id, exactly like catalog.json's `runs`), and an index file beside it with one brief
  per run (`trialdeck.engine.catalogue.briefs`), so lists never read histories.
- Files are never changed in place: each write of segment k makes a new version,
  `runs-<k>-g<generation>.json` and `runs-<k>-g<generation>.index.json`, and catalog.json's
  `segments` table says which version is current (the registry entry `write` returns). A
  version becomes the catalogue's in the same atomic write of catalog.json as the rest of the
  change (a run leaving the working set, an import's batch): one commit point, so a kill -9
  leaves the old version current and the new files as leftovers, which `sweep` removes. A
  transaction that writes one segment twice replaces its own version, which nothing names yet
  (`Store.rewrites`).
- The version before the current one is kept (catalog.json.bak may name it); older ones are
  removed. A reader that finds a file gone (two versions later) reads the registry again.
- Since a version never changes, what was parsed from it is cached by its name, unchecked.
  Cached documents are shared: callers copy what they hand out or change.

The trials of a study that no longer wants trials are sealed the same way, a file per study
(`trialdeck.engine.catalogue.sealed_trials` decides when): `trials-<study>-g<generation>.json`,
a TinyDB file with `meta` and `trials` tables (the trial documents exactly as catalog.json's
`trials` table holds them, one per line), named by catalog.json's `trial_segments` table, with
the same versioning, caching and sweeping rules. `<study>` is the study's name made safe for a
file name, with a hash of the exact name.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from trialdeck.engine.catalogue.briefs import brief
from trialdeck.engine.catalogue.lines import is_table, serialize
from trialdeck.engine.errors import CatalogCorrupt
from trialdeck.engine.types import RunState
from trialdeck.engine.workspace import atomic_write, make_private_dir

__all__ = ["SEGMENT_RUNS", "Segments", "segment_of", "trials_key"]

SEGMENT_RUNS = 256
"""Run numbers per segment: a segment of 20-epoch runs is about 1 MB, its index about 80 KB."""
_NAME = re.compile(r"^runs-(\d{5})-g(\d+)(\.index)?\.json$")
_TRIALS_NAME = re.compile(r"^trials-(.+-[0-9a-f]{8})-g(\d+)\.json$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
Docs = dict[str, dict[str, Any]]


def segment_of(number: int) -> int:
    return number // SEGMENT_RUNS


def file_names(k: int, generation: int) -> tuple[str, str]:
    stem = f"runs-{k:05d}-g{generation}"
    return f"{stem}.json", f"{stem}.index.json"


def trials_key(study: str) -> str:
    """The stem of a study's trial files: its name made safe for a file name (at most 64
    characters), and 8 hex digits of a hash of the exact name (case-insensitive file systems too)."""
    digest = hashlib.blake2b(study.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{_UNSAFE.sub('_', study)[:64]}-{digest}"


def trials_file(key: str, generation: int) -> str:
    return f"trials-{key}-g{generation}.json"


class _Lru:
    """A few parsed files by name (they never change), thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> Any:
        with self._lock:
            value = self._items.get(name)
            if value is not None:
                self._items.move_to_end(name)
            return value

    def drop(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                self._items.pop(name, None)

    def put(self, name: str, value: Any) -> None:
        with self._lock:
            self._items[name] = value
            self._items.move_to_end(name)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class Segments:
    """The `segments/` folder of one workspace. Thread-safe; writes only under the catalogue lock."""

    def __init__(self, folder: Path, *, docs_cache: int = 4, index_cache: int = 32, trials_cache: int = 8) -> None:
        self.folder = folder
        self._docs = _Lru(docs_cache)
        self._briefs = _Lru(index_cache)
        self._trials = _Lru(trials_cache)

    # ----------------------------------------------------------------- reading

    def _read(self, name: str) -> dict[str, Any]:
        """A segment file's tables; FileNotFoundError when it is gone (the caller re-reads the registry)."""
        path = self.folder / name
        data = path.read_bytes()
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CatalogCorrupt(f"{path} is corrupt (not valid JSON: {' '.join(str(exc).split())}); it was left "
                                 f"untouched, and the version before it, if any, is beside it") from None
        if not isinstance(raw, dict) or not all(is_table(t) for t in raw.values()):
            raise CatalogCorrupt(f"{path} is corrupt (not a TinyDB file of documents); it was left untouched")
        return raw

    def docs(self, entry: Mapping[str, Any], *, cache: bool = True) -> Docs:
        """The run documents of a segment version, by document id. Shared: do not change them."""
        name = entry["file"]
        found = self._docs.get(name)
        if found is None:
            found = self._read(name).get("runs", {})
            if cache:
                self._docs.put(name, found)
        return found

    def briefs(self, entry: Mapping[str, Any]) -> Docs:
        """The briefs of a segment version, by document id, from its index file (made again from the
        segment itself if the index is missing or unreadable: it holds nothing the segment does not).
        Shared: do not change them."""
        name = entry["index"]
        found = self._briefs.get(name)
        if found is None:
            try:
                found = self._read(name).get("runs", {})
            except (FileNotFoundError, CatalogCorrupt):
                found = {key: brief(doc) for key, doc in self.docs(entry, cache=False).items()}
            self._briefs.put(name, found)
        return found

    def trials(self, entry: Mapping[str, Any]) -> Docs:
        """The trial documents of a study's sealed version (a `trial_segments` entry), by document id.
        Shared: do not change them. FileNotFoundError if that version is gone: read the registry again."""
        name = entry["file"]
        found = self._trials.get(name)
        if found is None:
            found = self._read(name).get("trials", {})
            self._trials.put(name, found)
        return found

    def forget(self, names: Iterable[str]) -> None:
        """Drop cached versions (written by a transaction that failed: their names will be reused)."""
        names = list(names)
        self._docs.drop(names)
        self._trials.drop(names)
        self._briefs.drop(name.replace(".json", ".index.json") for name in names)

    # ----------------------------------------------------------------- writing

    def write(self, k: int, docs: Docs, generation: int) -> dict[str, Any]:
        """Write version `generation` of segment k holding `docs` (run documents by document id) and its
        index; returns its registry entry. The files are fsynced; they count once the caller commits
        the entry in catalog.json."""
        make_private_dir(self.folder)
        ordered = dict(sorted(docs.items(), key=lambda item: int(item[0])))
        name, index_name = file_names(k, generation)
        meta = {"1": {"generation": generation, "segment": k}}
        briefs = {key: brief(doc) for key, doc in ordered.items()}
        data = serialize({"meta": meta, "runs": ordered}, {}, {})
        atomic_write(self.folder / name, data)
        # The index is made again from the segment if it is lost: no fsync.
        atomic_write(self.folder / index_name, serialize({"meta": meta, "runs": briefs}, {}, {}), durable=False)
        self._docs.put(name, ordered)
        self._briefs.put(index_name, briefs)
        return self.entry(k, generation, ordered, len(data))

    def write_trials(self, study: str, docs: Docs, generation: int) -> dict[str, Any]:
        """Write version `generation` of `study`'s trial file holding `docs` (trial documents by
        document id); returns its `trial_segments` entry. Fsynced; it counts once the caller commits
        the entry in catalog.json."""
        make_private_dir(self.folder)
        key = trials_key(study)
        name = trials_file(key, generation)
        meta = {"1": {"generation": generation, "study": study}}
        data = serialize({"meta": meta, "trials": docs}, {}, {})
        atomic_write(self.folder / name, data)
        self._trials.put(name, docs)
        return {"study": study, "key": key, "file": name, "generation": generation, "trials": len(docs),
                "bytes": len(data)}

    @staticmethod
    def entry(k: int, generation: int, docs: Docs, size: int = 0) -> dict[str, Any]:
        """The registry entry of a segment version: its files and what lists and filters skip by."""
        name, index_name = file_names(k, generation)
        states: dict[str, int] = {}
        studies: set[str] = set()
        archived = tagged = 0
        created: list[float] = []
        finished: list[float] = []
        for doc in docs.values():
            if doc.get("tags"):
                tagged += 1
            if doc.get("archived"):
                archived += 1
            else:
                states[doc.get("state", "?")] = states.get(doc.get("state", "?"), 0) + 1
            for key in ("study", "imported_study"):
                if doc.get(key) is not None:
                    studies.add(str(doc[key]))
            if isinstance(doc.get("created_at"), (int, float)):
                created.append(doc["created_at"])
            if isinstance(doc.get("finished_at"), (int, float)):
                finished.append(doc["finished_at"])
        numbers = [int(key) for key in docs]
        return {
            "segment": k, "file": name, "index": index_name, "generation": generation, "runs": len(docs),
            "archived": archived, "tagged": tagged, "states": dict(sorted(states.items())), "studies": sorted(studies),
            "first": min(numbers, default=None), "last": max(numbers, default=None),
            "created_min": min(created, default=None), "created_max": max(created, default=None),
            "finished_min": min(finished, default=None), "finished_max": max(finished, default=None), "bytes": size,
        }

    # ----------------------------------------------------------------- leftovers

    def sweep(self, registry: Iterable[Mapping[str, Any]], touched: Iterable[int] | None = None) -> None:
        """Remove versions no catalogue names: older than the one before the current, or never
        committed (newer than the current, or of a segment the registry does not list). Only under
        the catalogue lock. `touched`: only those segments (after a write); None: the whole folder."""
        current = {int(e["segment"]): int(e["generation"]) for e in registry}
        only = None if touched is None else set(touched)
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return
        for name in names:
            match = _NAME.match(name)
            if match is None:
                if name.startswith(".runs-") and ".tmp-" in name and only is None:  # a writer killed mid-write
                    (self.folder / name).unlink(missing_ok=True)
                continue
            k, generation = int(match.group(1)), int(match.group(2))
            if only is not None and k not in only:
                continue
            now = current.get(k)
            if now is None or generation > now or generation < now - 1:
                (self.folder / name).unlink(missing_ok=True)

    def sweep_trials(self, registry: Iterable[Mapping[str, Any]], touched: Iterable[str] | None = None) -> None:
        """`sweep` for the studies' trial files (`registry`: the `trial_segments` entries; `touched`:
        only the files of these keys)."""
        current = {str(e["key"]): int(e["generation"]) for e in registry}
        only = None if touched is None else set(touched)
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return
        for name in names:
            match = _TRIALS_NAME.match(name)
            if match is None:
                if name.startswith(".trials-") and ".tmp-" in name and only is None:  # a writer killed mid-write
                    (self.folder / name).unlink(missing_ok=True)
                continue
            key, generation = match.group(1), int(match.group(2))
            if only is not None and key not in only:
                continue
            now = current.get(key)
            if now is None or generation > now or generation < now - 1:
                (self.folder / name).unlink(missing_ok=True)


def finished(doc: Mapping[str, Any]) -> bool:
    """Whether a run may be sealed: it reached a final state."""
    try:
        return RunState(doc.get("state")).terminal
    except ValueError:
        return False
