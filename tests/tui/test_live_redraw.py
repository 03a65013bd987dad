"""LossChart: a live run's growing curves redraw at a bounded rate; a chart shown again is
not plotted again."""

from __future__ import annotations

import asyncio
from array import array

from run_fixtures import wait_for
from textual.app import App

from mlxlora.tui.widgets import loss_chart
from mlxlora.tui.widgets.loss_chart import LossChart, Series


class ChartApp(App):
    def compose(self):
        yield LossChart("loss")


def test_growing_curves_redraw_at_a_bounded_rate_and_charts_shown_again_are_kept(monkeypatch):
    monkeypatch.setattr(loss_chart, "GROWING_REDRAW_SEC", 0.5)
    plotted = []

    async def go():
        app = ChartApp()
        async with app.run_test(size=(80, 24)) as pilot:
            chart = app.query_one(LossChart)
            draw = chart._draw
            monkeypatch.setattr(chart, "_draw", lambda: plotted.append(1) or draw())
            x, y = array("d", [1, 2]), array("d", [3.0, 2.0])
            chart.plot([Series("train", x, y, "cyan")])
            await pilot.pause()
            assert len(plotted) == 1
            for step in range(3, 8):  # a live run: five new steps in quick succession
                x.append(step)
                y.append(1.0)
                chart.plot([Series("train", x, y, "cyan")])
                await pilot.pause()
            assert len(plotted) == 1  # not yet: the last drawing is younger than 0.5 s
            await wait_for(pilot, lambda: len(plotted) == 2, timeout=2.0)  # then the latest
            other = (array("d", [1.0]), array("d", [5.0]))
            chart.plot([Series("train", *other, "cyan")])  # another run: drawn at once
            await pilot.pause()
            assert len(plotted) == 3
            chart.plot([Series("train", x, y, "cyan")])  # back to the first, unchanged
            await pilot.pause()
            assert len(plotted) == 3 and chart.series[0].x is x

    asyncio.run(go())
