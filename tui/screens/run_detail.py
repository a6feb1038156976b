"""One run: its loss, accuracy and learning-rate curves, event timeline, resolved config,
log tail and, for a script run, what its capture reads from its log; cancel it or queue it
again from here.

The full record (with its config) is read for this run only, in a worker,
when the catalogue shows it changed; the log tail is the last 64 KiB, read
again at each status tick while the run runs (a script's output grows with no
catalogue change), and the Log tab follows it while it is scrolled to its end.
The Capture tab runs the capture of the run's preset (its file as it is now,
so an edited pattern shows at once; else the run's own config) over the run's
log: which names it would record, and its last steps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Footer, Static, TabbedContent, TabPane

from trialdeck.engine.runs.folder import LOG_NAME
from trialdeck.engine.types import RunState, finite
from trialdeck.tui import messages
from trialdeck.tui.keymap import bind
from trialdeck.tui.live import CANCELLABLE, fmt_seconds, host_text, outcome, resumable, tags_text, value_text
from trialdeck.tui.screens.base import LiveScreen
from trialdeck.tui.widgets.live_table import STATE_STYLES
from trialdeck.tui.widgets.plots import CurvePlot, Series, clean

LOG_TAIL_BYTES = 64 * 1024
LOG_TAIL_LINES = 200
CAPTURE_BYTES = 8 << 20
"""How much of a run's log (its end) the Capture tab reads."""
CAPTURE_ROWS = 12
TICK_SECONDS = 1.0
"""How often a running run's elapsed time and log tail are brought up to date."""


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

    record: reactive[Mapping[str, Any] | None] = reactive(None, init=False, always_update=True)
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
            with TabPane("Capture", id="tab-capture"):
                with VerticalScroll():
                    yield Static("", id="run-capture")
        yield Footer()

    def on_mount(self) -> None:
        self._ready = True
        self.set_interval(TICK_SECONDS, self._tick)
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

        def read() -> tuple[Mapping[str, Any] | None, str]:
            record = ctx.store.get_run(run_id)
            tail = read_tail(ctx.ws.runs_dir / record["id"] / LOG_NAME) if record is not None else ""
            return record, tail

        self.spawn(read, self._loaded, name=f"detail {run_id}")

    def _loaded(self, result: tuple[Mapping[str, Any] | None, str]) -> None:
        record, tail = result
        self._missing = record is None
        if record is not None:
            self._seen = (record["state"], len(record.get("history") or []), record.get("finished_at"))
        self.record = record
        self.log_tail = tail
        self.sync_bindings()
        if self.query_one(TabbedContent).active == "tab-capture":
            self._load_capture()

    def _tick(self) -> None:
        """Every second while the run runs: its elapsed time, and its log's new lines."""
        if not self._ready or self.record is None or self.record["state"] != "running" or not self.is_current:
            return
        self.query_one("#run-header", Static).update(self._header(self.record))
        path = self.ctx.ws.runs_dir / self.run_id / LOG_NAME
        self.spawn(lambda: read_tail(path), self._tail_read, name=f"log {self.run_id}")

    def _tail_read(self, tail: str) -> None:
        self.log_tail = tail

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "tab-log":  # laid out only now: the end of the log is where it opens
            scroll = self.query_one("#run-log-scroll", VerticalScroll)
            self.call_after_refresh(scroll.scroll_end, animate=False)
        elif event.pane.id == "tab-capture":
            self._load_capture()

    def _load_capture(self) -> None:
        record, ctx = self.record, self.ctx
        if record is None:
            return

        def read() -> Text:
            return capture_preview(record, ctx)

        self.spawn(read, self.query_one("#run-capture", Static).update, name=f"capture {self.run_id}")

    def watch_record(self, record: Mapping[str, Any] | None) -> None:
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

    def _plot(self, record: Mapping[str, Any]) -> None:
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
        scroll = self.query_one("#run-log-scroll", VerticalScroll)
        following = scroll.scroll_y >= scroll.max_scroll_y - 1  # at the end: stay there; reading higher up: stay put
        self.query_one("#run-log", Static).update(Text(tail or "(no log yet)"))
        if following:
            self.call_after_refresh(scroll.scroll_end, animate=False)

    def _header(self, r: Mapping[str, Any]) -> Text:
        hist = r.get("history") or []
        total = ((r.get("config") or {}).get("train") or {}).get("epochs")
        started, ended = r.get("started_at"), r.get("finished_at")
        if started and r["state"] == RunState.RUNNING:
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
        order = ["tab-curves", "tab-events", "tab-config", "tab-log", "tab-capture"]
        tabs.active = order[(order.index(tabs.active) + 1) % len(order)] if tabs.active in order else order[0]


def capture_preview(record: Mapping[str, Any], ctx: Any) -> Text:
    """What the run's capture reads from its log: the names it would record and its last steps.
    The preset as its file is now (an edited pattern shows at once), else the run's own config."""
    from trialdeck.engine.capture.session import capture_log
    from trialdeck.engine.errors import TrialdeckError
    from trialdeck.engine.presets.schema import RunSpec

    config = record.get("config") or {}
    if not config.get("script"):
        return Text("the capture reads a script run's output; this run is trialdeck's own trainer", style="dim")
    source = "the run's own [script.capture]"
    try:
        spec = RunSpec.model_validate(config)
    except ValueError as exc:
        return Text(f"cannot read this run's configuration: {exc}", style="red")
    try:
        from trialdeck.engine.presets.loader import resolve

        current = resolve(record["preset"], roots=ctx.library.roots) if record.get("preset") else None
        if current is not None and current.script is not None:
            spec, source = current, f"{record['preset']}'s [script.capture] as its file is now"
    except (TrialdeckError, OSError, ValueError):
        pass  # a one-off script, or a preset gone or broken since: the run's own config
    assert spec.script is not None
    path = ctx.ws.runs_dir / record["id"] / LOG_NAME
    text = read_tail(path, CAPTURE_BYTES, lines=10**9)
    rows = capture_log(spec.script.capture, text)
    names = list(dict.fromkeys(k for row in rows for k in row if k not in ("step", "epoch")))
    out = Text()
    out.append(f"{source}, over this run's log:\n", style="dim")
    if not rows:
        out.append("it captures nothing from this log. Add patterns = ['name\\s+(?P<name>[\\d.]+)'] to [script.capture] "
                   "(README \"Metrics from a program as it is\"), save, and open this tab again.\n")
        return out
    out.append(f"{len(rows)} steps; names: ", style="bold")
    out.append(", ".join(names) + "\n\n")
    table = ["step", "epoch", *names]
    widths = {n: max(len(n), *(len(value_text(r.get(n))) for r in rows[-CAPTURE_ROWS:])) for n in table}
    out.append("  ".join(f"{n:>{widths[n]}}" for n in table) + "\n", style="bold")
    for row in rows[-CAPTURE_ROWS:]:
        out.append("  ".join(f"{value_text(row.get(n)):>{widths[n]}}" for n in table) + "\n")
    out.append("\n`trialdeck presets capture PRESET " + record["id"] + "` prints every step.", style="dim")
    return out
