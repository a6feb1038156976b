"""The runs dashboard (default view): every run with a live loss sparkline, the event log,
and the engine and hardware line.

Rows are recomputed from what the app pushes (catalogue reads at most twice a
second, followed metrics, a clock) and applied cell by cell; a run's
sparkline is a string of block characters in its row. `space` marks runs and
`C` compares the marked ones (screens/compare.py); a tags column appears once
some run has tags. On an empty workspace a two-line hint says how to queue a
first run and that the engine keeps going after the terminal closes.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Footer, Static

from trialdeck.tui import messages
from trialdeck.tui.keymap import bind
from trialdeck.tui.live import CANCELLABLE, Catalog, resumable, run_number, run_row, tags_text
from trialdeck.tui.probes import status_text
from trialdeck.tui.screens.base import LiveScreen
from trialdeck.tui.widgets.event_log import EventLog
from trialdeck.tui.widgets.filter_bar import FilterBar
from trialdeck.tui.widgets.live_table import STATE_STYLES, Column, LiveTable
from trialdeck.tui.widgets.mode_bar import ModeBar

MAX_ROWS = 500
"""Newest runs shown (plus every active one); filter with `/` to reach older ones."""
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


def matches(run: dict, words: list[str]) -> bool:
    hay = (f"{run['id']} {run['state']} {run.get('preset', '')} {run.get('slot') or ''} {run.get('study') or ''} "
           f"{tags_text(run)} {run.get('note') or ''}").lower()
    return all(w in hay for w in words)


def first_run_hint(mode_keys: tuple[str, ...], queue_key: str) -> Text:
    """What an empty workspace's runs view says, in two lines of at most 76 characters (the keys
    as keys.toml set them)."""
    return Text.assemble("No runs yet. Press ", (mode_keys[1], "bold"), " for the presets, then ",
                         (queue_key, "bold"), " to queue the one highlighted.\n",
                         "Runs train in a background engine that goes on after this terminal closes.")


def visible_runs(catalog: Catalog, text: str, limit: int = MAX_ROWS) -> list[dict]:
    """Runs to show, newest first: those matching `text`, at most `limit` plus every running one."""
    words = text.lower().split()
    runs = [r for r in catalog.runs if matches(r, words)] if words else list(catalog.runs)
    runs.sort(key=lambda r: -run_number(r["id"]))
    if len(runs) > limit:
        runs = runs[:limit] + [r for r in runs[limit:] if r["state"] == "running"]
    return runs


class RunsScreen(LiveScreen):
    """Runs, newest first. enter opens one; c cancels; r queues it again; / filters."""

    _filter = ""
    _status_text = ""

    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, tuple[tuple, tuple[str, ...]]] = {}
        """run id -> (what the row was computed from, the row)."""

    BINDINGS = [
        bind("open", "open_run", priority=True),
        bind("cancel"),
        bind("queue", "requeue", description="Run again", short="Rerun"),
        bind("resume", short="Resume"),
        bind("filter"),
        bind("mark", short="Mark"),
        # Not in the footer (it is full at 80 columns): the status line says "C compares" once two are marked.
        bind("compare", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield ModeBar("runs", id="mode-bar")
        yield Static("", id="runs-hint")
        yield RunsTable(id="runs-table")
        yield EventLog(id="event-log")
        yield Static("", id="status-line")
        yield FilterBar("words to match: id, state, preset, slot, #tag, note", id="runs-filter")
        yield Footer()

    def on_mount(self) -> None:
        self._ready = True
        self.set_interval(TICK_SECONDS, self._tick)
        self.query_one("#runs-filter").display = False
        self.query_one("#runs-hint").display = False
        self.query_one(EventLog).border_title = "events"
        self.query_one(RunsTable).focus()
        self.query_one(EventLog).entries = self.entries
        self._refresh_rows()

    # -- data pushed by the app --------------------------------------------------------------

    def watch_catalog(self) -> None:
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
        if self.catalog is None or not self._ready:
            return
        runs = visible_runs(self.catalog, self._filter)
        now = self.now()
        live, totals, cache = self.live, self.catalog.totals, self._rows
        rows = []
        tagged = any(r.get("tags") for r in runs)
        for r in runs:
            run_id = r["id"]
            hist = r.get("history") or ()
            # A finished row only changes with its record; a running one also with the clock.
            mark = (r["state"], len(hist), hist[-1] if hist else None, r.get("slot"), r.get("finished_at"),
                    live.get(run_id), totals.get(run_id), tuple(r.get("tags") or ()) if tagged else None)
            hit = cache.get(run_id)
            if hit is None or hit[0] != mark or r["state"] == "running":
                row = run_row(r, live.get(run_id), now, totals.get(run_id))
                hit = cache[run_id] = (mark, (*row, tags_text(r)) if tagged else row)
            rows.append((run_id, hit[1]))
        if len(cache) > 4 * MAX_ROWS:
            shown = {run_id for run_id, _ in rows}
            self._rows = {k: v for k, v in cache.items() if k in shown}
        table = self.query_one(RunsTable)
        keep = table.current_key
        table.set_columns(RunsTable.COLUMNS + ((RunsTable.TAGS,) if tagged else ()))
        table.show(rows)
        if keep is not None and table.current_key != keep:  # the tags column came or went: same row
            table.select_key(keep)
        self._show_hint(not self.catalog.runs)
        self._refresh_status()
        self.sync_bindings()

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
        if self.catalog is not None and (self._filter or shown < len(self.catalog.runs)):
            text += f" │ showing {shown} of {len(self.catalog.runs)}"
        marked = len(self.query_one(RunsTable).marked)
        if marked:  # first: at 80 columns the end of the line is cut
            compares = self.key_for("compare")
            text = f"{marked} marked" + (f" ({compares} compares)" if marked >= 2 else "") + " │ " + text
        if text != self._status_text:  # only when it changed (marking a run changes it each press)
            self._status_text = text
            # layout=False: one line of fixed height; a re-layout of the whole screen costs ~10 ms.
            self.query_one("#status-line", Static).update(Text(text), layout=False)

    # -- actions -----------------------------------------------------------------------------

    def _selected(self) -> dict | None:
        key = self.query_one(RunsTable).current_key
        return self.catalog.by_id.get(key) if key and self.catalog is not None else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("open_run", "filter", "mark", "compare") and self.typing:
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
            return resumable(self._selected())  # hidden unless the selected run can be resumed
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
        self._refresh_rows()

    def on_filter_bar_closed(self, event: FilterBar.Closed) -> None:
        self.query_one(RunsTable).focus()
