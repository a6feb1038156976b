"""One run: its loss, accuracy and learning-rate curves, event timeline, resolved config
and log tail; cancel it or queue it again from here.

The full record (with its config) is read for this run only, in a worker,
when the catalogue shows it changed; the log tail is the last 64 KiB.
"""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Footer, Static, TabbedContent, TabPane

from trialdeck.engine.runtime.recorder import LOG_NAME
from trialdeck.engine.types import finite
from trialdeck.tui import messages
from trialdeck.tui.keymap import bind
from trialdeck.tui.live import CANCELLABLE, fmt_seconds, host_text, outcome, resumable, tags_text
from trialdeck.tui.screens.base import LiveScreen
from trialdeck.tui.widgets.live_table import STATE_STYLES
from trialdeck.tui.widgets.plots import CurvePlot, Series, clean

LOG_TAIL_BYTES = 64 * 1024
LOG_TAIL_LINES = 200


def read_tail(path, limit: int = LOG_TAIL_BYTES, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > limit:
        text = text.partition("\n")[2]
    return "\n".join(text.splitlines()[-lines:])


def curves(history: list[dict[str, Any]]) -> tuple[tuple[Series, ...], tuple[Series, ...], tuple[Series, ...]]:
    xs = [float(h.get("epoch", i + 1)) for i, h in enumerate(history)]

    def series(label: str, key: str) -> Series:
        x, y = clean(xs, [h.get(key) for h in history])
        return Series(label, x, y)

    score = "val_mae" if any("val_mae" in h for h in history) else "val_acc"  # a regression records val_mae
    return ((series("train", "train_loss"), series("val", "val_loss")), (series(score, score),),
            (series("lr", "lr"),))


PLOTTED = frozenset({"epoch", "t", "kind", "seconds", "train_loss", "val_loss", "val_acc", "val_mae", "lr"})


def script_metrics(history: list[dict[str, Any]]) -> tuple[Series, ...]:
    """A script's own numbers (any name it reported other than the built-in ones), one series each."""
    xs = [float(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    names = dict.fromkeys(k for h in history for k, v in h.items() if k not in PLOTTED and finite(v))
    return tuple(Series(name, *clean(xs, [h.get(name) for h in history])) for name in names)


class RunDetailScreen(LiveScreen):
    """Pushed over the current view; escape goes back."""

    BINDINGS = [
        bind("back", "close", description="Back"),
        bind("cancel"),
        bind("queue", "requeue", description="Run again"),
        bind("resume", short="Resume"),
        bind("view", "next_tab"),
    ]

    record: reactive[dict[str, Any] | None] = reactive(None, init=False, always_update=True)
    """The run's full record, read by a worker."""
    log_tail: reactive[str] = reactive("", init=False)
    """The end of the run's log.txt."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self._seen: tuple | None = None
        self._missing = False

    def compose(self) -> ComposeResult:
        yield Static(Text(f"run {self.run_id}"), id="run-header")
        with TabbedContent(id="run-tabs"):
            with TabPane("Curves", id="tab-curves"):
                with Grid(id="run-curves"):
                    yield CurvePlot("loss", xlabel="epoch", id="plot-loss")
                    yield CurvePlot("val_acc", xlabel="epoch", id="plot-acc")
                    yield CurvePlot("learning rate", xlabel="epoch", id="plot-lr")
            with TabPane("Events", id="tab-events"):
                with VerticalScroll():
                    yield Static("", id="run-events")
            with TabPane("Config", id="tab-config"):
                with VerticalScroll():
                    yield Static("", id="run-config")
            with TabPane("Log", id="tab-log"):
                with VerticalScroll(id="run-log-scroll"):
                    yield Static("", id="run-log")
        yield Footer()

    def on_mount(self) -> None:
        self._ready = True
        self._load()

    def watch_catalog(self) -> None:
        if not self._ready or self.catalog is None:
            return
        brief = self.catalog.by_id.get(self.run_id)
        mark = None if brief is None else (brief["state"], len(brief.get("history") or []), brief.get("finished_at"))
        if mark != self._seen:
            self._load()

    def _load(self) -> None:
        ctx, run_id = self.ctx, self.run_id

        def read() -> tuple[dict | None, str]:
            record = ctx.store.get_run(run_id)
            tail = read_tail(ctx.ws.runs_dir / record["id"] / LOG_NAME) if record is not None else ""
            return record, tail

        self.spawn(read, self._loaded, name=f"detail {run_id}")

    def _loaded(self, result: tuple[dict | None, str]) -> None:
        record, tail = result
        self._missing = record is None
        if record is not None:
            self._seen = (record["state"], len(record.get("history") or []), record.get("finished_at"))
        self.record = record
        self.log_tail = tail
        self.sync_bindings()

    def watch_record(self, record: dict[str, Any] | None) -> None:
        header = self.query_one("#run-header", Static)
        if record is None:
            header.update(Text(f"no run {self.run_id} in this workspace", style="red"))
            return
        header.update(self._header(record))
        self._plot(record)
        self.query_one("#run-events", Static).update(self._events(record.get("events") or []))
        from trialdeck.engine.presets.authoring import config_toml

        # Text, not str: a str is read as markup, and every `[section]` header would vanish.
        self.query_one("#run-config", Static).update(Text(config_toml(record.get("config") or {})))

    def _plot(self, record: dict[str, Any]) -> None:
        """A built-in run has all three plots. A script run reports only what its script reports:
        it gets the plots it has data for (never an lr plot the script does not report), and its own
        metrics in the first plot when it reports no loss."""
        history = record.get("history") or []
        loss, acc, lr = curves(history)
        loss_plot, acc_plot, lr_plot = (self.query_one(f"#plot-{n}", CurvePlot) for n in ("loss", "acc", "lr"))
        loss_plot.title = "loss"
        if (record.get("config") or {}).get("script"):
            if not any(s.xs for s in loss):
                loss = script_metrics(history) or loss
                loss_plot.title = "loss" if loss and loss[0].label == "train" else "metrics"
            acc_plot.display = any(s.xs for s in acc)
            lr_plot.display = any(s.xs for s in lr)
        below = acc_plot.display + lr_plot.display
        grid = self.query_one("#run-curves", Grid)
        grid.set_class(below == 0, "-loss-only")
        grid.set_class(below == 1, "-one-below")
        loss_plot.series, acc_plot.series, lr_plot.series = loss, acc, lr

    def watch_log_tail(self, tail: str) -> None:
        self.query_one("#run-log", Static).update(Text(tail or "(no log yet)"))
        self.query_one("#run-log-scroll", VerticalScroll).scroll_end(animate=False)

    def _header(self, r: dict[str, Any]) -> Text:
        hist = r.get("history") or []
        total = ((r.get("config") or {}).get("train") or {}).get("epochs")
        started, ended = r.get("started_at"), r.get("finished_at")
        if started and r["state"] == "running":
            took = fmt_seconds(self.now() - started)
        else:
            took = fmt_seconds((ended - started) if started and ended else None)
        out = Text()
        out.append(f"{r['id']} ", style="bold")
        out.append(r["state"], style=STATE_STYLES.get(r["state"], ""))
        out.append(f"  {r.get('preset', '')}  on {host_text(r) or r.get('slot') or r.get('device') or '-'}")
        out.append(f"  epoch {len(hist)}" + (f"/{total}" if total else ""))
        if took:
            out.append(f"  {took}")
        if r.get("study") is not None:
            out.append(f"  study {r['study']} trial {r.get('trial')}")
        if r.get("tags"):
            out.append("  " + tags_text(r), style="cyan")
        if r.get("note"):
            out.append(f"\nnote: {r['note']}", style="italic")
        if hist:  # which epoch's weights it kept, the monitor's best, the last epoch: each labelled
            out.append("\n" + " | ".join(outcome(r)))
        if r.get("error"):
            out.append(f"\nerror: {r['error']}", style="red")
        return out

    @staticmethod
    def _events(events: list[dict[str, Any]]) -> Table | Text:
        if not events:
            return Text("no events yet", style="dim")
        table = Table.grid(padding=(0, 1))
        table.add_column(style="dim", no_wrap=True)
        table.add_column(justify="right", no_wrap=True)
        table.add_column(no_wrap=True)
        table.add_column()
        for e in events:
            stamp = time.strftime("%H:%M:%S", time.localtime(e["time"])) if e.get("time") else ""
            epoch = "" if e.get("epoch") is None else f"ep {e['epoch']}"
            table.add_row(stamp, epoch, Text(e.get("kind", ""), style=STATE_STYLES.get(e.get("kind", ""), "bold")),
                          Text(str(e.get("message", ""))))  # a str cell is read as markup
        return table

    # -- actions -----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            return True if self.record is not None and self.record["state"] in CANCELLABLE else None
        if action == "requeue":
            return True if self.record is not None and self.record.get("config") else None
        if action == "resume":
            return resumable(self.record)
        return True

    def action_close(self) -> None:
        self.dismiss()

    def action_cancel(self) -> None:
        self.post_message(messages.CancelRun(self.run_id))

    def action_requeue(self) -> None:
        self.post_message(messages.RequeueRun(self.run_id))

    def action_resume(self) -> None:
        self.post_message(messages.ResumeRun(self.run_id))

    def action_next_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        order = ["tab-curves", "tab-events", "tab-config", "tab-log"]
        tabs.active = order[(order.index(tabs.active) + 1) % len(order)] if tabs.active in order else order[0]
