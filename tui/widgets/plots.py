"""Curves drawn with textual-plotext, fed whole series through one reactive.

Plotting is only redone when the series change (a new tuple), never per frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static
from textual_plotext import PlotextPlot

COLORS = ("cyan", "orange", "green", "magenta", "blue", "red", "yellow", "white")


@dataclass(frozen=True)
class Series:
    label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    scatter: bool = False
    color: str | tuple[int, int, int] | None = None
    """A colour name or RGB; None: the next of COLORS. A fixed colour keeps a run's colour
    when another series has no data (the compare view's legend relies on it)."""
    marker: str | None = None
    """LinePlot: draw each point as this character filling its cell (a highlighted trial)
    instead of braille dots."""


def clean(xs: Sequence[float], ys: Sequence[float | None]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Drop points whose y is missing or not finite (NaN losses are stored as null)."""
    pairs = [(x, y) for x, y in zip(xs, ys) if isinstance(y, (int, float)) and math.isfinite(y)]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


class CurvePlot(PlotextPlot):
    """A titled plot of one or more series."""

    series: reactive[tuple[Series, ...]] = reactive((), init=False)
    """What to draw; assign a new tuple to redraw."""
    xticks: reactive[tuple[tuple[float, ...], tuple[str, ...]] | None] = reactive(None, init=False)
    """Categorical axis labels (positions, labels), or None for numbers."""

    def __init__(self, title: str, *, xlabel: str = "", log_y: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = title
        self.xlabel = xlabel
        self.log_y = log_y
        self.empty_note = "no data yet"
        """Said in the title when there is nothing to draw."""

    def on_mount(self) -> None:
        super().on_mount()
        self._draw()

    def watch_series(self) -> None:
        self._draw()

    def watch_xticks(self) -> None:
        self._draw()

    def _draw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        drawn = [s for s in self.series if s.xs]
        plt.title(self.title if drawn else f"{self.title} ({self.empty_note})")
        if self.xlabel:
            plt.xlabel(self.xlabel)
        positive = all(y > 0 for s in drawn for y in s.ys)
        if self.log_y and drawn and positive:
            plt.yscale("log")
        for i, s in enumerate(drawn):
            color = s.color or COLORS[i % len(COLORS)]
            label = s.label if len(drawn) > 1 else None
            if s.scatter:
                plt.scatter(list(s.xs), list(s.ys), label=label, color=color, marker="dot")
            else:
                plt.plot(list(s.xs), list(s.ys), label=label, color=color, marker="braille")
        if self.xticks is not None and drawn:
            plt.xticks(list(self.xticks[0]), list(self.xticks[1]))
        self.refresh()


class BarList(Static):
    """Horizontal bars from block characters: one line per (label, value)."""

    bars: reactive[tuple[tuple[str, float], ...]] = reactive((), init=False)
    """(label, value >= 0) pairs, drawn largest first."""

    def __init__(self, empty: str = "", **kwargs) -> None:
        super().__init__(empty, **kwargs)
        self.empty = empty

    def watch_bars(self, bars: tuple[tuple[str, float], ...]) -> None:
        if not bars:
            self.update(self.empty)
            return
        width = max(8, (self.size.width or 60) - 32)
        top = max((v for _, v in bars), default=0.0) or 1.0
        label_w = min(24, max(len(k) for k, _ in bars))
        out = Text()
        for label, value in sorted(bars, key=lambda b: -b[1]):
            n = value / top * width
            full = int(n)
            bar = "█" * full + ("▌" if n - full >= 0.5 else "")
            out.append(f"{label[:label_w]:<{label_w}} ")
            out.append(bar, style="cyan")
            out.append(f" {value:.3f}\n")
        self.update(out)
