"""builtin:tiny, the model resolver, model_info and the catalog. Never touches the network."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from mlxlora.errors import ModelError
from mlxlora.models import catalog
from mlxlora.models.builtin import BUILTIN_TINY_VERSION, build_tiny
from mlxlora.models.info import model_info
from mlxlora.models.resolve import builtin_dir, reference_kind, resolve_model

TINY_PARAMS = 1536 * 128 + 4 * (2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 256 + 2 * 128) + 128
TEXTS = [
    "The capital of Japan is Tokyo. LoRA adds a low-rank update!",
    "日本の首都は東京です。機械学習は、データからパターンを学ぶ方法です。",
    "unseen: 鬱 emoji 🎉\ttab and  two spaces\nnew line",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


def test_build_is_deterministic(tiny, tmp_path):
    again = build_tiny(tmp_path / "again")
    names = sorted(p.name for p in tiny.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    for name in names:
        assert (tiny / name).read_bytes() == (again / name).read_bytes(), name


def test_tiny_config_and_info(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["tie_word_embeddings"] is True
    info = model_info(tiny)
    assert info["params"] == TINY_PARAMS == 787_584
    assert info["weight_bytes"] == TINY_PARAMS * 4
    assert (info["hidden_size"], info["num_hidden_layers"], info["vocab_size"]) == (128, 4, 1536)
    assert (info["num_attention_heads"], info["num_key_value_heads"], info["head_dim"]) == (
        4,
        2,
        32,
    )
    assert info["intermediate_size"] == 256 and info["dtype"] == "float32"
    assert info["quantization"] is None and info["model_type"] == "llama"


def test_tiny_tokenizer_round_trip_and_chat(tiny):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    raw = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    tok = AutoTokenizer.from_pretrained(str(tiny))
    assert raw.get_vocab_size() == 1536 == len(tok)
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert raw.decode(raw.encode(text).ids) == text
    assert len(tok.encode(TEXTS[1])) < len(TEXTS[1].encode("utf-8")) / 2  # merges learned
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    special = [
        tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    ]
    assert special == [0, 1, 2]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "こんにちは"},
    ]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nこんにちは<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tok.encode(text)
    assert ids[0] == 1 and ids.count(2) == 2  # special tokens stay single tokens


def test_tiny_loads_in_mlx_lm(tiny):
    from mlxlora.backends.blas import preload_openblas

    preload_openblas()
    import mlx.core as mx
    from mlx_lm.utils import load

    model, tok = load(str(tiny))
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True
    )
    assert ids[:1] == [1] and tok.eos_token_id == 2
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), 1536)
    assert bool(mx.all(mx.isfinite(logits)).item())
    assert tok.decode(tok.encode("日本の首都は東京です。")) == "日本の首都は東京です。"


# --- resolve ------------------------------------------------------------------------------


def test_builtin_resolves_once_into_the_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXLORA_HOME", str(tmp_path / "ws"))
    path = resolve_model("builtin:tiny", progress=False)
    name = f"builtin-tiny-v{BUILTIN_TINY_VERSION}"
    assert path == builtin_dir() == tmp_path / "ws" / "models" / name
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("builtin:tiny") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in path.parent.iterdir()) == [name]  # no temp left


def test_local_directory(tiny, tmp_path):
    assert resolve_model(str(tiny)) == tiny.resolve()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json is missing"):
        resolve_model(str(tmp_path / "empty"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a model directory"):
        resolve_model(str(tmp_path / "file.bin"))
    with pytest.raises(ModelError, match="no such directory"):
        resolve_model(str(tmp_path / "missing"))


@pytest.mark.parametrize("ref", ["builtin:huge", "not a model!", "", "a/b/c", "org/"])
def test_unknown_references(ref):
    with pytest.raises(ModelError) as err:
        resolve_model(ref)
    assert "\n" not in str(err.value)
    if ref in ("not a model!", "", "org/"):
        assert "accepted:" in str(err.value) and "builtin:tiny" in str(err.value)


def test_reference_kinds(tiny):
    assert reference_kind("builtin:tiny") == "builtin"
    assert reference_kind(str(tiny)) == "local"
    assert reference_kind("mlx-community/Qwen2.5-0.5B-Instruct-4bit") == "hub"


def _fake_hub_cache(cache, repo, model_dir, commit="0123456789abcdef0123456789abcdef01234567"):
    """Lay out a repo as huggingface_hub does: blobs, refs/main, snapshots/<commit>/<files>."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    (root / "blobs").mkdir()
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(model_dir.iterdir())):
        blob = root / "blobs" / f"{i:040x}"
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(blob)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_reference_from_the_cache(tiny, offline_cache):
    snap = _fake_hub_cache(offline_cache, "org/tiny-chat", tiny)
    path = resolve_model("org/tiny-chat", progress=False)
    assert path == snap
    assert model_info(path)["params"] == TINY_PARAMS


def test_hub_reference_missing_offline(offline_cache):
    with pytest.raises(ModelError) as err:
        resolve_model("org/not-there", progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(offline_cache) in msg
    assert "huggingface-cli download org/not-there" in msg and "HF_HUB_OFFLINE" in msg


# --- model_info of a quantized model ------------------------------------------------------


def test_model_info_counts_packed_quantized_weights(tmp_path):
    out_f, in_f, vocab = 64, 128, 256
    tensors = {
        "model.embed_tokens.weight": np.zeros((vocab, in_f // 8), np.uint32),
        "model.embed_tokens.scales": np.zeros((vocab, in_f // 64), np.float16),
        "model.embed_tokens.biases": np.zeros((vocab, in_f // 64), np.float16),
        "model.layers.0.self_attn.q_proj.weight": np.zeros((out_f, in_f // 8), np.uint32),
        "model.layers.0.self_attn.q_proj.scales": np.zeros((out_f, in_f // 64), np.float16),
        "model.layers.0.self_attn.q_proj.biases": np.zeros((out_f, in_f // 64), np.float16),
        "model.layers.0.self_attn.q_proj.bias": np.zeros((out_f,), np.float16),
        "model.norm.weight": np.ones((in_f,), np.float16),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "qwen2",
                "hidden_size": in_f,
                "num_hidden_layers": 1,
                "vocab_size": vocab,
                "num_attention_heads": 2,
                "intermediate_size": 256,
                "torch_dtype": "bfloat16",
                "quantization": {"group_size": 64, "bits": 4},
            }
        )
    )
    info = model_info(tmp_path)
    assert info["params"] == vocab * in_f + out_f * in_f + out_f + in_f
    assert info["quantization"] == {"bits": 4, "group_size": 64}
    assert info["num_key_value_heads"] == 2 and info["head_dim"] == 64
    assert info["dtype"] == "bfloat16"
    packed = (vocab + out_f) * in_f // 2 + (vocab + out_f) * 2 * 2 * 2 + (out_f + in_f) * 2
    assert info["weight_bytes"] == packed


# --- catalog ------------------------------------------------------------------------------


def _params_from_dims(m: catalog.CatalogModel) -> int:
    """Llama-family parameter count: embeddings (+ untied head), attention, MLP, norms."""
    h, q, kv = m.hidden_size, m.num_attention_heads * m.head_dim, m.num_key_value_heads * m.head_dim
    qkv_bias = "qwen" in m.id.lower()
    norms = 4 if "gemma-2" in m.id else 2
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * m.intermediate_size + norms * h
    per_layer += (q + 2 * kv) if qkv_bias else 0
    untied = any(s in m.id for s in ("Mistral-7B", "Qwen2.5-7B"))
    return m.num_hidden_layers * per_layer + m.vocab_size * h * (2 if untied else 1) + h


@pytest.mark.parametrize("m", catalog.CATALOG, ids=lambda m: m.id.split("/")[1])
def test_catalog_params_match_architecture(m):
    assert m.params == _params_from_dims(m)
    assert m.id.startswith("mlx-community/") and "/" in m.hf_id
    if m.quant == "4bit":  # about half a byte per parameter plus group scales
        assert 0.5 < m.download_bytes / m.params < 0.65
    else:
        assert 1.9 < m.download_bytes / m.params < 2.1


def test_catalog_lookup():
    assert len(catalog.CATALOG) == len({m.id for m in catalog.CATALOG}) >= 8
    m = catalog.find("Qwen/qwen2.5-0.5b-instruct")
    assert m is not None and m.id == "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
    assert m.info()["quantization"] == {"bits": 4, "group_size": 64}
    assert catalog.find("nobody/nothing") is None
