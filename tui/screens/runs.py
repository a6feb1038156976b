"""The runs dashboard (default view): every run with a live loss sparkline, the event log,
and the engine and hardware line.

The table reads what it draws: its rows are a `RunsWindow` (tui/runs_view.py) over the
catalogue, so the newest runs show at once however many there are, older ones are read a
segment at a time as the table scrolls to them, and a run's cells (its sparkline a string of
block characters) are computed only while it is on screen. `/` filters and `s`/`S` sort over
every run through a scan in a worker thread. Rows follow what the app pushes (catalogue reads
at most twice a second, followed metrics, a clock); the cursor stays on its run when runs
arrive. `space` marks runs and `C` compares the marked ones (screens/compare.py); a tags column
appears once some run has tags. On an empty workspace a two-line hint says how to queue a
first run and that the engine keeps going after the terminal closes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from trialdeck.tui import messages
from trialdeck.tui.keymap import bind
from trialdeck.tui.live import CANCELLABLE, LiveRun, resumable, run_row, tags_text
from trialdeck.tui.probes import status_text
from trialdeck.tui.runs_view import SORTS, Columns, Query, RunsWindow, scan
from trialdeck.tui.screens.base import LiveScreen
from trialdeck.tui.widgets.event_log import EventLog
from trialdeck.tui.widgets.filter_bar import FilterBar
from trialdeck.tui.widgets.live_table import STATE_STYLES, Column, LiveTable
from trialdeck.tui.widgets.mode_bar import ModeBar

CELLS_KEPT = 2048
"""Rows' computed cells kept between updates (those on screen are recomputed only when their run changes)."""
TICK_SECONDS = 1.0
"""How often the running rows are redrawn (their time counts on)."""


class RunsTable(LiveTable):
    COLUMNS = (("id", "id", 6), ("state", "state", 13), ("preset", "preset", 20), ("loss", "loss", 16),
               ("epoch", "epoch", 9), ("val_acc", "val_acc", 7), ("best", "best", 7), ("kept", "kept", 4),
               ("slot", "slot", 8), ("elapsed", "elapsed", 8))
    STYLED = {"state": STATE_STYLES}
    COLUMN_STYLES = {"loss": "cyan"}
    # At 80 columns: id, state, preset, loss, epoch and val_acc whole; best, the kept epoch, slot
    # and elapsed are in the run's detail (enter) and come back on a wider terminal.
    SHRINK = {"preset": 14}
    DROP = ("slot", "kept", "best", "elapsed", "tags")
    CUT_LEFT = frozenset({"slot"})  # a Dask worker named by its address: its port tells workers of a host apart
    TAGS: Column = ("tags", "tags", 16)
    """Shown only while some run has tags (the cells' last one)."""


class RunRows:
    """The runs table's `RowSource`: the window's runs, each row computed when it is drawn."""

    def __init__(self, window: RunsWindow, live: Mapping[str, LiveRun], now: float, tagged: bool,
                 cache: dict[str, tuple[Any, tuple[str, ...]]]) -> None:
        self.window, self.live, self.now, self.tagged, self.cache = window, live, now, tagged, cache

    def __len__(self) -> int:
        return len(self.window)

    def key(self, i: int) -> str:
        n = self.window.number_at(i)
        return f"r{n}" if n is not None else f"?{i}"

    def cells(self, i: int) -> tuple[str, ...]:
        brief = self.window.brief(i)
        if brief is None:  # a segment replaced meanwhile: the next catalogue read fills it
            return (self.key(i), "…")
        run_id = brief["id"]
        live = self.live.get(run_id)
        mark = (brief, live, self.tagged)
        hit = self.cache.get(run_id)
        # A finished row only changes with its brief; a running one also with the clock.
        if hit is None or hit[0] != mark or brief.get("state") == "running":
            row = run_row(brief, live, self.now)
            hit = self.cache[run_id] = (mark, (*row, tags_text(brief)) if self.tagged else row)
        return hit[1]

    def index(self, key: str) -> int | None:
        return self.window.index(key) if key[:1] == "r" else None


def first_run_hint(mode_keys: tuple[str, ...], queue_key: str) -> Text:
    """What an empty workspace's runs view says, in two lines of at most 76 characters (the keys
    as keys.toml set them)."""
    return Text.assemble("No runs yet. Press ", (mode_keys[1], "bold"), " for the presets, then ",
                         (queue_key, "bold"), " to queue the one highlighted.\n",
                         "Runs train in a background engine that goes on after this terminal closes.")


class RunsScreen(LiveScreen):
    """Runs, newest first. enter opens one; c cancels; r queues it again; / filters; s/S sort."""

    _filter = ""
    _status_text = ""

    def __init__(self) -> None:
        super().__init__()
        self._cells: dict[str, tuple[Any, tuple[str, ...]]] = {}
        """run id -> (what its row was computed from, the row)."""
        self._window: RunsWindow | None = None
        self._columns: Columns | None = None
        self._query = Query()
        self._wanted = Query()
        """The query typed or chosen; `_query` is the one shown (a scan may still be on its way)."""
        self._seen: tuple | None = None

    BINDINGS = [
        bind("open", "open_run", priority=True),
        bind("cancel"),
        bind("queue", "requeue", description="Run again", short="Rerun"),
        bind("resume", short="Resume"),
        bind("filter"),
        bind("mark", short="Mark"),
        # Not in the footer (it is full at 80 columns): the status line says "C compares" once two
        # are marked, and the sort it shows; ? lists them.
        bind("compare", show=False),
        bind("sort", show=False),
        bind("reverse", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield ModeBar("runs", id="mode-bar")
        yield Static("", id="runs-hint")
        yield RunsTable(id="runs-table")
        yield EventLog(id="event-log")
        yield Static("", id="status-line")
        yield FilterBar("words to match: id, state, preset, slot, #tag, note, archived", id="runs-filter")
        yield Footer()

    def on_mount(self) -> None:
        self._ready = True
        self.set_interval(TICK_SECONDS, self._tick)
        store = self.ctx.store
        self._window = RunsWindow(store.segment_briefs)
        self._columns = Columns(store.segment_briefs)
        self.query_one("#runs-filter").display = False
        self.query_one("#runs-hint").display = False
        self.query_one(EventLog).border_title = "events"
        self.query_one(RunsTable).focus()
        self.query_one(EventLog).entries = self.entries
        self.watch_catalog()

    # -- data pushed by the app --------------------------------------------------------------

    def watch_catalog(self) -> None:
        if self.catalog is None or not self._ready or self._window is None:
            return
        seen = (id(self.catalog.briefs), tuple(e["index"] for e in self.catalog.segments))
        if seen != self._seen:
            self._seen = seen
            self._window.update(self.catalog.briefs, self.catalog.segments)
            if not self._wanted.default:
                self._scan()
        self._refresh_rows()

    def watch_live(self) -> None:
        self._refresh_rows()

    def watch_status(self) -> None:
        if self._ready:
            self._refresh_status()

    def _tick(self) -> None:
        """Every second: a running row's time counts on (a script run may log nothing for minutes,
        and nothing else would redraw its row)."""
        if self._ready and self.catalog is not None and self.catalog.active_ids and self.is_current:
            self._refresh_rows()

    def watch_entries(self, entries) -> None:
        if self._ready:
            self.query_one(EventLog).entries = entries

    def _refresh_rows(self) -> None:
        if self.catalog is None or not self._ready or self._window is None:
            return
        tagged = self.catalog.tagged
        if len(self._cells) > CELLS_KEPT:
            self._cells = {}
        table = self.query_one(RunsTable)
        table.set_columns(RunsTable.COLUMNS + ((RunsTable.TAGS,) if tagged else ()))  # the cursor keeps its run
        table.show_source(RunRows(self._window, self.live, self.now(), tagged, self._cells))
        self._show_hint(not self.catalog.runs and not self.catalog.segments)
        self._refresh_status()
        self.sync_bindings()

    # -- filter and sort: a scan of every run, off the UI thread --------------------------------

    def _ask(self, query: Query) -> None:
        self._wanted = query
        if query.default:
            self._show_query(query, None)
        else:
            self._scan()

    def _scan(self) -> None:
        window, columns, query = self._window, self._columns, self._wanted
        catalog = self.catalog
        if window is None or columns is None or catalog is None:
            return
        briefs, segments = catalog.briefs, catalog.segments

        def run() -> tuple[Query, list[int] | None]:
            worker = get_current_worker()
            return query, scan(query, briefs, segments, columns, lambda: worker.is_cancelled)

        self.spawn(run, self._scanned, name="runs-scan")

    def _scanned(self, result: tuple[Query, list[int] | None]) -> None:
        query, numbers = result
        if numbers is not None and query == self._wanted:
            self._show_query(query, numbers)

    def _show_query(self, query: Query, numbers: list[int] | None) -> None:
        if self._window is None:
            return
        self._query = query
        self._window.set_query(query, numbers)
        self._refresh_rows()

    def _show_hint(self, empty: bool) -> None:
        hint = self.query_one("#runs-hint", Static)
        if empty and not hint.display:
            modes = getattr(self.app, "mode_keys", lambda: ("1", "2", "3", "4"))()
            hint.update(first_run_hint(modes, self.key_for("queue")))
        hint.display = empty

    def _refresh_status(self) -> None:
        engine, hw = self.status if self.status is not None else (None, None)
        counts = self.catalog.counts if self.catalog is not None else {}
        text = status_text(engine, hw, counts, self.now())
        shown = self.query_one(RunsTable).row_count
        total = self.catalog.total if self.catalog is not None else 0
        query = self._query
        if query.words or self._wanted != query:
            text += f" │ {'filtering… ' if self._wanted != query else ''}showing {shown:,} of {total:,}"
        if not (query.sort == "id" and query.descending):
            text += f" │ by {query.sort} {'↓' if query.descending else '↑'}"
        marked = len(self.query_one(RunsTable).marked)
        if marked:  # first: at 80 columns the end of the line is cut
            compares = self.key_for("compare")
            text = f"{marked} marked" + (f" ({compares} compares)" if marked >= 2 else "") + " │ " + text
        if text != self._status_text:  # only when it changed (marking a run changes it each press)
            self._status_text = text
            # layout=False: one line of fixed height; a re-layout of the whole screen costs ~10 ms.
            self.query_one("#status-line", Static).update(Text(text), layout=False)

    # -- actions -----------------------------------------------------------------------------

    def _selected(self) -> Mapping[str, Any] | None:
        """The highlighted run: its record from the working set, else its brief (id, state, study...)."""
        key = self.query_one(RunsTable).current_key
        if not key or self.catalog is None or self._window is None:
            return None
        found = self.catalog.by_id.get(key)
        if found is not None:
            return found
        return self._window.brief_of(int(key[1:])) if key[1:].isdigit() else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("open_run", "filter", "mark", "compare", "sort", "reverse") and self.typing:
            return False  # enter, / and space belong to the filter input then
        if action == "mark":
            return True if self._selected() is not None else None
        if action == "compare":
            return True if len(self.query_one(RunsTable).marked) >= 2 else None
        if action in ("open_run", "requeue"):
            return True if self._selected() is not None else None
        if action == "cancel":
            run = self._selected()
            return True if run is not None and run["state"] in CANCELLABLE else None
        if action == "resume":
            run = self._selected()
            return resumable(dict(run) if run is not None else None)  # hidden unless the run can be resumed
        return True

    def action_open_run(self) -> None:
        run = self._selected()
        if run is not None:
            self.post_message(messages.OpenRun(run["id"]))

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        event.stop()
        self.action_open_run()

    def on_live_table_highlighted(self, event: LiveTable.Highlighted) -> None:
        self.sync_bindings()

    def action_cancel(self) -> None:
        run = self._selected()
        if run is not None:
            self.post_message(messages.CancelRun(run["id"]))

    def action_requeue(self) -> None:
        run = self._selected()
        if run is not None:
            self.post_message(messages.RequeueRun(run["id"]))

    def action_resume(self) -> None:
        run = self._selected()
        if run is not None:
            self.post_message(messages.ResumeRun(run["id"]))

    def action_mark(self) -> None:
        """Mark (or unmark) the highlighted run and move down, so a run of rows is marked with repeated presses."""
        table = self.query_one(RunsTable)
        if table.current_key is not None:
            table.toggle_mark()
            table.action_cursor(1)

    def on_live_table_marks_changed(self, event: LiveTable.MarksChanged) -> None:
        self._refresh_status()
        self.sync_bindings()

    def action_compare(self) -> None:
        marked = self.query_one(RunsTable).marked
        if len(marked) >= 2:
            self.post_message(messages.CompareRuns(marked))

    def action_filter(self) -> None:
        self.query_one(FilterBar).open()

    def on_filter_bar_changed(self, event: FilterBar.Changed) -> None:
        self._filter = event.text
        self._ask(Query.of(event.text, self._wanted.sort, self._wanted.descending))

    def on_filter_bar_closed(self, event: FilterBar.Closed) -> None:
        self.query_one(RunsTable).focus()

    def action_sort(self) -> None:
        """Sort by the next column (numbers and names high to low; `S` turns it around)."""
        now = self._wanted.sort
        column = SORTS[(SORTS.index(now) + 1) % len(SORTS)] if now in SORTS else SORTS[0]
        self._ask(Query(self._wanted.words, column, True))

    def action_reverse(self) -> None:
        self._ask(Query(self._wanted.words, self._wanted.sort, not self._wanted.descending))

    def on_live_table_header_clicked(self, event: LiveTable.HeaderClicked) -> None:
        column = {"loss": "id", "tags": "id"}.get(event.column, event.column)
        descending = not self._wanted.descending if column == self._wanted.sort else True
        self._ask(Query(self._wanted.words, column, descending))
