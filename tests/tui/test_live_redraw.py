"""Redrawing a live run cheaply: LossChart's growing curves redraw at a bounded rate and a
chart shown again is not plotted again; the run's numbers redraw without a layout pass."""

from __future__ import annotations

import asyncio
from array import array
from types import SimpleNamespace

from run_fixtures import wait_for
from textual.app import App

from mlxlora.tui.widgets import loss_chart
from mlxlora.tui.widgets.loss_chart import LossChart, Series


class ChartApp(App):
    def compose(self):
        yield LossChart("loss")


def test_growing_curves_redraw_at_a_bounded_rate_and_charts_shown_again_are_kept(monkeypatch):
    monkeypatch.setattr(loss_chart, "GROWING_REDRAW_SEC", 0.5)
    # the chart's clock and its timer are the test's: five pauses took over 0.5 s on a slow
    # machine, and the redraw they deferred came before the test looked
    now = [1000.0]
    monkeypatch.setattr(loss_chart, "time", SimpleNamespace(monotonic=lambda: now[0]))
    plotted, timers = [], []

    def set_timer(delay, callback):
        timers.append((delay, callback))
        return SimpleNamespace(stop=lambda: None)

    async def go():
        app = ChartApp()
        async with app.run_test(size=(80, 24)) as pilot:
            chart = app.query_one(LossChart)
            draw = chart._draw
            monkeypatch.setattr(chart, "_draw", lambda: plotted.append(1) or draw())
            monkeypatch.setattr(chart, "set_timer", set_timer)
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
            assert [delay for delay, _ in timers] == [0.5]  # one redraw, when it is 0.5 s old
            now[0] += 0.5
            timers[0][1]()  # the timer fires
            await wait_for(pilot, lambda: len(plotted) == 2, timeout=2.0)  # then the latest
            other = (array("d", [1.0]), array("d", [5.0]))
            chart.plot([Series("train", *other, "cyan")])  # another run: drawn at once
            await pilot.pause()
            assert len(plotted) == 3
            chart.plot([Series("train", x, y, "cyan")])  # back to the first, unchanged
            await pilot.pause()
            assert len(plotted) == 3 and chart.series[0].x is x

    asyncio.run(go())


def test_run_numbers_redraw_without_a_layout_pass_while_their_height_stays(tmp_path, monkeypatch):
    """A live run's panel redraws four times a second: a layout pass each time would cost
    the whole screen. A text of another height still gets one."""
    from textual.widgets import Static

    from mlxlora.events import RunFailed, RunStarted, Step
    from mlxlora.runview import RunView
    from mlxlora.tui.screens.run_detail import RunDetail

    layouts = []
    update = Static.update
    monkeypatch.setattr(
        Static,
        "update",
        lambda self, c="", *, layout=True: layouts.append(layout) or update(self, c, layout=layout),
    )

    class DetailApp(App):
        def compose(self):
            yield RunDetail()

    async def go():
        app = DetailApp()
        async with app.run_test(size=(160, 48)) as pilot:
            detail = app.query_one(RunDetail)
            view = RunView(tmp_path)
            view.add([RunStarted("r", "m", "mlx", "cpu", 8, 2, 100, 10, 1, 2, 0.1)])
            for step in range(1, 4):
                view.add([Step(step, step / 10, 2.0 / step, 1e-3, 10, 100.0, 0.5, time=step)])
                layouts.clear()
                detail.show(view, "running")
                await pilot.pause()
                if step > 1:
                    assert layouts == [False]  # the stats changed, nothing else
            view.add([RunFailed(reason="out of memory", step=3)])
            layouts.clear()
            detail.show(view, "failed")
            assert layouts == [False, True]  # stats in place; the failure line appears

    asyncio.run(go())


def test_a_chart_shown_again_is_not_turned_into_lines_again(monkeypatch):
    """Textual repaints a widget each time it is shown (every switch back to Runs); turning
    plotext's text into screen lines is ~15 ms, so the lines of a drawing are kept."""
    converted = []

    async def go():
        app = ChartApp()
        async with app.run_test(size=(80, 24)) as pilot:
            chart = app.query_one(LossChart)
            to_lines = chart._to_lines
            monkeypatch.setattr(chart, "_to_lines", lambda t: converted.append(1) or to_lines(t))
            x, y = array("d", [1, 2, 3]), array("d", [3.0, 2.0, 1.5])
            chart.plot([Series("train", x, y, "cyan")])
            await pilot.pause()
            assert len(converted) == 1
            for _ in range(3):
                chart.display = False
                await pilot.pause()
                chart.display = True
                await pilot.pause()
            assert len(converted) == 1 and chart.region.area > 0
            assert any("⠀" < ch <= "⣿" for ch in _screen(app))  # braille: the curve is drawn

    asyncio.run(go())


def _screen(app) -> str:
    return "\n".join(
        "".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips()
    )


def test_the_studio_takes_what_it_built_out_of_the_collectors_sweeps(home):
    """A full collection walks every object the app holds (~70 ms here) and a key pressed
    meanwhile waits: what the app has built at start is frozen once the first screen is out."""
    import gc

    from mlxlora.tui.app import MlxloraApp

    async def go():
        gc.unfreeze()
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: gc.get_freeze_count() > 10_000, timeout=5.0)
        gc.unfreeze()

    asyncio.run(go())


def test_a_japanese_run_name_keeps_the_legend_on_its_line():
    """plotext lays out a character per cell; a name of two-cell characters made its legend
    row wider than the chart, and the row wrapped: every line below it moved down."""

    def drawn(chart) -> list:
        return list(chart._rendered.values())[-1] if chart._rendered else []

    async def go():
        app = ChartApp()
        async with app.run_test(size=(60, 16)) as pilot:
            chart = app.query_one(LossChart)
            curves = [("掃引-rank4", [3.0, 2.0, 1.5]), ("base", [3.0, 2.5, 2.0])]
            chart.plot([Series(name, [1, 2, 3], y, "cyan") for name, y in curves])
            await wait_for(pilot, lambda: any("掃" in line.text for line in drawn(chart)))
            lines = drawn(chart)
            assert len(lines) == 16 and all(line.cell_length == 60 for line in lines)
            row = next(i for i, line in enumerate(lines) if "掃" in line.text)
            assert lines[row].text.rstrip().endswith("│")  # the plot's right edge, in place
            assert "base" in lines[row + 1].text  # the next legend entry, on the next row

    asyncio.run(go())
