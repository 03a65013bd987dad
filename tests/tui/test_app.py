"""The app's frame: tabs on number keys, help, the command palette lists actions."""

from __future__ import annotations

import asyncio
import re

from textual.widgets import TabbedContent

from mlxlora.tui.app import TABS, MlxloraApp


def test_number_keys_switch_tabs(home):
    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)) as pilot:
            tabs = app.query_one(TabbedContent)
            assert tabs.active == "datasets"
            for i, (tab, _, _) in enumerate(TABS, 1):
                await pilot.press(str(i))
                await pilot.pause()  # a tab's on_show (focus, workers) settles first
                assert tabs.active == tab
            await pilot.press("question_mark")
            assert app.screen.query("HelpPanel")

    asyncio.run(go())


def test_f1_opens_the_help_from_a_text_field_and_escape_closes_it(home):
    """In a text field ? is typed into it, and F1 did nothing, so the help could not be
    opened from a field; the panel, once open, ignored escape (only ? closed it)."""
    from textual.widgets import Input

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            field = app.query_one("#f-name", Input)
            field.focus()
            await pilot.press("f1")
            await pilot.pause()
            assert app.screen.query("HelpPanel")
            await pilot.press("escape")
            await pilot.pause()
            assert not app.screen.query("HelpPanel")
            assert app.focused is field  # that escape closed the panel only
            await pilot.press("escape", "f1")
            await pilot.pause()
            assert app.screen.query("HelpPanel")

    asyncio.run(go())


def test_escape_leaves_a_field_so_number_keys_switch_tabs_again(home):
    from textual.widgets import Input

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            field = app.query_one("#f-name", Input)
            field.focus()
            await pilot.press("3")  # typed into the field, as a field takes keys
            assert field.value.endswith("3") and app.query_one(TabbedContent).active == "train"
            await pilot.press("escape", "3")
            await pilot.pause()
            assert app.query_one(TabbedContent).active == "runs"

    asyncio.run(go())


def test_escape_keeps_the_tabs_own_keys(home):
    """Escape left focus nowhere: the tab's keys (Train's ctrl+s, Runs' and Compare's) did
    nothing until two tabs brought focus back, and a file name typed next switched tabs."""
    from run_fixtures import write_run
    from textual.widgets import Input, Select, SelectionList

    write_run("一つ目", end="finished")

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            app.query_one("#f-name", Input).focus()
            await pilot.press("escape")
            assert isinstance(app.focused, Select)  # the preset picker: the form's first control
            assert {"ctrl+g", "ctrl+s", "ctrl+t"} <= set(app.screen.active_bindings)
            await pilot.press("4", "escape")
            await pilot.pause()
            assert isinstance(app.focused, SelectionList)  # Compare's run list
            assert {"p", "h", "m"} <= set(app.screen.active_bindings)

    asyncio.run(go())


def test_palette_offers_every_tab(home):
    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)):
            titles = [c.title for c in app.get_system_commands(app.screen)]
            for _, title, _ in TABS:
                assert f"Go to {title}" in titles

    asyncio.run(go())


def test_the_palette_lists_each_action_once(home):
    """The Train form's inputs each bind copy and cut: the palette listed them three times."""

    async def go():
        app = MlxloraApp("train")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.5)
            titles = [c.title for c in app.get_system_commands(app.screen)]
            assert "Start job" in titles
            assert len(titles) == len(set(titles)), sorted(titles)

    asyncio.run(go())


def test_a_tab_is_mounted_when_first_shown(home):
    from mlxlora.tui.screens.train import TrainTab

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            assert not app.query(TrainTab)  # the app opens on Runs alone
            await pilot.press("2")
            await pilot.pause()
            assert app.query(TrainTab) and app.query_one(TabbedContent).active == "train"
            form = app.query_one(TrainTab)
            await pilot.press("3", "2")
            await pilot.pause()
            assert app.query_one(TrainTab) is form  # mounted once, kept

    asyncio.run(go())


def test_footer_shows_the_keys_here_redraws_only_when_they_change_and_clicks_press(home):
    from mlxlora.tui.widgets.keys_footer import KeysFooter

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(120, 24)) as pilot:
            await pilot.pause()
            footer = app.query_one(KeysFooter)
            line = footer.render().plain
            assert "s Stop run" in line and "? Help" in line and line.rstrip().endswith("palette")
            await pilot.press("2")
            await pilot.pause()
            line = footer.render().plain
            assert "^g Start job" in line and "Stop run" not in line
            refreshed = []
            footer.refresh = lambda *a, **k: refreshed.append(1)
            app.screen.refresh_bindings()  # the same keys again: nothing to redraw
            await pilot.pause()
            assert refreshed == []
            del footer.refresh
            await pilot.click(KeysFooter, offset=(line.index("Help"), 0))
            await pilot.pause()
            assert app.screen.query("HelpPanel")

    asyncio.run(go())


def test_at_80_columns_every_tab_shows_its_keys_and_the_palette_s_word(home):
    """The Runs tab's footer cut "^p palette" to "^p" at 80 columns; ctrl+q, out of the
    footer for the room, is still in the help panel."""
    from mlxlora.tui.widgets.keys_footer import KeysFooter

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            footer = app.query_one(KeysFooter)
            line = footer.render().plain
            for key in ("s Stop", "r Resume", "d Delete", "e Evaluate", "x Export", "f Fuse"):
                assert key in line, line
            for i, (tab, _, _) in enumerate(TABS, 1):
                await pilot.press(str(i))
                await pilot.pause()
                line = footer.render().plain
                assert line.rstrip().endswith("^p palette"), (tab, line)
                assert "? Help" in line and len(line) <= 80, (tab, line)
            await pilot.press("question_mark")
            await pilot.pause()
            assert re.search(r"\^q +Quit", _help_text(app))

    asyncio.run(go())


def _help_text(app) -> str:
    """The open help panel's table of keys, as the screen shows it."""
    import io

    from rich.console import Console
    from textual.widgets._key_panel import BindingsTable

    console = Console(file=io.StringIO(), width=80)
    console.print(app.screen.query_one(BindingsTable).render_bindings_table())
    return console.file.getvalue()
