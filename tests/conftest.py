"""Shared fixtures: an isolated workspace per test and the real builtin:tiny model."""

from __future__ import annotations

import shutil

import pytest

from mlxlora.backends.blas import preload_openblas

preload_openblas()  # before any test imports mlx: MLX's reference BLAS is ~30x slower

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def built_tiny(tmp_path_factory):
    """builtin:tiny built once per session (it is deterministic), copied into each workspace."""
    from mlxlora.models.builtin import build_tiny

    return build_tiny(tmp_path_factory.mktemp("builtin") / "tiny")


@pytest.fixture
def home(tmp_path, monkeypatch, built_tiny):
    """A fresh MLXLORA_HOME holding a copy of the built tiny model."""
    from mlxlora.models.resolve import builtin_dir

    ws = tmp_path / "home"
    ws.mkdir()
    monkeypatch.setenv("MLXLORA_HOME", str(ws))
    shutil.copytree(built_tiny, builtin_dir())
    return ws


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty Ollama model store ($OLLAMA_MODELS), laid out by the tests that use it."""
    root = tmp_path / "ollama-models"
    root.mkdir()
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


@pytest.fixture(scope="session")
def quickstart_data():
    return REPO / "tutorial" / "data" / "quickstart.jsonl"
