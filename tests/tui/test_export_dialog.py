"""The Export dialog (key `e` on the Runs tab): a real trained run exported by a child
`mlxlora export` into a fake `ollama`; a run without an adapter shows the child's error line."""

from __future__ import annotations

import pytest
from run_fixtures import REPO, screen_text, wait_for, write_run
from textual.widgets import DataTable, Input

from mlxlora import queue_runner
from mlxlora.cli import main
from mlxlora.tui.app import MlxloraApp
from mlxlora.tui.screens.export import ExportDialog


def train_quick(home) -> None:
    """A 3-step builtin:tiny run named `quick` in the workspace `home`, trained by `mlxlora
    train` in this process (a child spent its seconds importing the frameworks; the dialog's
    own child is what the tests watch)."""
    code = main(
        ["train", str(REPO / "configs" / "tiny.yaml"), "--set", "training.max_steps=3",
         "--run-dir", str(home / "runs" / "quick")]
    )  # fmt: skip
    assert code == 0


async def open_export(pilot, name: str) -> ExportDialog:
    table = pilot.app.query_one("#runs-table", DataTable)
    await wait_for(pilot, lambda: table.row_count > 0)
    keys = [str(row.key.value) for row in table.ordered_rows]
    table.move_cursor(row=next(i for i, k in enumerate(keys) if k.endswith(name)))
    await pilot.press("x")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ExportDialog))
    return pilot.app.screen


@pytest.mark.slow
def test_export_dialog_exports_a_run_into_ollama(home, fake_ollama, monkeypatch):
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)
    train_quick(home)

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(100, 32)) as pilot:
            dialog = await open_export(pilot, "quick")
            assert dialog.query_one("#export-name", Input).value == "quick"
            dialog.query_one("#export-system", Input).value = "Be brief."
            await pilot.click("#export-start")
            await wait_for(pilot, lambda: "Ollama has it" in screen_text(app), timeout=300)
            assert "model.gguf" in screen_text(app) and "MiB" in screen_text(app)
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, ExportDialog))

    import asyncio

    asyncio.run(go())
    folder = home / "runs" / "quick" / "export" / "quick"
    assert 'SYSTEM "Be brief."' in (folder / "Modelfile").read_text("utf-8")
    assert [c["argv"] for c in fake_ollama.calls()] == [
        ["create", "quick", "-f", str(folder / "Modelfile")], ["list"]
    ]  # fmt: skip


def test_export_dialog_shows_the_childs_error(home, fake_ollama, monkeypatch):
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)
    write_run("done", end="finished")  # a run written by hand: no adapter files

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(100, 32)) as pilot:
            await open_export(pilot, "done-20250615-000000")
            await pilot.click("#export-start")
            await wait_for(pilot, lambda: "error:" in screen_text(app), timeout=120)
            assert "no adapter saved" in screen_text(app)

    import asyncio

    asyncio.run(go())
    assert fake_ollama.calls() == []


def test_export_dialog_says_which_ollama_name_it_used(home, fake_ollama, monkeypatch):
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)
    write_run("done", end="finished")  # no adapter: the child stops right after the name

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(100, 32)) as pilot:
            dialog = await open_export(pilot, "done-20250615-000000")
            dialog.query_one("#export-name", Input).value = "医療モデル"
            await pilot.click("#export-start")
            await wait_for(pilot, lambda: "error:" in screen_text(app), timeout=120)
            assert "name: using the Ollama name 'mlxlora-36e9d8'" in screen_text(app)
            assert "no adapter saved" in screen_text(app)

    import asyncio

    asyncio.run(go())
    assert fake_ollama.calls() == []


def test_at_80x24_the_dialog_scrolls_to_what_the_export_wrote(home, monkeypatch):
    """The result's last lines (the `ollama create` command, the Modelfile) fell below an
    80 x 24 screen and could not be scrolled to."""
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)
    write_run("done", end="finished")

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            dialog = await open_export(pilot, "done-20250615-000000")
            dialog._show([f"wrote file {i}" for i in range(1, 21)], failed=False)
            await pilot.pause(0.3)
            assert "wrote file 20" in screen_text(app)

    import asyncio

    asyncio.run(go())
