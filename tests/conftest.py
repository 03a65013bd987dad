"""Shared fixtures: an isolated workspace per test and the real builtin:tiny model."""

from __future__ import annotations

import pytest

from mlxlora.backends.blas import preload_openblas

preload_openblas()  # before any test imports mlx: MLX's reference BLAS is ~30x slower

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh MLXLORA_HOME that shares the built tiny model across tests."""
    ws = tmp_path / "home"
    ws.mkdir()
    monkeypatch.setenv("MLXLORA_HOME", str(ws))
    return ws


@pytest.fixture(scope="session")
def quickstart_data():
    return REPO / "tutorial" / "data" / "quickstart.jsonl"
