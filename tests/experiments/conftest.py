"""Two tiny runs trained once for the compare, report and merge tests (which only read them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
COMMON = ("training.max_steps=6", "training.eval_every=2", "samples=['こんにちは']")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, built_tiny) -> tuple[Path, list[Path]]:
    """(workspace, [run 基準 at rank 8, run rank4 at rank 4 with a higher learning rate])."""
    from mlxlora import config, engine
    from mlxlora.models.resolve import builtin_dir

    ws = tmp_path_factory.mktemp("experiments-home")
    paths = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLXLORA_HOME", str(ws))
        shutil.copytree(built_tiny, builtin_dir())
        for name, sets in (
            ("基準", ()),
            ("rank4", ("lora.rank=4", "training.learning_rate=2e-3")),
        ):
            cfg = config.load(TINY, [f"name={name}", *COMMON, *sets])
            summary = engine.train(cfg, None)
            paths.append(Path(summary["adapter"]).parent)
    return ws, paths


@pytest.fixture
def ws(trained, monkeypatch) -> list[Path]:
    """The trained runs, their workspace as MLXLORA_HOME (tests must not change them)."""
    monkeypatch.setenv("MLXLORA_HOME", str(trained[0]))
    return trained[1]
