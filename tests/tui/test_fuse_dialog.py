"""The Fuse dialog (key `f` on the Runs tab): a real trained run fused by a child
`mlxlora fuse --json` into a model directory, shown with its files; a run without an adapter
and an output that is not an earlier fuse show the child's one-line error."""

from __future__ import annotations

import asyncio
import json

import pytest
from run_fixtures import screen_text, wait_for, write_run
from test_export_dialog import train_quick
from textual.widgets import DataTable, Input, Select, Static

from mlxlora import queue_runner
from mlxlora.tui.app import MlxloraApp
from mlxlora.tui.screens.fuse import FuseDialog


def log(app) -> str:
    return str(app.screen.query_one("#fuse-log", Static).content)


async def open_fuse(pilot, name: str) -> FuseDialog:
    table = pilot.app.query_one("#runs-table", DataTable)
    await wait_for(pilot, lambda: table.row_count > 0)
    keys = [str(row.key.value) for row in table.ordered_rows]
    table.move_cursor(row=next(i for i, k in enumerate(keys) if k.endswith(name)))
    await pilot.press("f")
    await wait_for(pilot, lambda: "Fuse into a model directory: " in screen_text(pilot.app))
    return pilot.app.screen


@pytest.mark.slow
def test_f_fuses_a_run_into_a_model_directory(home, monkeypatch):
    """`mlxlora fuse RUN` had no studio face (ctrl+p "fuse": no matches)."""
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)
    train_quick(home)
    run = home / "runs" / "quick"
    (home / "elsewhere").mkdir()
    (home / "elsewhere" / "notes.txt").write_text("mine", "utf-8")

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(100, 32)) as pilot:
            await open_fuse(pilot, "quick")
            assert "empty: the run's own fused/" in screen_text(app)
            await pilot.press("enter")  # Fuse, to the default place
            await wait_for(pilot, lambda: "wrote " in screen_text(app), timeout=300)
            shown = log(app)  # a long path wraps on screen
            assert shown.startswith(f"wrote {run / 'fused'}\n")
            assert "config.json" in shown and "model.safetensors" in shown and "MiB" in shown

            field = app.screen.query_one("#fuse-out", Input)
            field.value = str(home / "elsewhere")  # not an earlier fuse: refused, kept
            field.focus()
            await pilot.press("enter")
            await wait_for(pilot, lambda: "error: " in screen_text(app), timeout=300)
            assert "is not an earlier `mlxlora fuse` output" in log(app)
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, FuseDialog))

    asyncio.run(go())
    fused = run / "fused"
    assert json.loads((fused / "config.json").read_text("utf-8"))["model_type"]
    assert (fused / "model.safetensors").stat().st_size > 0
    assert (home / "elsewhere" / "notes.txt").read_text("utf-8") == "mine"


def test_fuse_dialog_shows_the_childs_error(home, monkeypatch):
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)
    write_run("done", end="finished")  # written by hand: no adapter files

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await open_fuse(pilot, "done-20250615-000000")
            dialog = app.screen
            assert dialog._arguments()[-1] == "--json"  # a quantized base: fuse decides
            dialog.query_one("#fuse-weights", Select).value = "--keep-quantized"
            assert dialog._arguments()[-1] == "--keep-quantized"
            await pilot.pause()
            await pilot.click("#fuse-start")
            await wait_for(pilot, lambda: "error: " in screen_text(app), timeout=120)
            assert "no adapter saved" in log(app)

    asyncio.run(go())


def test_a_running_run_is_not_fused(home, monkeypatch):
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)
    write_run("live", steps=12, end="running")

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(100, 32)) as pilot:
            await wait_for(pilot, lambda: app.query_one("#runs-table", DataTable).row_count)
            await pilot.press("f")
            await pilot.pause(0.2)
            assert not isinstance(app.screen, FuseDialog)
            said = [str(n.message) for n in app._notifications]
            assert said == ["Only a finished or stopped run fuses"]

    asyncio.run(go())
