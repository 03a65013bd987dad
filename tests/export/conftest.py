"""A trained builtin:tiny run shared by the export tests, and MLX's logits to compare against."""

from __future__ import annotations

import shutil

import pytest
from export_helpers import build_spm_llama, train_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, built_tiny, quickstart_data):
    """(workspace, run): builtin:tiny trained 4 steps with LoRA on q, k, v, o, gate, down."""
    from mlxlora.models.builtin import BUILTIN_TINY_VERSION

    home = tmp_path_factory.mktemp("export-home")
    shutil.copytree(built_tiny, home / "models" / f"builtin-tiny-v{BUILTIN_TINY_VERSION}")
    return home, train_run(home, home / "runs" / "tuned", quickstart_data)


@pytest.fixture
def in_tiny_home(tiny_run, monkeypatch):
    """The tiny run's workspace as MLXLORA_HOME; returns the run directory."""
    monkeypatch.setenv("MLXLORA_HOME", str(tiny_run[0]))
    return tiny_run[1]


@pytest.fixture(scope="session")
def tiny_fused(tiny_run, tmp_path_factory):
    """The tiny run fused into an HF-format directory (float32)."""
    from mlxlora.export.fuse import fuse_run

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLXLORA_HOME", str(tiny_run[0]))
        return fuse_run(tiny_run[1], tmp_path_factory.mktemp("fused") / "tiny")


@pytest.fixture(scope="session")
def spm_llama(tmp_path_factory, built_tiny):
    """A tiny random llama with a SentencePiece tokenizer (byte fallback, BOS added), the
    layout of Llama 2 and Mistral."""
    return build_spm_llama(tmp_path_factory.mktemp("spm") / "llama", built_tiny)
