"""The runs table's window over the catalogue (tui/runs_view.py), as plain logic: a fake registry of
segments and their briefs, no Textual, no files."""

from __future__ import annotations

from typing import Any

from trialdeck.tui.runs_view import Columns, Query, RunsWindow, haystack, scan


def _brief(n: int, **fields: Any) -> dict[str, Any]:
    return {"id": f"r{n}", "state": "completed", "preset": "p", "epochs": n % 7, **fields}


class Segments:
    """Segment k -> its briefs; registry entries as the store writes them; counts what was read."""

    def __init__(self, briefs: dict[int, dict[str, dict[str, Any]]]) -> None:
        self.briefs = briefs
        self.reads: list[int] = []

    def entries(self) -> tuple[dict[str, Any], ...]:
        return tuple({"segment": k, "index": f"runs-{k:05d}-g1.index.json", "runs": len(b),
                      "archived": sum(1 for x in b.values() if x.get("archived"))} for k, b in sorted(self.briefs.items()))

    def read(self, entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
        self.reads.append(entry["segment"])
        return self.briefs[entry["segment"]]


def _world() -> tuple[Segments, dict[str, dict[str, Any]]]:
    """Runs 1..600 sealed (segment 0: 1..255, 1: 256..511, 2: 512..600) but 300 and 599 (in the working
    set: resumed) and 10..19 archived; 601..605 in the working set."""
    sealed: dict[int, dict[str, dict[str, Any]]] = {}
    for n in range(1, 601):
        if n in (300, 599):
            continue
        sealed.setdefault(n // 256, {})[str(n)] = _brief(n, **({"archived": True} if 10 <= n < 20 else {}))
    working = {f"r{n}": _brief(n, state="queued") for n in (300, 599, 601, 602, 603, 604, 605)}
    return Segments(sealed), working


def test_newest_first_by_blocks_reading_only_the_segments_shown() -> None:
    segments, working = _world()
    window = RunsWindow(segments.read)
    window.update(working, segments.entries())
    assert len(window) == 605 - 10 == window.total
    assert [window.number_at(i) for i in range(7)] == [605, 604, 603, 602, 601, 600, 599]
    assert segments.reads == [2]  # the newest segment only
    assert window.brief(6)["state"] == "queued"  # r599 is the working set's
    assert window.index("r300") == 605 - 300 and window.number_at(window.index("r300")) == 300
    assert window.number_at(len(window) - 1) == 1 and window.index("r15") is None  # archived: not shown
    assert window.index("r20") == len(window) - 10 and window.number_at(len(window) - 10) == 20
    assert window.number_at(len(window)) is None


def test_a_new_run_is_a_new_first_row_and_positions_follow_their_runs() -> None:
    segments, working = _world()
    window = RunsWindow(segments.read)
    window.update(working, segments.entries())
    before = window.index("r400")
    window.update({**working, "r606": _brief(606, state="queued")}, segments.entries())
    assert window.number_at(0) == 606 and window.index("r400") == before + 1


def test_scan_filters_and_sorts_over_every_run() -> None:
    segments, working = _world()
    columns = Columns(segments.read)
    assert scan(Query.of("r60"), working, segments.entries(), columns) == [605, 604, 603, 602, 601, 600, 60]
    assert scan(Query.of("queued"), working, segments.entries(), columns) == [605, 604, 603, 602, 601, 599, 300]
    assert scan(Query.of("archived"), working, segments.entries(), columns) == list(range(19, 9, -1))
    assert scan(Query.of("archived r1"), working, segments.entries(), columns) == list(range(19, 9, -1))
    by_epochs = scan(Query((), "epoch", True), working, segments.entries(), columns)
    assert len(by_epochs) == 595
    keys = [n % 7 for n in by_epochs]
    assert keys == sorted(keys, reverse=True)
    ascending = scan(Query((), "epoch", False), working, segments.entries(), columns)
    assert [n % 7 for n in ascending] == sorted(n % 7 for n in ascending)


def test_runs_without_a_value_sort_last_and_a_cancelled_scan_gives_up() -> None:
    segments, working = _world()
    working["r601"] = {"id": "r601", "state": "queued"}  # no epochs yet
    columns = Columns(segments.read)
    order = scan(Query((), "epoch", True), working, segments.entries(), columns)
    assert order[-1] == 601
    assert scan(Query.of("r1"), working, segments.entries(), columns, cancelled=lambda: True) is None


def test_a_scan_reads_each_segment_version_once() -> None:
    segments, working = _world()
    columns = Columns(segments.read)
    scan(Query.of("r5"), working, segments.entries(), columns)
    scan(Query.of("r55"), working, segments.entries(), columns)
    scan(Query((), "epoch", True), working, segments.entries(), columns)
    assert sorted(segments.reads) == [0, 0, 1, 1, 2, 2]  # text once, and the epochs column once


def test_what_the_filter_matches() -> None:
    text = haystack({"id": "r7", "state": "failed", "preset": "seed/dropout", "slot": "cpu.0", "study": "s1",
                     "tags": ["best", "lr-sweep"], "note": "Try Patience 10", "archived": True})
    assert text == "r7 failed seed/dropout cpu.0 s1 #best #lr-sweep try patience 10 archived"
    assert Query.of("#BEST patience").matches(text) and not Query.of("#worst").matches(text)
