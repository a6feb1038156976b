"""Runs side by side: one metric's curves overlaid (a colour per run), each run's summary, and
the config keys that differ.

Pushed over the runs view (or a study's trials) with the runs marked there. The
full records (configs and histories) are read in a worker, for these runs only,
and again when the catalogue shows one of them changed; everything on screen is
computed from them by trialdeck.engine.catalogue.compare, the same code as
`trialdeck runs compare`. Keys: m next metric, e EMA smoothing, l log y axis,
v summary / config differences, escape back. Work on the UI thread is bounded:
the view first draws one metric from the catalogue the app already holds (runs
with their histories, without configs), then a worker reads the full records
and computes every metric and the config differences; a key only re-assembles
what is drawn (bench/bench_tui.py measures it: 50 runs of 200 epochs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.reactive import reactive
from textual.widgets import Footer, Static

from trialdeck.engine.catalogue import compare
from trialdeck.tui import messages
from trialdeck.tui.keymap import bind
from trialdeck.tui.live import cell, fmt_seconds, tags_text
from trialdeck.tui.screens.base import LiveScreen
from trialdeck.tui.widgets.line_plot import LinePlot
from trialdeck.tui.widgets.live_table import STATE_STYLES, LiveTable
from trialdeck.tui.widgets.plots import Series

PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 175, 255), (255, 135, 0), (95, 215, 95), (215, 95, 215), (255, 95, 95), (255, 215, 0),
    (95, 135, 255), (0, 215, 175), (175, 95, 255), (215, 175, 95), (255, 175, 215), (175, 175, 175),
)
"""One colour per run, in the order the runs were marked (past twelve runs they repeat)."""
SMOOTHING = 0.6
"""EMA weight on the past (TensorBoard's default slider position)."""


def color_of(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def _style(i: int) -> str:
    r, g, b = color_of(i)
    return f"bold rgb({r},{g},{b})"


class SummaryTable(LiveTable):
    """One row per run; its run cell in the run's colour (set per comparison)."""

    COLUMNS = (("run", "run", 7), ("preset", "preset", 20), ("state", "state", 13), ("best", "best", 9),
               ("epoch", "at epoch", 8), ("kept", "kept", 5), ("epochs", "epochs", 6), ("time", "time", 7),
               ("tags", "tags", 16))
    SHRINK = {"preset": 12}
    DROP = ("tags", "kept", "time")


class DiffersTable(LiveTable):
    """One row per differing config key, one column per run (its values in the run's colour)."""

    COLUMNS = (("key", "config key", 24),)


@dataclass(frozen=True)
class Comparison:
    """What the view draws: first from the app's catalogue (histories, no configs: the curves and
    summaries of one metric, at once), then from the full records read by a worker."""

    records: tuple[Mapping[str, Any], ...] = ()
    missing: tuple[str, ...] = ()
    """Run ids asked for that are not in the catalogue."""
    metrics: tuple[str, ...] = ()
    """compare.metric_names: the order `m` goes through them."""
    curves: dict[str, tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]] = field(default_factory=dict)
    """metric -> one (epochs, values) per run."""
    summaries: dict[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)
    """metric -> one compare.summary per run."""
    differs: dict[str, list[Any]] | None = None
    """Config keys that differ, one value per run; None until the configs are read."""

    def add_metric(self, metric: str) -> None:
        """Compute `metric`'s curves and summaries if they are not there yet (cached)."""
        if metric in self.curves or metric not in self.metrics:
            return
        points = tuple((tuple(xs), tuple(ys)) for xs, ys in (compare.series(r, metric) for r in self.records))
        self.curves[metric] = points
        self.summaries[metric] = tuple(compare.summary(r, metric, p) for r, p in zip(self.records, points))


def prepare(run_ids: tuple[str, ...], found: Sequence[Mapping[str, Any] | None], metrics: tuple[str, ...] | None = None
            ) -> Comparison:
    """The comparison of the records found (None: not in the catalogue), with the curves and
    summaries of `metrics` (default: all), and the config differences when they have configs."""
    records = tuple(r for r in found if r is not None)
    out = Comparison(records=records, missing=tuple(r for r, rec in zip(run_ids, found) if rec is None),
                     metrics=tuple(compare.metric_names(records)),
                     differs=compare.differs(records) if all("config" in r for r in records) else None)
    for m in out.metrics if metrics is None else metrics:
        out.add_metric(m)
    return out


def first_metric(names: tuple[str, ...], wanted: str) -> str:
    return wanted if wanted in names else "val_loss" if "val_loss" in names else names[0] if names else wanted


def _cell(value: Any) -> str:
    return cell(value, 28)


class CompareScreen(LiveScreen):
    """Pushed over the current view; escape goes back."""

    BINDINGS = [
        bind("back", "close", description="Back"),
        bind("metric", "next_metric", short="Metric"),
        bind("smooth", "toggle_smooth", short="EMA"),
        bind("log_y", "toggle_log", short="Log y"),
        bind("view", "next_tab", short="View"),
    ]

    comparison: reactive[Comparison] = reactive(Comparison, init=False, always_update=True)
    """The compared runs (those that exist, in the order given) and what is drawn of them."""
    metric: reactive[str] = reactive("val_loss", init=False)
    """The metric the plot shows and the summary's best value is of."""
    smooth: reactive[bool] = reactive(False, init=False)
    """Draw the curves EMA-smoothed (the summary's numbers stay raw)."""
    log_y: reactive[bool] = reactive(False, init=False)
    """A log-scale y axis (ignored when a value is not positive)."""

    def __init__(self, run_ids: tuple[str, ...] | list[str]) -> None:
        super().__init__()
        self.run_ids = tuple(dict.fromkeys(run_ids))
        self.drawn = False
        """True once the runs' curves and summaries are on screen (from the catalogue: at once)."""
        self.loaded = False
        """True once the full records (configs too) are read and on screen (tests wait on it)."""
        self._seen: tuple | None = None

    @property
    def records(self) -> tuple[Mapping[str, Any], ...]:
        return self.comparison.records

    def compose(self) -> ComposeResult:
        yield Static(Text(f"comparing {len(self.run_ids)} runs: loading"), id="compare-header")
        yield Static("", id="compare-legend")
        yield LinePlot(self.metric, xlabel="epoch", id="compare-plot")
        # Two tables and a line naming them, not a TabbedContent: its tabs, switcher and animated
        # underline cost more to build than the rest of the view (the view is built on each open).
        yield Static("", id="compare-tabbar")
        yield SummaryTable(id="compare-summary")
        yield DiffersTable(id="compare-differs")
        yield Footer()

    def on_mount(self) -> None:
        self._ready = True
        self.query_one("#compare-differs").display = False
        self._show_tabbar()
        self._draw_from_catalog()
        self._load()

    # -- data --------------------------------------------------------------------------------

    def _marks(self) -> tuple | None:
        if self.catalog is None:
            return None
        brief = self.catalog.by_id
        return tuple((brief[r]["state"], len(brief[r].get("history") or ()), brief[r].get("finished_at"))
                     if r in brief else None for r in self.run_ids)

    def watch_catalog(self) -> None:
        if self._ready and self._marks() != self._seen:
            self._load()

    def _draw_from_catalog(self) -> None:
        """The curves and summary of the current metric from the catalogue the app already holds
        (runs without configs): on screen with the view, before the worker has read anything."""
        if self.catalog is None:
            return
        found = [self.catalog.by_id.get(r) for r in self.run_ids]
        names = tuple(compare.metric_names([r for r in found if r is not None]))
        metric = first_metric(names, self.metric)
        self.set_reactive(CompareScreen.metric, metric)
        self.comparison = prepare(self.run_ids, found, (metric,) if metric in names else ())
        self.drawn = True

    def _load(self) -> None:
        store, ids, marks = self.ctx.store, self.run_ids, self._marks()

        def read() -> tuple[tuple | None, Comparison]:
            return marks, prepare(ids, [store.get_run(run_id) for run_id in ids])

        self.spawn(read, self._loaded, name="compare")

    def _loaded(self, result: tuple[tuple | None, Comparison]) -> None:
        self._seen, comparison = result
        self.set_reactive(CompareScreen.metric, first_metric(comparison.metrics, self.metric))
        self.comparison = comparison
        self.drawn = self.loaded = True

    def watch_comparison(self) -> None:
        self._show_legend()
        self._show_plot()
        self._show_summary()
        self._show_differs()

    def watch_metric(self) -> None:
        self.comparison.add_metric(self.metric)  # (from the catalogue, only the first metric was computed)
        self._show_plot()
        self._show_best()

    def watch_smooth(self) -> None:
        self._show_plot()

    def watch_log_y(self) -> None:
        self.query_one("#compare-plot", LinePlot).log_y = self.log_y
        self._show_header()

    # -- drawing -----------------------------------------------------------------------------

    def _show_header(self) -> None:
        onoff = {True: "on", False: "off"}
        out = Text()
        out.append(f"comparing {len(self.records)} runs", style="bold")
        if self.comparison.missing:
            out.append(f" ({', '.join(self.comparison.missing)} not found)", style="red")
        out.append(f"  metric {self.metric}", style="bold")
        out.append(f"  EMA {onoff[self.smooth]}  log y {onoff[self.log_y]}", style="dim")
        self.query_one("#compare-header", Static).update(out, layout=False)

    def _show_legend(self) -> None:
        out = Text()
        for i, r in enumerate(self.records):
            out.append("● " + r["id"], style=_style(i))
            out.append("  ")
        self.query_one("#compare-legend", Static).update(out)

    def _show_plot(self) -> None:
        self._show_header()
        plot = self.query_one("#compare-plot", LinePlot)
        plot.title = self.metric + (f" (EMA {SMOOTHING:g})" if self.smooth else "")
        out = []
        for i, (r, (xs, ys)) in enumerate(zip(self.records, self.comparison.curves.get(self.metric, ()))):
            if self.smooth:
                ys = tuple(compare.ema(ys, SMOOTHING))
            out.append(Series(r["id"], xs, ys, color=color_of(i)))
        plot.series = tuple(out)

    def _summary_rows(self) -> list[tuple[str, tuple[str, ...]]]:
        rows: list[tuple[str, tuple[str, ...]]] = []
        for r, s in zip(self.records, self.comparison.summaries.get(self.metric, ())):
            rows.append((r["id"], ("● " + r["id"], _cell(r.get("preset")), str(r.get("state")), _cell(s["best"]),
                                   _cell(s["best_epoch"]), _cell(s["kept_epoch"]), str(s["epochs"]),
                                   fmt_seconds(s["seconds"]) or "-", tags_text(r))))
        return rows

    def _show_summary(self) -> None:
        table = self.query_one(SummaryTable)
        table.STYLED = {"state": STATE_STYLES, "run": {"● " + r["id"]: _style(i) for i, r in enumerate(self.records)}}
        table.set_columns(())  # new runs, new colours: draw every row again
        table.set_columns(SummaryTable.COLUMNS)
        table.show(self._summary_rows())

    def _show_best(self) -> None:
        """The metric changed: the same rows, only the best value and its epoch change (and repaint)."""
        self.query_one(SummaryTable).show(self._summary_rows())

    def _show_differs(self) -> None:
        table = self.query_one(DiffersTable)
        differing = self.comparison.differs or {}
        cells = {key: tuple(_cell(v) for v in values) for key, values in differing.items()}
        key_width = min(40, max([len("config key"), *map(len, differing)]))
        spec = [("key", "config key", key_width)]
        for n, r in enumerate(self.records):
            width = max([len(r["id"]), *(len(c[n]) for c in cells.values())])
            spec.append((r["id"], r["id"], width))
        table.COLUMN_STYLES = {r["id"]: _style(i) for i, r in enumerate(self.records)}
        table.set_columns(())
        table.set_columns(spec)
        table.show([(key, (key, *values)) for key, values in cells.items()])
        self._show_tabbar()

    def _show_tabbar(self) -> None:
        summary = self.query_one("#compare-summary").display
        out = Text(" ")
        differs = self.comparison.differs
        n = "reading" if differs is None else len(differs)
        for label, active in (("Summary", summary), (f"Config differences ({n})", not summary)):
            out.append(f" {label} ", style="bold reverse" if active else "dim")
            out.append(" ")
        key = self.key_for("view")
        out.append(f" {key} switches", style="dim")
        self.query_one("#compare-tabbar", Static).update(out, layout=False)

    # -- actions -----------------------------------------------------------------------------

    def action_close(self) -> None:
        self.dismiss()

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        """enter on a run of the summary opens it (escape comes back here)."""
        event.stop()
        if event.table.id == "compare-summary":
            self.post_message(messages.OpenRun(event.key))

    def action_next_metric(self) -> None:
        names = self.comparison.metrics
        if names:
            self.metric = names[(names.index(self.metric) + 1) % len(names)] if self.metric in names else names[0]

    def action_toggle_smooth(self) -> None:
        self.smooth = not self.smooth

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y

    def action_next_tab(self) -> None:
        summary, differs = self.query_one("#compare-summary"), self.query_one("#compare-differs")
        summary.display, differs.display = differs.display, summary.display
        self._show_tabbar()
