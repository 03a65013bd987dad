"""A line chart of loss curves (plotext), downsampled to the width it is drawn at.

It draws through Textual's line API (`render_line`) from lines it keeps: turning plotext's
text into screen lines costs ~15 ms, and Textual asks again whenever the chart is shown or
repainted (every tab switch back to Runs), so each drawing is turned into lines once."""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from textual.strip import Strip
from textual.visual import Visual, visualize
from textual_plotext import PlotextPlot

from mlxlora.runview import downsample

# One colour per run when curves are overlaid: names both plotext and Rich (table cells) know.
PALETTE = ("cyan", "magenta", "green", "yellow", "red", "blue")
# A render takes 30-80 ms of the UI thread: curves that keep growing (a live run) redraw at
# most this often, so keys pressed meanwhile are answered at once.
GROWING_REDRAW_SEC = 1.0
KEPT_RENDERS = 8  # finished runs' charts, shown again without plotting


@dataclass
class Series:
    """One curve: `points` draws markers only (validation losses), else a line."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str
    points: bool = False

    def fingerprint(self) -> tuple:
        """What tells one state of the curve from another without reading all of it."""
        n = min(len(self.x), len(self.y))
        ends = (self.x[-1], self.y[-1], self.y[n // 2], self.y[0]) if n else ()
        return (self.label, self.color, self.points, n, *ends)


class LossChart(PlotextPlot):
    """Loss by step. `plot()` hands it curves; each render downsamples them to the widget's
    width (braille cells hold two points across), so 100,000 steps draw as fast as 100."""

    def __init__(self, title: str = "loss", **kwargs):
        super().__init__(**kwargs)
        self.chart_title = title
        self.series: list[Series] = []
        self.vlines: Sequence[float] = ()
        self._rendered: OrderedDict[tuple, list[Strip]] = OrderedDict()
        self._rendered_at = 0.0
        self._pending_redraw = None

    def plot(self, series: list[Series], vlines: Sequence[float] = ()) -> None:
        """Draw these curves and vertical lines (epoch boundaries) on the next refresh; the
        same curves grown since the last render wait for `GROWING_REDRAW_SEC` to pass."""
        growing = _sources(series) == _sources(self.series)
        self.series, self.vlines = series, vlines
        wait = self._rendered_at + GROWING_REDRAW_SEC - time.monotonic()
        if not growing or wait <= 0:
            self.refresh()
        elif self._pending_redraw is None:
            self._pending_redraw = self.set_timer(wait, self.refresh)

    def render_line(self, y: int) -> Strip:
        lines = self._lines()
        if y < len(lines):
            return lines[y]
        return Strip.blank(self.size.width, self.visual_style.rich_style)

    def _lines(self) -> list[Strip]:
        """The chart's screen lines for the current curves, size and theme: kept, or drawn."""
        key = (
            self.size,
            self.app.theme,
            self.chart_title,
            tuple(s.fingerprint() for s in self.series),
            tuple(self.vlines),
        )
        if key not in self._rendered:
            self._rendered[key] = self._to_lines(self._draw())
            while len(self._rendered) > KEPT_RENDERS:
                self._rendered.popitem(last=False)
            self._drawn()
        self._rendered.move_to_end(key)
        return self._rendered[key]

    def _drawn(self) -> None:
        if self._pending_redraw is not None:
            self._pending_redraw.stop()
            self._pending_redraw = None
        self._rendered_at = time.monotonic()

    def _to_lines(self, text) -> list[Strip]:
        width, height = self.size
        return Visual.to_strips(self, visualize(self, text), width, height, self.visual_style)

    def _draw(self):
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.chart_title)
        plt.xlabel("step")
        points = max(self.size.width * 2, 2)
        drawn = [s for s in self.series if len(s.x)]
        for s in drawn:
            x, y = downsample(s.x, s.y, points)
            label = one_char_per_cell(s.label)
            if s.points:
                plt.scatter(x, y, label=label, color=s.color, marker="o")
            else:
                plt.plot(x, y, label=label, color=s.color, marker="braille")
        for x in readable_lines(self.vlines, self.size.width) if drawn else ():
            plt.vertical_line(x, color="gray")
        steps = [v for s in drawn for v in (s.x[0], s.x[-1])]
        if steps:  # whole steps on the axis (plotext put 15.8 and 31.5; one point: -1 to 1)
            lo, hi = min(steps), max(steps)
            lo, hi = (lo - 1, hi + 1) if lo == hi else (lo, hi)
            plt.xlim(lo, hi)
            plt.xticks(step_ticks(lo, hi, self.size.width))
        return super().render()


def step_ticks(lo: float, hi: float, width: int) -> list[int]:
    """Whole-number ticks from `lo` to `hi` a round distance apart (1, 2, 5 x 10^k), at most
    one per 12 cells of `width`."""
    most = max(2, width // 12)
    span = max(hi - lo, 1)
    gaps = (m * 10**k for k in itertools.count() for m in (1, 2, 5))
    gap = next(g for g in gaps if span / g <= most)
    return list(range(math.ceil(lo / gap) * gap, math.floor(hi) + 1, gap))


def one_char_per_cell(text: str) -> str:
    """`text` for plotext, which lays out one character per cell: each wide character (CJK,
    two cells) is followed by a zero-width space that takes the cell it covers, or the row
    would come out wider than the chart and wrap (a Japanese run name broke the legend's line
    in two)."""
    return "".join(c + "\u200b" if cell_len(c) == 2 else c for c in text)


def readable_lines(vlines: Sequence[float], width: int) -> Sequence[float]:
    """The epoch boundaries to draw: all while they are a few cells apart on average; none
    when there are more (77 epochs on 80 cells filled the plot with bars)."""
    return vlines if len(vlines) <= width // 4 else ()


def _sources(series: list[Series]) -> list[tuple[int, int]]:
    """Which arrays the curves come from: the same ones again are the same curves, grown."""
    return [(id(s.x), id(s.y)) for s in series]
