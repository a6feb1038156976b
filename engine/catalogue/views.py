"""Reading the whole catalogue at the cost of what is asked: counts, the working set, briefs, a stream of runs.

One job: the `Store` reads that span the working set and the segments without holding every run
(`Store.working`, `run_counts`, `segment_briefs` and `iter_runs` call these; kept apart so that
class stays the record API). Counts come from the registry, never from the segments; the TUI's runs table reads briefs a
segment at a time (`segment_briefs`); `iter_runs` streams full records a segment at a time, so
`runs list --json` or an export of 100,000 runs holds one segment at once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from trialdeck.engine.catalogue import sealing
from trialdeck.engine.catalogue.briefs import brief
from trialdeck.engine.catalogue.file import clone, gc_paused
from trialdeck.engine.catalogue.segments import segment_of
from trialdeck.engine.types import RunRecord, RunState, StudyRecord

if TYPE_CHECKING:
    from trialdeck.engine.catalogue.store import Store

__all__ = ["Working", "iter_runs", "working"]


@dataclass(frozen=True, eq=False)
class Working:
    """One read of catalog.json: the working set's runs (copies, without the omitted fields) and
    their briefs, the registry of segments, the studies, and the file's version."""

    version: tuple
    runs: tuple[dict[str, Any], ...] = ()
    briefs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Run id -> brief, for every run of `runs`."""
    segments: tuple[dict[str, Any], ...] = ()
    """Registry entries, by segment number."""
    studies: tuple[StudyRecord, ...] = ()

    def counts(store, archived: bool = False) -> dict[str, int]:
        """Runs by state, all of them (the working set's and the sealed ones); archived ones instead
        with `archived`."""
        out: dict[str, int] = {}
        if not archived:
            for run in store.runs:
                out[run["state"]] = out.get(run["state"], 0) + 1
            for entry in store.segments:
                for state, n in (entry.get("states") or {}).items():
                    out[state] = out.get(state, 0) + int(n)
        else:
            archived_total = sum(int(e.get("archived") or 0) for e in store.segments)
            if archived_total:
                out["archived"] = archived_total
        return out


def _picked(doc: dict[str, Any], state: str | None, studies: Collection[str] | None, archived: bool | None,
            since: float | None, tags: Collection[str]) -> bool:
    return ((state is None or doc.get("state") == state)
            and (studies is None or doc.get("study") in studies)
            and (archived is None or bool(doc.get("archived")) == archived)
            and (since is None or float(doc.get("created_at") or 0.0) >= since)
            and (not tags or set(tags) <= set(doc.get("tags") or ())))


def _briefs(store: Store, raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The working set's briefs, made again only for documents that changed: the store's cache keeps
    an unchanged document's parsed object between reads, so identity tells (the TUI polls twice a
    second while runs train)."""
    made = store._briefs_made
    out: dict[str, dict[str, Any]] = {}
    kept: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for doc in raw.values():
        run_id = doc.get("id")
        if not isinstance(run_id, str):
            continue
        hit = made.get(run_id)
        if hit is None or hit[0] is not doc:
            hit = (doc, brief(doc))
        kept[run_id] = hit
        out[run_id] = hit[1]
    store._briefs_made = kept
    return clone(out)


def working(store: Store, omit: Collection[str] = ("config",)) -> Working:
    """The working set as one snapshot (what the TUI polls): runs without `omit`, their briefs
    (made from the whole documents), the registry and the studies."""
    dropped = frozenset(omit)
    version = store.version()
    with store._read() as (db, _):
        raw = sealing._raw(db, "runs")
        with gc_paused():
            runs = clone([{k: v for k, v in d.items() if k not in dropped} for d in raw.values()])
            briefs = _briefs(store, raw)
        registry = tuple(entry for _, entry in sorted(sealing.registry(db).items()))
        studies = tuple(clone(sorted(sealing._raw(db, "studies").values(), key=lambda d: str(d.get("name", "")))))
    runs.sort(key=lambda d: int(d.get("seq", 0)))
    return Working(version, tuple(runs), briefs, clone(registry), cast(tuple[StudyRecord, ...], studies))




def iter_runs(store: Store, status: RunState | str | None = None, *, studies: Collection[str] | None = None,
              archived: bool | None = False, since: float | None = None, tags: Collection[str] = (),
              omit: Collection[str] = ()) -> Iterator[RunRecord]:
    """Runs in run-number order, one segment in memory at a time: those in state `status`, of
    `studies`, created at or after `since`, with every tag of `tags`; not archived (default),
    only archived (`archived=True`) or both (None). Each is a copy."""
    state = None if status is None else RunState(status)
    wanted = None if state is None else state.value
    dropped = frozenset(omit)
    with store._read() as (db, _):
        mine = [clone({k: v for k, v in d.items() if k not in dropped}) for d in sealing._raw(db, "runs").values()
                if _picked(d, wanted, studies, archived, since, tags)]
        entries = [] if state is not None and state.unfinished else store._segments_for(db, state, studies, archived)
    if since is not None:
        entries = [e for e in entries if e.get("created_max") is None or float(e["created_max"]) >= since]
    by_segment: dict[int, list[dict[str, Any]]] = {}
    for doc in mine:
        by_segment.setdefault(segment_of(int(doc["id"][1:])), []).append(doc)
    sealed = {int(e["segment"]): e for e in entries}
    # A run sealed after the working set was read is in both: it is listed once.
    listed = {doc["id"] for doc in mine}
    for k in sorted(set(by_segment) | set(sealed)):
        group = by_segment.get(k, [])
        if k in sealed:
            docs = store._segment_docs(sealed[k])
            with gc_paused():
                group += clone([{key: v for key, v in d.items() if key not in dropped} for d in docs.values()
                                if d.get("id") not in listed and _picked(d, wanted, studies, archived, since, tags)])
        group.sort(key=lambda d: int(d["id"][1:]))
        yield from cast(list[RunRecord], group)
