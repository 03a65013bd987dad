"""A line chart of loss curves (plotext), downsampled to the width it is drawn at."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from textual_plotext import PlotextPlot

from mlxlora.runview import downsample

# One colour per run when curves are overlaid: names both plotext and Rich (table cells) know.
PALETTE = ("cyan", "magenta", "green", "yellow", "red", "blue")


@dataclass
class Series:
    """One curve: `points` draws markers only (validation losses), else a line."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str
    points: bool = False


class LossChart(PlotextPlot):
    """Loss by step. `plot()` hands it curves; each render downsamples them to the widget's
    width (braille cells hold two points across), so 100,000 steps draw as fast as 100."""

    def __init__(self, title: str = "loss", **kwargs):
        super().__init__(**kwargs)
        self.chart_title = title
        self.series: list[Series] = []
        self.vlines: Sequence[float] = ()

    def plot(self, series: list[Series], vlines: Sequence[float] = ()) -> None:
        """Draw these curves and vertical lines (epoch boundaries) on the next refresh."""
        self.series, self.vlines = series, vlines
        self.refresh()

    def render(self):
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.chart_title)
        plt.xlabel("step")
        points = max(self.size.width * 2, 2)
        drawn = [s for s in self.series if len(s.x)]
        for s in drawn:
            x, y = downsample(s.x, s.y, points)
            if s.points:
                plt.scatter(x, y, label=s.label, color=s.color, marker="o")
            else:
                plt.plot(x, y, label=s.label, color=s.color, marker="braille")
        for x in self.vlines if drawn else ():
            plt.vertical_line(x, color="gray")
        return super().render()
