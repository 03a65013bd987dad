"""The app's frame: tabs on number keys, help, the command palette lists actions."""

from __future__ import annotations

import asyncio

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


def test_palette_offers_every_tab(home):
    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)):
            titles = [c.title for c in app.get_system_commands(app.screen)]
            for _, title, _ in TABS:
                assert f"Go to {title}" in titles

    asyncio.run(go())
