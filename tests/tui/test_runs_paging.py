"""The runs table over a catalogue of sealed runs, through Pilot: it reads what it shows.

A seeded workspace (tui.testing) plus 1,000 finished runs added with `runs import`'s code
(segments of 256 runs, so four index files). What a user checks: every run is a row, newest
first; the first screen reads one segment's briefs, not all of them; End reaches the oldest run;
`/` and `s` work over every run; archived runs show only for the filter word `archived`; and the
cursor stays on its run when a new run arrives above it (issue 28, item 8).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tui.conftest import SIZE, loaded, new_app, screen_name
from trialdeck.engine.catalogue import records
from trialdeck.engine.catalogue.store import Store
from trialdeck.engine.workspace import Workspace
from trialdeck.tui.testing import seed_workspace, wait_for

IMPORTED = 1000
TABLE = "#runs-table"


def _records(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            hist = [{"epoch": e, "train_loss": 2.0 / (e + i % 5), "val_loss": 1.5 / (e + 1), "val_acc": 0.5 + i / (4 * n),
                     "lr": 0.1, "seconds": 1.0} for e in range(1, 4)]
            f.write(json.dumps({"id": f"r{i + 1}", "preset": "seed/dropout", "state": "completed",
                                "config": {"train": {"epochs": 3}}, "history": hist, "summary": None,
                                "tags": ["imported", *(["odd"] if i % 2 else [])], "note": None,
                                "created_at": 1.6e9 + i, "started_at": 1.6e9 + i, "finished_at": 1.6e9 + i + 3}) + "\n")
    return path


@pytest.fixture
def big(ws: Workspace, utc: None, tmp_path: Path) -> tuple[Workspace, dict[str, str]]:
    """The seeded runs r1..r10, then 1,000 imported ones r11..r1010 (sealed: none in catalog.json)."""
    ids = seed_workspace(ws)
    records.import_records(Store(ws), _records(tmp_path / "runs.jsonl", IMPORTED))
    return ws, ids


def _reads(app) -> list[str]:
    """Index files the app's store reads from now on (a spy on Store.segment_briefs)."""
    store = app.ctx.store
    seen: list[str] = []
    original = store.segment_briefs

    def spy(entry):
        seen.append(entry["index"])
        return original(entry)

    store.segment_briefs = spy
    return seen


def _row_ids(tbl, n: int) -> list[str]:
    return [tbl.keys[i] for i in range(n)] if tbl.row_count < 100 else [tbl._source.key(i) for i in range(n)]


async def test_every_run_is_a_row_and_the_first_screen_reads_one_segment(big):
    ws, ids = big
    app = new_app(ws)
    reads = _reads(app)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = app.screen.query_one(TABLE)
        await wait_for(pilot, lambda: tbl.row_count == IMPORTED + 10, what="every run counted")
        assert _row_ids(tbl, 3) == ["r1010", "r1009", "r1008"]
        assert tbl.cells("r1010")[:5] == ("r1010", "completed", "seed/dropout", tbl.cells("r1010")[3], "3/3")
        assert set(tbl.cells("r1010")[3]) <= set("▁▂▃▄▅▆▇█") and len(tbl.cells("r1010")[3]) == 3
        assert len(set(reads)) == 1, reads  # the newest segment's index only
        await pilot.press("end")
        await wait_for(pilot, lambda: tbl.current_key == "r1", what="the oldest run")
        assert tbl.cells(ids["completed"])[1] == "completed"  # a seeded run, where it belongs: last rows
        await pilot.press("home", "pagedown")
        assert tbl.current_key == f"r{1010 - (tbl.size.height - 2)}"


async def test_filter_and_sort_go_through_every_run(big):
    ws, ids = big
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = app.screen.query_one(TABLE)
        await wait_for(pilot, lambda: tbl.row_count == IMPORTED + 10, what="rows")
        await pilot.press("slash", *"#odd", "enter")
        await wait_for(pilot, lambda: tbl.row_count == IMPORTED // 2, what="the odd ones")
        assert _row_ids(tbl, 2) == ["r1010", "r1008"]
        await pilot.press("slash", "ctrl+u", *"r77", "enter")
        await wait_for(pilot, lambda: tbl.row_count == 11, what="r77 and r770..r779")
        assert tbl.keys[0] == "r779" and tbl.keys[-1] == "r77"
        await pilot.press("slash", "ctrl+u", "escape")
        await wait_for(pilot, lambda: tbl.row_count == IMPORTED + 10, what="the filter cleared")
        for _ in range(4):  # from id: state, preset, epoch, val_acc
            await pilot.press("s")
        await wait_for(pilot, lambda: app.screen._query.sort == "val_acc", what="sorted by val_acc")
        assert tbl.current_key is not None
        # The highest last val_acc first (among equal ones, the newest run).
        best = max(Store(ws).iter_runs(), key=lambda r: ((r["history"] or [{}])[-1].get("val_acc") or 0, int(r["id"][1:])))
        assert _row_ids(tbl, 1) == [best["id"]]
        assert "by val_acc ↓" in app.screen._status_text
        await pilot.press("S")
        await wait_for(pilot, lambda: not app.screen._query.descending, what="reversed")
        assert tbl.cells(_row_ids(tbl, 1)[0])[5] <= tbl.cells(_row_ids(tbl, 2)[1])[5]


async def test_archived_runs_show_only_for_the_word_archived(big):
    ws, ids = big
    store = Store(ws)
    done = records.archive(store, numbers=range(11, 111))
    assert len(done.changed) == 100
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = app.screen.query_one(TABLE)
        await wait_for(pilot, lambda: tbl.row_count == IMPORTED + 10 - 100, what="archived runs left out")
        await pilot.press("slash", *"archived", "enter")
        await wait_for(pilot, lambda: tbl.row_count == 100, what="the archived runs")
        assert _row_ids(tbl, 1) == ["r110"]


async def test_the_cursor_stays_on_its_run_when_a_new_run_arrives_above_it(big):
    ws, ids = big
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = app.screen.query_one(TABLE)
        await wait_for(pilot, lambda: tbl.row_count == IMPORTED + 10, what="rows")
        await pilot.press("down", "down", "down")
        assert tbl.current_key == "r1007" and tbl.cursor_row == 3
        Store(ws).create_run(preset="seed/step-decay", config={}, config_hash="h")  # r1011, at the top
        await wait_for(pilot, lambda: tbl.row_count == IMPORTED + 11, what="the new run")
        assert _row_ids(tbl, 1) == ["r1011"]
        assert tbl.current_key == "r1007" and tbl.cursor_row == 4
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "RunDetailScreen" and app.screen.record is not None,
                       what="the run detail")
        assert app.screen.record["id"] == "r1007"


async def test_sealed_runs_marked_far_down_open_in_the_compare_view(big):
    ws, ids = big
    app = new_app(ws)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        tbl = app.screen.query_one(TABLE)
        await wait_for(pilot, lambda: tbl.row_count == IMPORTED + 10, what="rows")
        await pilot.press("end", *["up"] * 14)  # the oldest rows: the seeded r1..r10, then imported (sealed) runs
        assert tbl.current_key == "r15"
        await pilot.press("space", "space")
        assert tbl.marked == ("r15", "r14")
        await pilot.press("C")
        await wait_for(pilot, lambda: screen_name(app) == "CompareScreen" and app.screen.loaded, what="the compare view")
        plot = app.screen.query_one("#compare-plot")
        assert len(plot.series) == 2 and all(len(s.xs) == 3 for s in plot.series)
