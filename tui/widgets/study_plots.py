"""The study views optuna-dashboard draws in a browser, drawn in the terminal: the Pareto front,
hypervolume over trials, parallel coordinates and the empirical distribution (EDF).

Each pane is fed one `StudyView` (the study's document, its trials, the
objective picked) by the Studies screen and draws only while it is shown: a
hidden pane keeps the view and draws when its tab opens, so a 10,000-trial
study costs only the tab on screen. The plots are LinePlots (numpy-rasterised
braille), so 5,000 points redraw in milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Select, Static

from trialdeck.tui.study_sources import FRONT
from trialdeck.tui.trials import (
    ParetoData,
    directions_of,
    edf_data,
    fmt,
    front_trials,
    hypervolume_data,
    objective_names,
    objective_value,
    parallel_data,
    param_names,
    pareto_data,
)
from trialdeck.tui.widgets.line_plot import LinePlot
from trialdeck.tui.widgets.live_table import LiveTable
from trialdeck.tui.widgets.plots import BarList, Series

BAND_COLORS = ("grey35", "dodger_blue3", "cyan", "spring_green2", "yellow")
"""Parallel coordinates, worst fifth of the objective to best."""
ARROW = {"minimize": "↓", "maximize": "↑"}
UNSET = -9
"""A Select's value before the study's objectives are known."""


@dataclass(frozen=True)
class StudyView:
    """What the study views draw."""

    key: str
    """The study's key in the Studies view (its name, or name and storage)."""
    doc: Mapping[str, Any] = field(hash=False, compare=False)
    trials: tuple[dict[str, Any], ...] = field(hash=False, compare=False)
    objective: int = 0
    """The objective the one-objective views show (History, Slice, Parallel, EDF, ...)."""
    version: int = 0
    """Bumped by the screen when trials or the document changed."""

    @property
    def names(self) -> list[str]:
        return objective_names(self.doc)

    @property
    def directions(self) -> list[str]:
        return directions_of(self.doc)

    def label(self, index: int) -> str:
        return f"{self.names[index]} {ARROW.get(self.directions[index], '')}".strip()


def _shown(widget: Widget) -> bool:
    """Whether the widget is displayed (its tab is the active one)."""
    return all(node.display for node in widget.ancestors_with_self if isinstance(node, Widget))


class StudyPane(Vertical):
    """A view of the chosen study that draws only while displayed."""

    view: reactive[StudyView | None] = reactive(None, init=False)
    """The study to draw; assign a new one (a new version) to redraw."""

    _drawn: StudyView | None = None

    def watch_view(self) -> None:
        if _shown(self):
            self.redraw()

    def on_show(self, event: events.Show) -> None:
        if self.view is not None and self.view != self._drawn:
            self.redraw()

    def redraw(self) -> None:
        self._drawn = self.view
        if self.view is not None:
            self.draw(self.view)

    def draw(self, view: StudyView) -> None:
        raise NotImplementedError

    def caption(self, text: str | Text) -> None:
        self.query_one(".pane-caption", Static).update(text if isinstance(text, Text) else Text(text))


class FrontTable(LiveTable):
    """The trials on the Pareto front; the cursor's trial is named and marked on the plot."""

    COLUMNS = (("number", "#", 5), ("x", "x", 9), ("y", "y", 9))


class ParetoPane(StudyPane):
    """Two chosen objectives of every complete trial, the front highlighted, the cursor's trial named."""

    def compose(self) -> ComposeResult:
        with Horizontal(classes="pane-bar"):
            # A placeholder until the study's objectives are known (Select shows a new option's label
            # only when its value changes).
            yield Select([("x", UNSET)], id="pareto-x", compact=True, allow_blank=False, value=UNSET)
            yield Select([("y", UNSET)], id="pareto-y", compact=True, allow_blank=False, value=UNSET)
            yield Static("", classes="pane-caption")
        with Horizontal(classes="pane-body"):
            yield LinePlot("pareto front", id="pareto-plot")
            yield FrontTable(id="front-table")

    def draw(self, view: StudyView) -> None:
        names = view.names
        if len(names) < 2:
            self.query_one("#pareto-plot", LinePlot).series = ()
            self.query_one("#pareto-plot", LinePlot).title = "pareto front (needs two or more objectives)"
            self.query_one(FrontTable).show([])
            self.caption("")
            return
        options = [(view.label(i), i) for i in range(len(names))]
        for select_id, default in (("#pareto-x", 0), ("#pareto-y", 1)):
            select = self.query_one(select_id, Select)
            current = select.value
            with select.prevent(Select.Changed):
                select.set_options(options)
                select.value = current if isinstance(current, int) and 0 <= current < len(names) else default
        self._plot(view)

    def axes(self) -> tuple[int, int]:
        x, y = self.query_one("#pareto-x", Select).value, self.query_one("#pareto-y", Select).value
        return (x if isinstance(x, int) and x >= 0 else 0), (y if isinstance(y, int) and y >= 0 else 1)

    def _plot(self, view: StudyView) -> None:
        xi, yi = self.axes()
        data = pareto_data(view.trials, view.directions, xi, yi)
        self._data = data
        front = front_trials(view.trials, data, by=xi)
        table = self.query_one(FrontTable)
        table.set_columns([("number", "#", 5), ("x", view.names[xi][:9], 9), ("y", view.names[yi][:9], 9)])
        table.show([(str(t["number"]), (str(t["number"]), fmt(objective_value(t, xi)), fmt(objective_value(t, yi))))
                    for t in front])
        self._series(view, data, xi, yi)

    def _series(self, view: StudyView, data: ParetoData, xi: int, yi: int) -> None:
        plot = self.query_one("#pareto-plot", LinePlot)
        rest = [(x, y) for x, y, f in zip(data.xs, data.ys, data.on_front, strict=True) if not f]
        front = sorted((x, y) for x, y, f in zip(data.xs, data.ys, data.on_front, strict=True) if f)
        series = [Series("trials", tuple(p[0] for p in rest), tuple(p[1] for p in rest), scatter=True, color="grey50"),
                  Series("front", tuple(p[0] for p in front), tuple(p[1] for p in front), color="green",
                         marker="●")]
        cursor = self._cursor_trial(view)
        if cursor is not None:
            x, y = objective_value(cursor, xi), objective_value(cursor, yi)
            if x is not None and y is not None:
                series.append(Series("cursor", (x,), (y,), color="bold yellow", marker="◆"))
        plot.xlabel = view.label(xi)
        plot.title = f"{view.label(yi)} against {view.label(xi)}: {len(front)} of {len(data.xs)} trials on the front"
        plot.series = tuple(series)
        if cursor is not None:
            values = ", ".join(f"{n} {fmt(objective_value(cursor, i))}" for i, n in enumerate(view.names))
            self.caption(Text(f"◆ #{cursor['number']}: {values}", style="bold"))
        else:
            self.caption(Text("no trial on the front yet", style="dim"))

    def _cursor_trial(self, view: StudyView) -> dict[str, Any] | None:
        key = self.query_one(FrontTable).current_key
        return next((t for t in view.trials if str(t.get("number")) == key), None) if key is not None else None

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if self.view is not None:
            self._plot(self.view)

    def on_live_table_highlighted(self, event: LiveTable.Highlighted) -> None:
        if self.view is not None and event.table.id == "front-table":
            xi, yi = self.axes()
            self._series(self.view, self._data, xi, yi)

    _data = ParetoData((), (), (), ())


class HypervolumePane(StudyPane):
    """The hypervolume the complete trials reach, trial by trial."""

    def compose(self) -> ComposeResult:
        yield Static("", classes="pane-caption")
        yield LinePlot("hypervolume", xlabel="trial", id="hv-plot")

    def draw(self, view: StudyView) -> None:
        plot = self.query_one("#hv-plot", LinePlot)
        if len(view.names) < 2:
            plot.title = "hypervolume (needs two or more objectives; History shows one)"
            plot.series = ()
            self.caption("")
            return
        data = hypervolume_data(view.trials, view.directions)
        plot.title = "hypervolume over trials"
        plot.series = (Series("hypervolume", data.xs, data.hv, color="green"),)
        ref = ", ".join(f"{n} {fmt(v)}" for n, v in zip(view.names, data.reference, strict=False))
        self.caption(Text(f"reference point: {ref} (the worst of each objective, a tenth of its range beyond)"
                          if ref else "no complete trial yet", style="dim"))


class ParallelPane(StudyPane):
    """Parameters against the objective: one polyline per complete trial, coloured by its band."""

    def compose(self) -> ComposeResult:
        yield Static("", classes="pane-caption")
        yield LinePlot("parallel coordinates", id="parallel-plot")

    def draw(self, view: StudyView) -> None:
        plot = self.query_one("#parallel-plot", LinePlot)
        params = param_names(view.trials)
        i = view.objective
        data = parallel_data(view.trials, params, i, view.directions[i], view.names[i])
        plot.title = f"parameters against {view.label(i)} (colour: worst fifth grey ... best yellow)"
        if not data.axes:
            plot.series = ()
            self.caption("")
            return
        plot.xticks = (tuple(float(a) for a in range(len(data.axes))), data.axes)
        plot.yticks = ((0.0, 1.0), ("low", "high"))
        plot.series = tuple(Series(f"band {b}", xs, ys, color=BAND_COLORS[b]) for b, (xs, ys) in enumerate(data.groups))
        self.caption(Text("  ".join(data.ranges), style="dim"))


class EdfPane(StudyPane):
    """The empirical distribution of the objective: the share of trials at or below each value."""

    def compose(self) -> ComposeResult:
        yield Static("", classes="pane-caption")
        yield LinePlot("empirical distribution", id="edf-plot")

    def draw(self, view: StudyView) -> None:
        plot = self.query_one("#edf-plot", LinePlot)
        i = view.objective
        xs, ys = edf_data(view.trials, i)
        plot.title = f"empirical distribution of {view.label(i)}"
        plot.xlabel = view.names[i]
        plot.series = (Series(view.names[i], xs, ys, color="cyan"),)
        n = len(xs) // 2
        self.caption(Text(f"share of the {n} complete trials with {view.names[i]} at most x" if n else
                          "no complete trial yet", style="dim"))


EVALUATOR_NAMES = {"ped_anova": "PED-ANOVA", "fanova": "fANOVA"}


@dataclass(frozen=True)
class ImportanceAsk:
    """Which importances the pane shows: of which study version, objective and evaluator."""

    key: str
    version: int
    objective: int
    """An objective's index, or FRONT."""
    evaluator: str


class ImportancePane(StudyPane):
    """Parameter importances per objective (or for reaching the front), PED-ANOVA or fANOVA.
    The screen computes them in a worker when asked (`Wanted`) and sets `result`."""

    @dataclass
    class Wanted(Message):
        ask: ImportanceAsk

    result: reactive[tuple[ImportanceAsk, dict[str, float], str] | None] = reactive(None, init=False)
    """(what was asked, importances, a note when there are none)."""

    def compose(self) -> ComposeResult:
        with Horizontal(classes="pane-bar"):
            yield Select([("objective", UNSET)], id="importance-objective", compact=True, allow_blank=False, value=UNSET)
            yield Select([(v, k) for k, v in EVALUATOR_NAMES.items()], id="importance-evaluator", compact=True,
                         allow_blank=False, value="ped_anova")
            yield Static("", classes="pane-caption")
        yield BarList("no importances yet (they need two or more complete trials)", id="importances")

    def draw(self, view: StudyView) -> None:
        options = [(view.label(i), i) for i in range(len(view.names))]
        if len(view.names) > 1:
            options.append(("reaching the front", FRONT))
        select = self.query_one("#importance-objective", Select)
        with select.prevent(Select.Changed):
            select.set_options(options)
            select.value = view.objective
        self._ask()

    def ask(self) -> ImportanceAsk | None:
        if self.view is None:
            return None
        objective = self.query_one("#importance-objective", Select).value
        evaluator = self.query_one("#importance-evaluator", Select).value
        return ImportanceAsk(self.view.key, self.view.version,
                             objective if isinstance(objective, int) and objective != UNSET else 0,
                             evaluator if isinstance(evaluator, str) else "ped_anova")

    def _ask(self) -> None:
        ask = self.ask()
        if ask is not None and (self.result is None or self.result[0] != ask):
            self.caption(Text(f"computing {EVALUATOR_NAMES[ask.evaluator]} importances ...", style="dim"))
            self.post_message(self.Wanted(ask))

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self._ask()

    def watch_result(self) -> None:
        if self.result is None or self.result[0] != self.ask():
            return
        ask, values, note = self.result
        self.query_one(BarList).bars = tuple((k, float(v)) for k, v in values.items())
        if not note and self.view is not None:
            n = sum(1 for t in self.view.trials if t.get("state") == "complete")
            what = "reaching the front" if ask.objective == FRONT else self.view.label(ask.objective)
            note = f"{EVALUATOR_NAMES[ask.evaluator]}: {what}, {n} complete trials"
        self.caption(Text(note, style="dim"))
