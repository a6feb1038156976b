"""The runs table's rows: every run of the catalogue in the table's order, read a segment at a time.

One job: answer "how many rows, and which run is at row i" for the runs view without loading the
catalogue. Nothing here imports textual; reads go through the Store (`Store.segment_briefs`, an
index file of ~80 KB per 256 runs, cached by the store), so the view is tested as plain logic.

- Newest first and unfiltered (the default), rows are blocks, one per segment of 256 run numbers,
  newest segment first: the working set's runs of that range plus the segment's runs that are not
  archived, whose count the registry gives. Row i is found by the block sizes alone; only the
  blocks on screen are read. The first screen of 100,000 runs reads one index file.
- Filtered (`/` words) or sorted by another column, the rows are a list of run numbers made by a
  `scan` of every segment's briefs (in a worker thread): the text each brief is matched on, and
  the column sorted by, are kept per segment version, so the next keystroke or a new run does not
  read the segments again.
- Archived runs are left out unless a filter word is `archived` (their text says so).
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trialdeck.engine.catalogue.segments import segment_of

Brief = Mapping[str, Any]
ARCHIVED_WORD = "archived"
SORTS = ("id", "state", "preset", "epoch", "val_acc", "best", "kept", "slot", "elapsed")
"""The columns the runs table sorts by (`s` cycles through them)."""


def number(run_id: str) -> int:
    return int(run_id[1:]) if run_id[1:].isdigit() else 0


def haystack(brief: Brief) -> str:
    """The text `/` matches a run on: id, state, preset, slot, study, #tags, note, and "archived"."""
    tags = " ".join(f"#{t}" for t in brief.get("tags") or ())
    return (f"{brief.get('id', '')} {brief.get('state', '')} {brief.get('preset', '')} "
            f"{brief.get('slot') or brief.get('device') or ''} {brief.get('study') or brief.get('imported_study') or ''} "
            f"{tags} {brief.get('note') or ''}{' ' + ARCHIVED_WORD if brief.get('archived') else ''}").lower()


def sort_key(brief: Brief, column: str) -> Any:
    """What a column sorts a run by (None: the run has no value there; such runs go last)."""
    if column == "id":
        return number(str(brief.get("id", "r0")))
    if column == "epoch":
        return brief.get("epochs")
    if column == "best":
        return brief.get("best_val_acc")
    if column == "kept":
        return brief.get("kept_epoch")
    if column == "slot":
        return brief.get("slot") or brief.get("device")
    if column == "elapsed":
        start, end = brief.get("started_at"), brief.get("finished_at") or brief.get("interrupted_at")
        return end - start if isinstance(start, (int, float)) and isinstance(end, (int, float)) else None
    return brief.get(column)


@dataclass(frozen=True)
class Query:
    """What the table shows: the runs matching every word, sorted by a column."""

    words: tuple[str, ...] = ()
    sort: str = "id"
    descending: bool = True

    @classmethod
    def of(cls, text: str, sort: str = "id", descending: bool = True) -> Query:
        return cls(tuple(text.lower().split()), sort, descending)

    @property
    def default(self) -> bool:
        """Newest first, unfiltered: answered from block sizes, without a scan."""
        return not self.words and self.sort == "id" and self.descending

    @property
    def archived(self) -> bool:
        return ARCHIVED_WORD in self.words

    def matches(self, text: str) -> bool:
        return all(w in text for w in self.words)


def _live(entry: Mapping[str, Any]) -> int:
    return int(entry.get("runs") or 0) - int(entry.get("archived") or 0)


@dataclass
class _Columns:
    """One segment version's briefs as the scan needs them: numbers, match text, sort keys."""

    numbers: list[int]
    texts: list[str]
    archived: list[bool]
    keys: dict[str, list[Any]] = field(default_factory=dict)


class Columns:
    """Scan columns per segment version (by index file name: a version never changes). Used by one
    scan at a time (the view's exclusive worker)."""

    def __init__(self, read: Callable[[Mapping[str, Any]], Mapping[str, Brief]], keep: int = 1024) -> None:
        self.read = read
        self.keep = keep
        self._items: OrderedDict[str, _Columns] = OrderedDict()
        self._query: Query | None = None
        self._found: dict[str, list[tuple[Any, int]]] = {}
        # A cancelled scan's thread may still be finishing when the next one starts.
        self._lock = threading.Lock()

    def of(self, entry: Mapping[str, Any], column: str) -> _Columns:
        with self._lock:
            return self._of(entry, column)

    def matches(self, entry: Mapping[str, Any], query: Query) -> list[tuple[Any, int]]:
        """(sort key, run number) of the segment's runs `query` shows; kept for the last query, so a
        rescan after a catalogue read (a run started or ended) reads only segment versions it has not
        seen under this query."""
        with self._lock:
            if query != self._query:
                self._query, self._found = query, {}
            hit = self._found.get(entry["index"])
            if hit is None:
                cols = self._of(entry, query.sort)
                keys = cols.keys[query.sort]
                hit = self._found[entry["index"]] = [
                    (key, n) for n, text, archived, key in zip(cols.numbers, cols.texts, cols.archived, keys)
                    if (query.archived or not archived) and query.matches(text)]
            return hit

    def _of(self, entry: Mapping[str, Any], column: str) -> _Columns:
        name = entry["index"]
        cols = self._items.get(name)
        if cols is None or column not in cols.keys:
            briefs = self.read(entry)
            if cols is None:
                cols = _Columns([int(k) for k in briefs], [haystack(b) for b in briefs.values()],
                                [bool(b.get("archived")) for b in briefs.values()])
            cols.keys[column] = [sort_key(b, column) for b in briefs.values()]
            self._items[name] = cols
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        self._items.move_to_end(name)
        return cols


def scan(query: Query, working: Mapping[str, Brief], segments: Sequence[Mapping[str, Any]], columns: Columns,
         cancelled: Callable[[], bool] = lambda: False) -> list[int] | None:
    """The run numbers `query` shows, in order: every segment's briefs and the working set's,
    matched and sorted. None if `cancelled` said so midway (a newer query came)."""
    found: list[tuple[Any, int]] = []
    column = query.sort
    for entry in segments:
        if cancelled():
            return None
        if not entry.get("runs") or (not query.archived and _live(entry) <= 0):
            continue
        found += columns.matches(entry, query)
    for brief in working.values():
        if (query.archived or not brief.get("archived")) and query.matches(haystack(brief)):
            found.append((sort_key(brief, column), number(str(brief.get("id", "r0")))))
    present = [f for f in found if f[0] is not None]
    absent = [f for f in found if f[0] is None]
    present.sort(reverse=query.descending)
    absent.sort(key=lambda f: f[1], reverse=True)
    return [n for _, n in present] + [n for _, n in absent]


class RunsWindow:
    """The rows of the runs table: `len`, the brief at a position, the position of a run.

    `update` takes each catalogue read (the working set's briefs and the registry of segments);
    `set_numbers` takes a scan's result for a filtered or sorted query.
    """

    def __init__(self, read: Callable[[Mapping[str, Any]], Mapping[str, Brief]], blocks_kept: int = 16) -> None:
        self.read = read
        self.query = Query()
        self.working: Mapping[str, Brief] = {}
        self.segments: tuple[Mapping[str, Any], ...] = ()
        self._by_segment: dict[int, Mapping[str, Any]] = {}
        self._total = 0
        self._numbers: list[int] | None = None
        self._position: dict[int, int] | None = None
        # Default order: (segment, its rows' count, its working-set runs newest first), newest segment first.
        self._blocks: list[tuple[int, int, list[int]]] = []
        self._block_of: dict[int, int] = {}
        self._starts: list[int] = []
        self._rows: OrderedDict[tuple[int, str | None], list[int]] = OrderedDict()
        self._blocks_kept = blocks_kept
        self.missing = False
        """A segment version was gone when read (replaced twice): the next catalogue read fixes it."""

    # -- inputs ------------------------------------------------------------------------------

    def update(self, working: Mapping[str, Brief], segments: Iterable[Mapping[str, Any]]) -> None:
        self.working = working
        self.segments = tuple(segments)
        self._by_segment = {int(e["segment"]): e for e in self.segments}
        self._rows.clear()
        self.missing = False
        self._make_blocks()

    def set_query(self, query: Query, numbers: list[int] | None = None) -> None:
        """Show `query`: the default needs nothing else; any other needs its scan's `numbers`."""
        self.query = query
        self._numbers = None if query.default else list(numbers or [])
        self._position = None

    def _make_blocks(self) -> None:
        mine: dict[int, list[int]] = {}
        for run_id, brief in self.working.items():
            if not brief.get("archived"):
                n = number(run_id)
                mine.setdefault(segment_of(n), []).append(n)
        sealed = {int(e["segment"]): _live(e) for e in self.segments}
        blocks = []
        for k in sorted(set(mine) | set(sealed), reverse=True):
            own = sorted(mine.get(k, []), reverse=True)
            size = len(own) + max(0, sealed.get(k, 0))
            if size:
                blocks.append((k, size, own))
        self._blocks = blocks
        starts, total = [], 0
        for _, size, _ in blocks:
            starts.append(total)
            total += size
        self._starts = starts
        self._total = total
        self._block_of = {k: b for b, (k, _, _) in enumerate(blocks)}

    # -- rows --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._total if self._numbers is None else len(self._numbers)

    def number_at(self, i: int) -> int | None:
        if self._numbers is not None:
            return self._numbers[i] if 0 <= i < len(self._numbers) else None
        if not 0 <= i < self._total:
            return None
        b = bisect.bisect_right(self._starts, i) - 1
        k, size, own = self._blocks[b]
        rows = self._block_rows(k, own)
        j = i - self._starts[b]
        return rows[j] if j < len(rows) else None

    def _entry(self, k: int) -> Mapping[str, Any] | None:
        return self._by_segment.get(k)

    def _sealed(self, k: int) -> Mapping[str, Brief]:
        entry = self._entry(k)
        if entry is None:
            return {}
        try:
            return self.read(entry)
        except FileNotFoundError:
            self.missing = True
            return {}

    def _block_rows(self, k: int, own: list[int]) -> list[int]:
        """The run numbers of block k, newest first (the working set's and the segment's live ones)."""
        entry = self._entry(k)
        name = entry["index"] if entry is not None else None
        rows = self._rows.get((k, name))
        if rows is None:
            sealed = [int(key) for key, b in self._sealed(k).items() if not b.get("archived")]
            rows = sorted(set(own) | set(sealed), reverse=True)
            self._rows[(k, name)] = rows
            while len(self._rows) > self._blocks_kept:
                self._rows.popitem(last=False)
        return rows

    def brief(self, i: int) -> Brief | None:
        n = self.number_at(i)
        return None if n is None else self.brief_of(n)

    def brief_of(self, n: int) -> Brief | None:
        run_id = f"r{n}"
        if run_id in self.working:
            return self.working[run_id]
        return self._sealed(segment_of(n)).get(str(n))

    def index(self, run_id: str) -> int | None:
        n = number(run_id)
        if self._numbers is not None:
            if self._position is None:
                self._position = {m: i for i, m in enumerate(self._numbers)}
            return self._position.get(n)
        b = self._block_of.get(segment_of(n))
        if b is None:
            return None
        k, _, own = self._blocks[b]
        rows = self._block_rows(k, own)
        j = _find_descending(rows, n)
        return None if j is None else self._starts[b] + j

    @property
    def total(self) -> int:
        """Every run the default view counts (not archived)."""
        return len(self.working) - sum(1 for b in self.working.values() if b.get("archived")) + \
            sum(max(0, _live(e)) for e in self.segments)


def _find_descending(rows: list[int], n: int) -> int | None:
    lo, hi = 0, len(rows)
    while lo < hi:
        mid = (lo + hi) // 2
        if rows[mid] > n:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < len(rows) and rows[lo] == n else None

