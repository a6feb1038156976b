"""Many curves on one braille canvas, rasterised with numpy: the compare view's plot.

plotext draws point by point in Python: about 300 ms for 50 curves of 200 points
at 120x40 (measured for bench/bench_tui.py), far over a key-to-repaint budget of
100 ms. Here every segment of every curve is rasterised in a few numpy
operations and each row becomes one Strip, so a redraw takes milliseconds.

Each cell holds the braille dots of every curve through it, in the colour of
the last curve drawn there (curves are drawn in the order given: the legend's).
A scatter series is dots without lines; NaN in a series breaks its line (many
polylines in one series: the parallel-coordinate view); a series with a
`marker` puts that character in its points' cells, over the dots (the
highlighted trial). Lines are cached per size and data; a new `series`,
`log_y`, `title` or ticks redraws.
"""

from __future__ import annotations

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from trialdeck.tui.widgets.plots import COLORS, Series

# Braille dot bits by (row 0-3, column 0-1) inside a cell (Unicode's dot numbering 1-8).
_DOTS = np.array([[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]], dtype=np.uint8)
Y_TICKS = 5
X_TICKS = 5


def _label(value: float) -> str:
    return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.1e}"


def rasterise(px: np.ndarray, py: np.ndarray, gaps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel on the polyline through integer points (px, py): each segment sampled at one
    point per pixel of its longer side, all segments at once. `gaps`: True for a point that
    only ends a polyline (no segment from it to the next: many polylines in one series)."""
    if len(px) < 2:
        return px, py
    dx, dy = np.diff(px), np.diff(py)
    if gaps is not None:
        keep = ~gaps[:-1]
        dx, dy = np.where(keep, dx, 0), np.where(keep, dy, 0)
    steps = np.maximum(np.maximum(np.abs(dx), np.abs(dy)), 1)
    seg = np.repeat(np.arange(len(dx)), steps)
    start = np.repeat(np.cumsum(steps) - steps, steps)
    t = (np.arange(int(steps.sum())) - start) / steps[seg]
    xs = np.rint(px[seg] + t * dx[seg]).astype(np.int64)
    ys = np.rint(py[seg] + t * dy[seg]).astype(np.int64)
    return np.append(xs, px[-1]), np.append(ys, py[-1])


class LinePlot(Widget):
    """A titled line plot of several series, y labels on the left and x labels below."""

    DEFAULT_CSS = """
    LinePlot {
        height: 1fr;
    }
    """

    series: reactive[tuple[Series, ...]] = reactive((), init=False)
    """What to draw, in drawing order; assign a new tuple to redraw."""
    log_y: reactive[bool] = reactive(False, init=False)
    """A log-scale y axis (used only when every value is positive)."""
    title: reactive[str] = reactive("", init=False)
    xticks: reactive[tuple[tuple[float, ...], tuple[str, ...]] | None] = reactive(None, init=False)
    """Labels at given x positions (a categorical axis), instead of numbers."""
    yticks: reactive[tuple[tuple[float, ...], tuple[str, ...]] | None] = reactive(None, init=False)
    """Labels at given y positions, instead of numbers."""

    def __init__(self, title: str = "", *, xlabel: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.set_reactive(LinePlot.title, title)
        self.xlabel = xlabel
        self._strips: list[Strip] | None = None
        self._drawn_size: tuple[int, int] = (0, 0)

    def watch_series(self) -> None:
        self._invalidate()

    def watch_log_y(self) -> None:
        self._invalidate()

    def watch_title(self) -> None:
        self._invalidate()

    def watch_xticks(self) -> None:
        self._invalidate()

    def watch_yticks(self) -> None:
        self._invalidate()

    def _invalidate(self) -> None:
        self._strips = None
        self.refresh()

    def on_resize(self) -> None:
        self._invalidate()

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        if self._strips is None or self._drawn_size != (width, height):
            self._drawn_size = (width, height)
            self._strips = self._draw(width, height)
        return self._strips[y] if 0 <= y < len(self._strips) else Strip.blank(width, self.rich_style)

    # -- drawing -----------------------------------------------------------------------------

    def _draw(self, width: int, height: int) -> list[Strip]:
        base = self.rich_style
        dim = base + Style(dim=True)
        drawn = [(s, *self._points(s)) for s in self.series]
        drawn = [d for d in drawn if len(d[1])]
        log = self.log_y and bool(drawn) and all(np.all(d[2] > 0) for d in drawn)
        title = self.title if drawn else f"{self.title} (no data yet)"
        lines = [Strip([Segment(title[:width].center(width), base + Style(bold=True))])]
        if height < 5 or width < 16 or not drawn:
            return lines + [Strip.blank(width, base)] * max(0, height - 1)

        ys_all = np.concatenate([np.log10(ys) if log else ys for _, _, ys, _ in drawn])
        xs_all = np.concatenate([xs for _, xs, _, _ in drawn])
        y0, y1 = float(ys_all.min()), float(ys_all.max())
        x0, x1 = float(xs_all.min()), float(xs_all.max())
        if y1 - y0 < 1e-12:
            y0, y1 = y0 - 0.5, y1 + 0.5
        if x1 - x0 < 1e-12:
            x0, x1 = x0 - 0.5, x1 + 0.5
        rows = height - 3  # the title above, the axis and its labels below
        labels = self._y_labels(rows, y0, y1, log)
        margin = max(len(t) for t in labels.values()) + 1
        cols = width - margin - 1
        if cols < 4:
            return lines + [Strip.blank(width, base)] * (height - 1)

        bits = np.zeros((rows, cols), dtype=np.uint8)
        owner = np.full((rows, cols), -1, dtype=np.int32)
        marks: dict[tuple[int, int], int] = {}
        for i, (s, xs, ys, gaps) in enumerate(drawn):
            ys = np.log10(ys) if log else ys
            px = np.rint((xs - x0) / (x1 - x0) * (2 * cols - 1)).astype(np.int64)
            py = np.rint((y1 - ys) / (y1 - y0) * (4 * rows - 1)).astype(np.int64)
            if s.marker is not None:
                for cell in zip((py // 4).tolist(), (px // 2).tolist(), strict=True):
                    marks[cell] = i
                continue
            if not s.scatter:
                px, py = rasterise(px, py, gaps)
            cy, cx = py // 4, px // 2
            np.bitwise_or.at(bits, (cy, cx), _DOTS[py % 4, px % 2])
            owner[cy, cx] = i

        styles = [base + Style.parse(self._color(i, s)) for i, (s, *_) in enumerate(drawn)]
        for r in range(rows):
            label = labels.get(r, "")
            segments = [Segment(label.rjust(margin - 1) + " ", dim), Segment("┤" if r in labels else "│", dim)]
            row_bits, row_owner = bits[r], owner[r]
            run_owner, run_chars = -2, list[str]()
            for c in range(cols):
                o = int(row_owner[c])
                ch = chr(0x2800 + int(row_bits[c])) if row_bits[c] else " "
                mark = marks.get((r, c))
                if mark is not None:
                    o, ch = mark, drawn[mark][0].marker or ch
                if o != run_owner and run_chars:
                    segments.append(Segment("".join(run_chars), styles[run_owner] if run_owner >= 0 else base))
                    run_chars = []
                run_owner = o
                run_chars.append(ch)
            if run_chars:
                segments.append(Segment("".join(run_chars), styles[run_owner] if run_owner >= 0 else base))
            lines.append(Strip(segments))
        return lines + self._x_axis(width, margin, cols, x0, x1, xs_all, dim)

    @staticmethod
    def _points(s: Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A series' finite points, and for each whether the polyline breaks after it (a
        point left out between them: NaN in the data separates polylines)."""
        xs, ys = np.asarray(s.xs, float), np.asarray(s.ys, float)
        idx = np.flatnonzero(np.isfinite(xs) & np.isfinite(ys))
        gaps = np.append(np.diff(idx) > 1, True)
        return xs[idx], ys[idx], gaps

    def _y_labels(self, rows: int, y0: float, y1: float, log: bool) -> dict[int, str]:
        """Row -> label: `yticks` where given, else numbers at evenly spaced rows."""
        if self.yticks is not None:
            out = {}
            for value, text in zip(*self.yticks, strict=True):
                out[min(rows - 1, max(0, round((y1 - value) / (y1 - y0) * (rows - 1))))] = text
            return out
        tick_rows = sorted({round(k * (rows - 1) / (Y_TICKS - 1)) for k in range(Y_TICKS)})
        tick_values = [y1 - (y1 - y0) * r / max(1, rows - 1) for r in tick_rows]
        return {r: _label(10 ** v if log else v) for r, v in zip(tick_rows, tick_values)}

    def _x_axis(self, width: int, margin: int, cols: int, x0: float, x1: float, xs_all: np.ndarray,
                dim: Style) -> list[Strip]:
        """The x axis with its ticks, and the labels under it (`xticks` where given)."""
        if self.xticks is not None:
            ticks = [(min(cols - 1, max(0, round((v - x0) / (x1 - x0) * (cols - 1)))), text)
                     for v, text in zip(*self.xticks, strict=True)]
        else:
            # Whole epochs where the x values are whole numbers, placed where those values fall.
            integral = bool(np.all(np.mod(xs_all, 1) == 0))
            values = [x0 + (x1 - x0) * k / (X_TICKS - 1) for k in range(X_TICKS)]
            if integral:
                values = sorted({round(v) for v in values})
            ticks = [(min(cols - 1, max(0, round((v - x0) / (x1 - x0) * (cols - 1)))),
                      str(v) if integral else _label(v)) for v in values]
        axis_row = ["─"] * cols
        for c, _ in ticks:
            axis_row[c] = "┬"
        under = [" "] * width
        for c, text in ticks:
            start = min(max(0, margin + 1 + c - len(text) // 2), width - len(text))
            if all(ch == " " for ch in under[max(0, start - 1):start + len(text) + 1]):
                under[start:start + len(text)] = text
        if self.xlabel:
            text = f" {self.xlabel}"
            start = width - len(text)
            if all(ch == " " for ch in under[start - 1:]):
                under[start:] = text
        return [Strip([Segment(" " * margin + "└" + "".join(axis_row), dim)]), Strip([Segment("".join(under), dim)])]

    @staticmethod
    def _color(i: int, s: Series) -> str:
        color = s.color or COLORS[i % len(COLORS)]
        if isinstance(color, tuple):
            return f"rgb({color[0]},{color[1]},{color[2]})"
        return str(color)
