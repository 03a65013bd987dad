"""The GGUF files as written, read back with gguf's reader (no llama.cpp needed): names, types,
shapes and metadata; weights in llama.cpp's layouts; the LoRA adapter's alpha reproduces
mlx-lm's scale; unsupported input refused before anything is written."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from export_helpers import family_model
from gguf.quants import dequantize
from safetensors.numpy import load_file

from mlxlora.errors import ExportError
from mlxlora.export.gguf_writer import SUPPORTED_ARCHITECTURES, write_gguf, write_lora_gguf
from mlxlora.models.gguf_weights import unpermute

T = gguf.GGMLQuantizationType


def fields(path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return meta, {t.name: t for t in reader.tensors}


def as_float(t) -> np.ndarray:
    """A GGUF tensor as float32 in numpy's (rows, columns) order."""
    shape = tuple(int(n) for n in reversed(t.shape))
    return dequantize(np.asarray(t.data), t.tensor_type).reshape(shape).astype(np.float32)


def test_tiny_tokenizer_metadata(tiny_fused, tmp_path):
    meta, tensors = fields(write_gguf(tiny_fused, tmp_path / "m.gguf"))
    tok = json.loads((tiny_fused / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.tokens"] == [t for t, _ in vocab]
    assert len(meta["tokenizer.ggml.merges"]) == len(tok["model"]["merges"]) > 1000
    types = meta["tokenizer.ggml.token_type"]
    specials = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert {types[i] for i in specials.values()} == {gguf.TokenType.CONTROL}
    assert types.count(gguf.TokenType.NORMAL) == len(vocab) - len(specials)
    assert meta["tokenizer.ggml.eos_token_id"] == specials["<|im_end|>"]  # as tokenizer_config
    assert meta["tokenizer.ggml.eot_token_id"] == specials["<|im_end|>"]
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert tensors["blk.0.attn_q.weight"].tensor_type == T.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == T.F32
    assert list(tensors["token_embd.weight"].shape) == [128, 1536]  # GGUF lists columns first


@pytest.mark.parametrize(("quantize", "tolerance"), [("f16", 1e-3), ("q8_0", 1e-2)])
def test_weights_in_llama_cpp_layout(tiny_fused, tmp_path, quantize, tolerance):
    hf = load_file(str(tiny_fused / "model.safetensors"))
    _, tensors = fields(write_gguf(tiny_fused, tmp_path / "m.gguf", quantize))
    cfg = json.loads((tiny_fused / "config.json").read_text())
    for layer, gguf_name, heads in (
        ("self_attn.q_proj", "attn_q", cfg["num_attention_heads"]),
        ("self_attn.k_proj", "attn_k", cfg["num_key_value_heads"]),
        ("self_attn.v_proj", "attn_v", None),
        ("mlp.down_proj", "ffn_down", None),
    ):
        t = tensors[f"blk.1.{gguf_name}.weight"]
        assert t.tensor_type == (T.F16 if quantize == "f16" else T.Q8_0)
        w = as_float(t)
        if heads:  # Q and K rows are in llama.cpp's rope order: put them back to compare
            w = unpermute(w, heads)
        want = hf[f"model.layers.1.{layer}.weight"]
        assert np.abs(w - want).max() < tolerance * np.abs(want).max()


def test_lora_adapter_reproduces_the_merge(tiny_run, tiny_fused, tmp_path):
    from mlxlora.models.resolve import builtin_dir

    home, run = tiny_run
    base_dir = home / "models" / builtin_dir().name
    out = write_lora_gguf(run, base_dir, tmp_path / "lora.gguf")
    meta, tensors = fields(out)
    settings = json.loads((run / "adapters" / "adapter_config.json").read_text())
    rank, scale = settings["lora_parameters"]["rank"], settings["lora_parameters"]["scale"]
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["general.architecture"] == "llama"
    assert meta["adapter.lora.alpha"] == pytest.approx(scale * rank)
    assert len(tensors) == 2 * 6 * 4  # a and b, 6 projections, 4 layers
    base = load_file(str(base_dir / "model.safetensors"))
    fused = load_file(str(tiny_fused / "model.safetensors"))
    cfg = json.loads((base_dir / "config.json").read_text())
    for layer, name, heads in (
        ("self_attn.k_proj", "attn_k", cfg["num_key_value_heads"]),
        ("self_attn.o_proj", "attn_output", None),
    ):
        a, b = (
            as_float(tensors[f"blk.2.{name}.weight.lora_a"]),
            as_float(tensors[f"blk.2.{name}.weight.lora_b"]),
        )
        assert a.shape[0] == b.shape[1] == rank  # llama.cpp's orientation: A (r, in), B (out, r)
        delta = meta["adapter.lora.alpha"] / rank * (b @ a)  # what llama.cpp adds
        if heads:
            delta = unpermute(delta, heads)
        key = f"model.layers.2.{layer}.weight"
        assert np.abs(delta - (fused[key] - base[key])).max() < 1e-5


@pytest.mark.parametrize("family", sorted(SUPPORTED_ARCHITECTURES))
def test_each_family_writes_its_architecture(family, built_tiny, tmp_path):
    model = family_model(tmp_path / family, family, built_tiny)
    meta, tensors = fields(write_gguf(model, tmp_path / "m.gguf"))
    cfg = json.loads((model / "config.json").read_text())
    arch = SUPPORTED_ARCHITECTURES[family]
    assert meta["general.architecture"] == arch
    assert meta[f"{arch}.attention.key_length"] == cfg["head_dim"] if "head_dim" in cfg else True
    assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd
    hf = load_file(str(model / "model.safetensors"))
    norm = as_float(tensors["blk.0.attn_norm.weight"])
    offset = 1.0 if family.startswith("gemma") else 0.0
    assert np.allclose(norm, hf["model.layers.0.input_layernorm.weight"] + offset)
    if family == "qwen2":
        assert "blk.0.attn_q.bias" in tensors
    if family == "qwen3":
        assert "blk.0.attn_q_norm.weight" in tensors
    if family == "gemma2":
        assert "blk.0.post_ffw_norm.weight" in tensors
        # not in config.json: the default of mlx-lm's model class, which the MLX model used
        assert "final_logit_softcapping" not in cfg
        assert meta["gemma2.final_logit_softcapping"] == pytest.approx(30.0)


def test_sentencepiece_tokenizer(spm_llama, tmp_path):
    import sentencepiece as spm

    meta, _ = fields(write_gguf(spm_llama, tmp_path / "m.gguf", "q8_0"))
    sp = spm.SentencePieceProcessor(model_file=str(spm_llama / "tokenizer.model"))
    assert meta["tokenizer.ggml.model"] == "llama"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == 1536  # padded to the embedding's rows
    assert tokens[: sp.vocab_size()] == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    assert meta["tokenizer.ggml.scores"][300] == pytest.approx(sp.get_score(300))
    assert meta["tokenizer.ggml.token_type"][3] == gguf.TokenType.BYTE  # <0x00>
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.add_space_prefix"] is True
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.eos_token_id"] == 2
    assert meta["tokenizer.chat_template"].startswith("{% for m in messages %}[INST]")


def test_unsupported_input_is_refused_before_writing(built_tiny, tiny_fused, tmp_path):
    phi3 = family_model(tmp_path / "phi3", "phi3", built_tiny)
    with pytest.raises(ExportError) as err:
        write_gguf(phi3, tmp_path / "out.gguf")
    assert "'phi3'" in str(err.value) and "llama, mistral, qwen2, qwen3, gemma, gemma2" in str(
        err.value
    )
    with pytest.raises(ExportError, match="choose one of f16, q8_0, q4_0, q4_k_m"):
        write_gguf(tiny_fused, tmp_path / "out.gguf", "q3")
    odd = tmp_path / "odd"
    odd.mkdir()
    for f in tiny_fused.iterdir():
        (odd / f.name).write_bytes(f.read_bytes())
    tok = json.loads((odd / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}
    (odd / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ExportError, match="pre-tokenizer \\(Whitespace\\) is not one llama.cpp"):
        write_gguf(odd, tmp_path / "out.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd", "phi3"]  # nothing half-written


def test_k_quants_without_llama_cpp_name_the_extra(tiny_fused, tmp_path, monkeypatch):
    from mlxlora.export import gguf_writer

    monkeypatch.setattr(gguf_writer, "_has_llama_cpp", lambda: False)
    with pytest.raises(ExportError, match=r"mlxlora\[export\]"):
        write_gguf(tiny_fused, tmp_path / "out.gguf", "q4_k_m")
    assert list(tmp_path.iterdir()) == []
