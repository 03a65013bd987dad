"""The Merge dialog (key `m` on the Compare tab): two really trained tiny runs merged by a
child `mlxlora merge --json`; adapters of another base refused with the child's one line."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from run_fixtures import REPO, screen_text, wait_for
from textual.widgets import Input, SelectionList, Static

from mlxlora import runs
from mlxlora.tui.app import MlxloraApp
from mlxlora.tui.screens.merge import MergeDialog, merged_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory, built_tiny) -> Path:
    """A workspace with two 2-step builtin:tiny runs: 甲 at rank 8, 乙 at rank 4."""
    from mlxlora import config, engine
    from mlxlora.models.resolve import builtin_dir

    ws = tmp_path_factory.mktemp("merge-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLXLORA_HOME", str(ws))
        shutil.copytree(built_tiny, builtin_dir())
        for name, sets in (("甲", ()), ("乙", ("lora.rank=4", "training.seed=7"))):
            common = [f"name={name}", "training.max_steps=2", "samples=[]"]
            engine.train(config.load(REPO / "configs" / "tiny.yaml", [*common, *sets]), None)
    return ws


@pytest.fixture
def workspace(trained, tmp_path, monkeypatch) -> Path:
    """A copy of the trained workspace per test (a test adds runs and merged adapters)."""
    ws = tmp_path / "home"
    shutil.copytree(trained, ws)
    monkeypatch.setenv("MLXLORA_HOME", str(ws))  # the child `mlxlora merge` inherits it
    return ws


async def open_merge(pilot, count: int) -> MergeDialog:
    """Pick every run in the Compare tab and press m."""
    pick = pilot.app.query_one(SelectionList)
    await wait_for(pilot, lambda: pick.option_count == count)
    for _ in range(count):
        await pilot.press("space", "down")  # the first run is under the cursor at once
    await wait_for(pilot, lambda: len(pick.selected) == count)
    await pilot.press("m")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, MergeDialog))
    return pilot.app.screen


def log_text(app) -> str:
    return str(app.screen.query_one("#merge-log", Static).content)


@pytest.mark.slow
def test_merge_dialog_merges_two_trained_runs(workspace):
    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(100, 30)) as pilot:
            dialog = await open_merge(pilot, 2)
            assert dialog.query_one("#merge-rank", Input).value == "8"  # the larger rank
            dialog.query_one("#merge-weights", Input).value = "0.7,0.3"
            dialog.query_one("#merge-name", Input).value = "合併"
            await pilot.click("#merge-start")
            await wait_for(pilot, lambda: "relative error" in screen_text(app), timeout=120)
            assert "merged 2 adapters at rank 8 into" in screen_text(app)
            return log_text(app)  # whole lines: the path wraps on screen

    shown = asyncio.run(go())
    out = merged_dir("合併")
    assert out == workspace / "merged" / "合併"
    merged = json.loads((out / "adapter_config.json").read_text("utf-8"))
    assert (out / "adapters.safetensors").is_file()
    assert merged["lora_parameters"]["rank"] == 8
    assert sorted(merged["merged_from"]["weights"]) == [0.3, 0.7]
    error = merged["merged_from"]["relative_error"]
    assert 0 < error < 1  # ranks 8 + 4 summed, cut back to 8: something is dropped
    assert f"merged 2 adapters at rank 8 into {out}" in shown
    assert f"over all 28 layers: {error:.3e}" in shown  # 4 blocks x 7 projections


@pytest.mark.slow
def test_merge_dialog_shows_why_another_base_is_refused(workspace):
    other = next(p for p in runs.runs_root().iterdir() if p.name.startswith("乙"))
    copy = shutil.copytree(other, runs.runs_root() / "別-20250101-000000")
    adapter_config = copy / "adapters" / "adapter_config.json"
    cfg = json.loads(adapter_config.read_text("utf-8"))
    adapter_config.write_text(json.dumps({**cfg, "model": "/models/another"}), "utf-8")

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(100, 30)) as pilot:
            await open_merge(pilot, 3)
            await pilot.click("#merge-start")
            await wait_for(pilot, lambda: "error:" in screen_text(app), timeout=120)
            assert app.screen.query_one("#merge-log").has_class("-failed")
            return log_text(app)

    shown = asyncio.run(go())
    assert len(shown.splitlines()) == 1 and shown.startswith("error: ")
    assert "its base model (/models/another) differs" in shown
    assert not (workspace / "merged").exists()  # nothing half-written
