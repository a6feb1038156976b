"""The queue: what runs now (and on which slot) and what runs next, in dispatch order.

Reordering changes priorities only (the store dispatches by priority, then
enqueue order); every change is a request to the app, which writes it.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Static

from trialdeck.engine.types import RunState
from trialdeck.tui import messages
from trialdeck.tui.keymap import bind
from trialdeck.tui.live import Catalog, fmt_seconds
from trialdeck.tui.screens.base import LiveScreen
from trialdeck.tui.screens.dialogs import ConfirmDialog, PriorityDialog
from trialdeck.tui.widgets.live_table import STATE_STYLES, LiveTable
from trialdeck.tui.widgets.mode_bar import ModeBar


class QueueTable(LiveTable):
    COLUMNS = (("id", "id", 6), ("state", "state", 9), ("where", "slot / next", 16), ("priority", "prio", 5),
               ("preset", "preset", 24), ("waited", "in state", 8))
    STYLED = {"state": STATE_STYLES}
    SHRINK = {"preset": 14}  # 80 columns with a scrollbar: the preset gives way, not "in state"


def queue_rows(catalog: Catalog, slots: tuple[str, ...], now: float) -> list[tuple[str, tuple]]:
    """Running runs with their slot, then queued ones with their position and, for the
    first few, the free slot each will take (when the engine's slots are known)."""
    running = [r for r in catalog.runs if r["state"] == RunState.RUNNING]
    busy = {r.get("slot") for r in running}
    free = [s for s in slots if s not in busy]
    rows = []
    for r in running:
        rows.append((r["id"], (r["id"], "running", str(r.get("slot") or r.get("device") or "?"),
                               str(r.get("priority", 0)), str(r.get("preset", "")),
                               fmt_seconds(now - r["started_at"]) if r.get("started_at") else "")))
    for i, r in enumerate(catalog.queue):
        where = f"#{i + 1}" + (f" → {free[i]}" if i < len(free) else "")
        rows.append((r["id"], (r["id"], "queued", where, str(r.get("priority", 0)), str(r.get("preset", "")),
                               fmt_seconds(now - r["queued_at"]) if r.get("queued_at") else "")))
    return rows


MOVE_KEYS = Binding.Group("Move", compact=True)


class QueueScreen(LiveScreen):
    """t top, + up, - down, p priority, c cancel, x clear, enter open."""

    _summary = ""

    # Short footer words: at 80 columns the footer holds these, help and quit (help says them in full).
    BINDINGS = [
        bind("open", "open_run", priority=True),
        bind("top", "move('top')", short="Top"),
        bind("up", "move('up')", short="Up", group=MOVE_KEYS),
        bind("down", "move('down')", short="Down", group=MOVE_KEYS),
        bind("priority", "set_priority", short="Prio"),
        bind("cancel", short="Cancel"),
        bind("clear", "clear_queue", short="Clear"),
    ]

    def compose(self) -> ComposeResult:
        yield ModeBar("queue", id="mode-bar")
        yield Static("", id="queue-summary")
        yield QueueTable(id="queue-table")
        yield Footer()

    def on_mount(self) -> None:
        self._ready = True
        self.query_one(QueueTable).focus()
        self._refresh()

    def watch_catalog(self) -> None:
        self._refresh()

    def watch_status(self) -> None:
        self._refresh()

    def _slots(self) -> tuple[str, ...]:
        return self.status[0].slots if self.status is not None and self.status[0].running else ()

    def _refresh(self) -> None:
        if not self._ready or self.catalog is None:
            return
        rows = queue_rows(self.catalog, self._slots(), self.now())
        self.query_one(QueueTable).show(rows)
        n_run = sum(1 for _, cells in rows if cells[1] == "running")
        slots = self._slots()
        where = f" on {len(slots)} slot(s): {', '.join(slots)}" if slots else " (engine stopped: queued runs wait)"
        summary = f"{n_run} running, {len(rows) - n_run} queued{where}. Order: priority, then enqueue time."
        if summary != self._summary:
            self._summary = summary
            self.query_one("#queue-summary", Static).update(Text(summary))
        self.sync_bindings()

    def _selected(self) -> dict | None:
        key = self.query_one(QueueTable).current_key
        return self.catalog.by_id.get(key) if key and self.catalog is not None else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if not self._ready:
            return True
        run = self._selected()
        if action == "open_run":
            return True if run is not None else None
        if action in ("move", "set_priority"):
            return True if run is not None and run["state"] == RunState.QUEUED else None
        if action == "cancel":
            return True if run is not None and run["state"] in (RunState.QUEUED, RunState.RUNNING) else None
        if action == "clear_queue":
            return True if self.catalog is not None and self.catalog.queue else None
        return True

    def on_live_table_highlighted(self, event: LiveTable.Highlighted) -> None:
        self.sync_bindings()

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        event.stop()
        self.action_open_run()

    def action_open_run(self) -> None:
        run = self._selected()
        if run is not None:
            self.post_message(messages.OpenRun(run["id"]))

    def action_move(self, where: str) -> None:
        run = self._selected()
        if run is not None and run["state"] == RunState.QUEUED:
            self.post_message(messages.MoveRun(run["id"], where))

    def action_set_priority(self) -> None:
        run = self._selected()
        if run is None or run["state"] != RunState.QUEUED:
            return

        def chosen(value: int | None) -> None:
            if value is not None:
                self.post_message(messages.SetPriority(run["id"], value))

        self.app.push_screen(PriorityDialog(run["id"], int(run.get("priority", 0))), chosen)

    def action_cancel(self) -> None:
        run = self._selected()
        if run is not None:
            self.post_message(messages.CancelRun(run["id"]))

    def action_clear_queue(self) -> None:
        n = len(self.catalog.queue) if self.catalog is not None else 0
        if not n:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.post_message(messages.ClearQueue())

        self.app.push_screen(ConfirmDialog(f"Cancel all {n} queued run(s)? Running runs go on."), answered)
