"""GGUF -> HF directory: tiny GGUF files written here as llama.cpp's converter writes them.

For each family (llama, mistral, qwen2, gemma) we draw tiny random HF-layout weights, write
them into a GGUF file the way llama.cpp does (Q/K row permutation for llama/mistral, +1 on
gemma's norms, F32, F16, Q8_0, Q4_0 or Q4_1), convert it back and compare the logits mlx-lm
computes from the converted directory with those it computes from the original weights. Q8_0,
Q4_0 and Q4_1 stay quantized (MLX affine, group 32): their logits must equal those of the same
GGUF dequantized to float32, i.e. keeping them quantized loses nothing. The tokenizers are
checked the same way: the rebuilt tokenizer must encode English and Japanese exactly as the
tokenizer the GGUF metadata was made from.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from mlxlora.errors import ModelError  # noqa: E402
from mlxlora.models import gguf as g  # noqa: E402
from mlxlora.models import gguf_weights  # noqa: E402
from mlxlora.models.builtin import corpus_lines  # noqa: E402

SAMPLES = [
    "Hello world! The quick brown fox jumps over the lazy dog in 2024.",
    "  Leading spaces,\ttabs and\nnew lines; numbers 1234567 and don't/we'll.",
    "こんにちは、世界。今日は良い天気ですね。機械学習のモデルを微調整します。",
    "Mixed 日本語 and English: LoRA は 4-bit 量子化でも動く。",
]
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, LAYERS = 64, 4, 2, 16, 128, 2
TEMPLATE = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"


# --- tokenizers the GGUF metadata is made from ----------------------------------------------


def train_bpe(pre: str):
    """A small byte-level BPE with the pre-tokenizer HF ships for llama.cpp's `pre` name."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    elif pre in ("llama-bpe", "qwen2"):
        digits = r"\p{N}{1,3}" if pre == "llama-bpe" else r"\p{N}"
        regex = (
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|" + digits + r"| ?[^\s\p{L}"
            r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        )
        split = pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
        if pre == "qwen2":
            tok.normalizer = normalizers.NFC()
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    return tok


def bpe_metadata(tok, pre: str) -> dict:
    """What llama.cpp's converter writes for a byte-level BPE tokenizer."""
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in data["added_tokens"] if a["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return {
        "model": "gpt2",
        "pre": pre,
        "tokens": tokens,
        "types": [3 if t in special else 1 for t in tokens],
        "merges": merges,
        "bos": vocab["<|im_start|>"],
        "eos": vocab["<|im_end|>"],
        "pad": vocab["<|endoftext|>"],
        "add_bos": False,
    }


def train_spm(add_prefix: bool = True):
    """A SentencePiece BPE model with byte fallback, as Llama 2 / Mistral / Gemma use."""
    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=model,
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=0.98,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=add_prefix,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def spm_metadata(sp, add_prefix: bool = True) -> dict:
    """What llama.cpp's SentencePieceVocab writes: pieces, scores and token types."""
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        ty = 1
        if sp.is_unknown(i):
            ty = 2
        elif sp.is_control(i):
            ty = 3
        elif sp.is_unused(i):
            ty = 5
        elif sp.is_byte(i):
            ty = 6
        types.append(ty)
    return {
        "model": "llama",
        "tokens": tokens,
        "scores": scores,
        "types": types,
        "bos": 1,
        "eos": 2,
        "unk": 0,
        "add_bos": True,
        "add_prefix": add_prefix,
    }


# --- tiny models ---------------------------------------------------------------------------


def hf_weights(family: str, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def normal(*shape, std=0.1):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm():  # gemma scales by 1 + w, the others by w
        return normal(HIDDEN, std=0.1) + (0 if family == "gemma" else 1)

    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    w = {"model.embed_tokens.weight": normal(vocab, HIDDEN, std=0.5)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = normal(q, HIDDEN)
        w[p + "self_attn.k_proj.weight"] = normal(kv, HIDDEN)
        w[p + "self_attn.v_proj.weight"] = normal(kv, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = normal(HIDDEN, q)
        if family == "qwen2":
            w[p + "self_attn.q_proj.bias"] = normal(q)
            w[p + "self_attn.k_proj.bias"] = normal(kv)
            w[p + "self_attn.v_proj.bias"] = normal(kv)
        w[p + "mlp.gate_proj.weight"] = normal(INTER, HIDDEN)
        w[p + "mlp.up_proj.weight"] = normal(INTER, HIDDEN)
        w[p + "mlp.down_proj.weight"] = normal(HIDDEN, INTER)
        w[p + "input_layernorm.weight"] = norm()
        w[p + "post_attention_layernorm.weight"] = norm()
    w["model.norm.weight"] = norm()
    if family in ("llama", "mistral"):
        w["lm_head.weight"] = normal(vocab, HIDDEN, std=0.5)  # untied: output.weight
    return w


def hf_config(family: str, vocab: int) -> dict:
    model_type = family
    return {
        "model_type": model_type,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "intermediate_size": INTER,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "tie_word_embeddings": family not in ("llama", "mistral"),
    }


def write_hf(dest: Path, family: str, weights: dict, vocab: int, **extra) -> Path:
    from safetensors.numpy import save_file

    dest.mkdir(parents=True)
    (dest / "config.json").write_text(json.dumps({**hf_config(family, vocab), **extra}))
    save_file(weights, str(dest / "model.safetensors"))
    return dest


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute (rope layout of Q and K rows)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


GGUF_NAMES = {v: k for k, v in {**g.GLOBAL_NAMES}.items()}
BLOCK = {v: k for k, v in g.BLOCK_NAMES.items()}


def gguf_name(name: str) -> str:
    if name == "rope_freqs.weight":
        return name
    stem, suffix = name.rsplit(".", 1)
    if stem in GGUF_NAMES:
        return f"{GGUF_NAMES[stem]}.{suffix}"
    _, _, i, rest = stem.split(".", 3)
    return f"blk.{i}.{BLOCK[rest]}.{suffix}"


def write_gguf(path: Path, arch: str, weights: dict, tok: dict, qtype: str | dict = "F32") -> Path:
    """A GGUF file as llama.cpp's convert_hf_to_gguf.py writes it for `arch`.

    `qtype`: the type of every 2-D tensor, or {HF name: type} (the rest F32)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(LAYERS)
    w.add_context_length(512)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if arch == "gemma":
        w.add_key_length(HEAD_DIM)
        w.add_value_length(HEAD_DIM)
    w.add_tokenizer_model(tok["model"])
    if "pre" in tok:
        w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    if "scores" in tok:
        w.add_token_scores(tok["scores"])
    if tok.get("merges"):
        w.add_token_merges(tok["merges"])
    w.add_bos_token_id(tok["bos"])
    w.add_eos_token_id(tok["eos"])
    if "pad" in tok:
        w.add_pad_token_id(tok["pad"])
    if "unk" in tok:
        w.add_unk_token_id(tok["unk"])
    w.add_add_bos_token(tok["add_bos"])
    if "add_prefix" in tok:
        w.add_add_space_prefix(tok["add_prefix"])
    w.add_chat_template(TEMPLATE)
    for name, data in weights.items():
        kind = qtype.get(name, "F32") if isinstance(qtype, dict) else qtype
        quant = getattr(gguf.GGMLQuantizationType, kind)
        if arch in ("llama", "mistral") and name.endswith("q_proj.weight"):
            data = permute(data, HEADS)
        if arch in ("llama", "mistral") and name.endswith("k_proj.weight"):
            data = permute(data, KV_HEADS)
        if arch == "gemma" and name.endswith("norm.weight"):
            data = data + 1
        if data.ndim == 2 and kind == "F16":
            w.add_tensor(gguf_name(name), data.astype(np.float16))
        elif data.ndim == 2 and kind != "F32":  # llama.cpp keeps 1-D tensors in F32
            w.add_tensor(gguf_name(name), gguf.quants.quantize(data, quant), raw_dtype=quant)
        else:
            w.add_tensor(gguf_name(name), data.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def logits(model_dir: Path, ids: list[int], float32: bool = False) -> np.ndarray:
    """mlx-lm's logits; `float32` casts the floating weights (scales and biases included) to
    float32 first, as mlxlora's CPU backend does."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(model_dir))
    if float32:
        model.set_dtype(mx.float32)
    out = model(mx.array([ids]))
    return np.array(out.astype(mx.float32))[0]


def float_reference(gguf_path: Path, converted: Path, dest: Path, round16: bool = False) -> Path:
    """The same GGUF dequantized to float32 (gguf-py's dequantize), as an HF directory;
    `round16` rounds to float16 the tensors the converter wrote in float16."""
    from safetensors.numpy import load_file, save_file

    stored = {}
    for file in converted.glob("*.safetensors"):
        stored.update({k: v.dtype for k, v in load_file(str(file)).items()})

    config = json.loads((converted / "config.json").read_text())
    config.pop("quantization", None)
    config["torch_dtype"] = "float32"
    reader = gguf.GGUFReader(gguf_path)
    arch = config["model_type"]
    weights = {}
    for t in reader.tensors:
        name = g.hf_name(t.name)
        if name is None or (name == "lm_head.weight" and config["tie_word_embeddings"]):
            continue
        weights[name] = gguf_weights.dequantized(t, config, arch)
        if round16 and stored[name] == np.float16:
            weights[name] = weights[name].astype(np.float16).astype(np.float32)
    dest.mkdir(parents=True)
    (dest / "config.json").write_text(json.dumps(config))
    save_file(weights, str(dest / "model.safetensors"))
    return dest


def module_bits(model) -> dict[str, int | None]:
    """{module path: bits, or None for float} over the modules mlx-lm can quantize."""
    import mlx.nn as nn

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            assert (m.group_size, m.mode) == (32, "affine"), name
            out[name] = m.bits
        elif isinstance(m, (nn.Linear, nn.Embedding)):
            out[name] = None
    return out


FAMILIES = {  # family -> tokenizer for its metadata
    "llama": ("bpe", "smollm"),
    "mistral": ("spm", True),
    "qwen2": ("bpe", "qwen2"),
    "gemma": ("spm", False),
}


@pytest.fixture(scope="module")
def tokenizers_():
    out = {}
    for family, (kind, arg) in FAMILIES.items():
        if kind == "bpe":
            tok = train_bpe(arg)
            out[family] = (bpe_metadata(tok, arg), tok.get_vocab_size())
        else:
            sp = train_spm(arg)
            out[family] = (spm_metadata(sp, arg), sp.get_piece_size())
    return out


@pytest.fixture
def home(tmp_path, monkeypatch):
    ws = tmp_path / "home"
    monkeypatch.setenv("MLXLORA_HOME", str(ws))
    return ws


# --- models --------------------------------------------------------------------------------


BITS = {"Q8_0": 8, "Q4_0": 4, "Q4_1": 4}
# error of the GGUF's own quantization against the original weights (max |logit| relative)
QUANT_ERROR = {"F16": 1e-3, "Q8_0": 0.03, "Q4_0": 0.4, "Q4_1": 0.3}


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_original(family, qtype, tokenizers_, tmp_path, home):
    import mlx.nn as nn
    from mlx_lm.utils import load

    from mlxlora.models.info import model_info

    meta, vocab = tokenizers_[family]
    weights = hf_weights(family, vocab)
    ref = write_hf(tmp_path / "ref", family, weights, vocab)
    path = write_gguf(tmp_path / f"{family}.gguf", family, weights, meta, qtype)
    out = g.convert(path, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family
    assert config["vocab_size"] == vocab
    assert config["tie_word_embeddings"] == (family not in ("llama", "mistral"))
    assert config["torch_dtype"] == ("float32" if qtype == "F32" else "float16")
    ids = np.random.default_rng(1).integers(0, vocab, 24).tolist()
    want = logits(ref, ids)
    model, wrapper = load(str(out))
    layers = module_bits(model)
    info = model_info(out)
    assert info["params"] == sum(v.size for v in weights.values())
    if qtype in BITS:
        bits = BITS[qtype]
        assert config["quantization"] == {"group_size": 32, "bits": bits}
        assert set(layers.values()) == {bits}  # every projection and the embedding
        assert sum(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules()) == (
            LAYERS * 7 + (family in ("llama", "mistral"))
        )
        assert info["quantization"] == {"bits": bits, "group_size": 32}
        # exactly the GGUF's values: the logits of the same file dequantized to float32
        floats = float_reference(path, out, tmp_path / "floats")
        np.testing.assert_allclose(
            logits(out, ids, float32=True), logits(floats, ids), atol=1e-5, rtol=1e-4
        )
        assert model_info(floats)["params"] == info["params"]
        assert info["weight_bytes"] < model_info(floats)["weight_bytes"] * (bits + 4) / 32 + 2000
    else:
        assert "quantization" not in config and set(layers.values()) == {None}
    got = logits(out, ids, float32=True)
    if qtype == "F32":
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    else:
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert rel < QUANT_ERROR[qtype], rel
        assert np.mean(got.argmax(-1) == want.argmax(-1)) > (0.9 if BITS.get(qtype) != 4 else 0.5)

    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(out)
    assert auto.chat_template == TEMPLATE
    for text in SAMPLES:
        assert wrapper.encode(text) == auto.encode(text)
    source = json.loads((out / "source.json").read_text())
    assert source["path"] == str(path.resolve())
    assert source["size"] == path.stat().st_size
    assert source["converter"] == g.CONVERTER_VERSION
    assert out.name == f"gguf-{source['sha256'][:16]}"


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_packing_parity(qtype):
    """Our packed weight, scales and biases, dequantized by MLX, are gguf-py's dequantized
    values exactly (scales and biases cast to float32; they are stored as float16)."""
    import mlx.core as mx

    from mlxlora.models.gguf_weights import mlx_quantized

    rng = np.random.default_rng(7)
    rows, cols = 24, 256
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x *= np.float32(10.0) ** rng.integers(-4, 2, (rows, 1))  # scales over 6 decades
    x[0] = 0  # d = 0
    x[1, :32] = np.linspace(-1, 1, 32)  # every code of the block, both ends
    x[2] = np.abs(x[2])  # one-signed rows (Q4_1's min > 0)
    x[3] = -np.abs(x[3])
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    blocks = gguf.quants.quantize(x, qt)
    want = gguf.quants.dequantize(blocks, qt).astype(np.float32)
    weight, scales, biases, bits = mlx_quantized(blocks, qtype, rows, cols)
    assert bits == BITS[qtype]
    assert weight.dtype == np.uint32 and weight.shape == (rows, cols * bits // 32)
    assert scales.dtype == biases.dtype == np.float16 and scales.shape == (rows, cols // 32)
    got = mx.dequantize(
        mx.array(weight),
        mx.array(scales.astype(np.float32)),
        mx.array(biases.astype(np.float32)),
        group_size=32,
        bits=bits,
    )
    np.testing.assert_array_equal(np.array(got), want)
    # the codes span the whole range: the packing order is really exercised
    codes = np.array(
        mx.dequantize(
            mx.array(weight),
            mx.ones(scales.shape),
            mx.zeros(scales.shape),
            group_size=32,
            bits=bits,
        )
    )
    assert codes.min() <= 1 and codes.max() >= 2**bits - 2


def test_packing_overflowing_float16_keeps_float32_scales():
    """-128*d overflows float16 when d > 511.75: the scales and biases stay float32, exact."""
    import mlx.core as mx

    from mlxlora.models.gguf_weights import mlx_quantized

    x = np.random.default_rng(8).standard_normal((4, 64)).astype(np.float32) * 3e4
    qt = gguf.GGMLQuantizationType.Q8_0
    blocks = gguf.quants.quantize(x, qt)
    weight, scales, biases, bits = mlx_quantized(blocks, "Q8_0", 4, 64)
    assert scales.dtype == biases.dtype == np.float32
    got = mx.dequantize(mx.array(weight), mx.array(scales), mx.array(biases), group_size=32, bits=8)
    np.testing.assert_array_equal(np.array(got), gguf.quants.dequantize(blocks, qt))


def test_plan_keeps_only_exact_types():
    """K-quants, Q5_x, F16/BF16 and 1-D tensors are dequantized (float16; F32 stays float32);
    only Q4_0/Q4_1/Q8_0 weights of the modules mlx-lm quantizes stay packed."""
    from types import SimpleNamespace

    def tensor(kind, shape):
        kind = getattr(gguf.GGMLQuantizationType, kind)
        return SimpleNamespace(tensor_type=kind, shape=np.array(shape), n_elements=np.prod(shape))

    proj, emb, norm = (
        "model.layers.0.mlp.down_proj.weight",
        "model.embed_tokens.weight",
        "model.norm.weight",
    )
    n = 256 * 64
    assert gguf_weights.plan(tensor("Q4_0", [256, 64]), proj) == ("q4", n // 2 + n // 32 * 4)
    assert gguf_weights.plan(tensor("Q4_1", [256, 64]), "lm_head.weight")[0] == "q4"
    assert gguf_weights.plan(tensor("Q8_0", [256, 64]), emb) == ("q8", n + n // 32 * 4)
    for kind in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1", "F16", "BF16"):
        assert gguf_weights.plan(tensor(kind, [256, 64]), proj) == ("f16", n * 2), kind
    assert gguf_weights.plan(tensor("F32", [256, 64]), proj) == ("f32", n * 4)
    assert gguf_weights.plan(tensor("Q8_0", [256]), norm) == ("f16", 512)  # 1-D: not a module
    assert gguf_weights.module_of("model.layers.0.self_attn.q_proj.bias") is None
    assert gguf_weights.as_float16(np.array([1e5, 1.0], np.float32)).dtype == np.float32


def test_mixed_types(tokenizers_, tmp_path, home):
    """A file mixing Q8_0, Q4_1, Q4_0, Q5_0/Q5_1 (not exact at group 32), F16 and F32, as
    quantized GGUFs do: per-module widths in config.json, the rest in float16, same logits."""
    import mlx.core as mx
    from mlx_lm.utils import load

    from mlxlora.models.info import model_info

    meta, vocab = tokenizers_["llama"]
    weights = hf_weights("llama", vocab)
    types = {"model.embed_tokens.weight": "Q8_0", "lm_head.weight": "Q5_1"}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            types[f"{p}self_attn.{proj}.weight"] = "Q4_1"
        types[f"{p}mlp.gate_proj.weight"] = "Q4_0"
        types[f"{p}mlp.up_proj.weight"] = "F16" if i else "Q8_0"
        types[f"{p}mlp.down_proj.weight"] = "Q5_0"
    path = write_gguf(tmp_path / "mixed.gguf", "llama", weights, meta, types)
    out = g.convert(path, progress=False)
    config = json.loads((out / "config.json").read_text())
    quant = config["quantization"]
    assert config["torch_dtype"] == "float16"
    assert (quant["group_size"], quant["bits"]) == (32, 4)  # most bytes are 4-bit
    expect = {
        "model.embed_tokens": 8,
        "lm_head": None,
        "model.layers.0.mlp.up_proj": 8,
        "model.layers.1.mlp.up_proj": None,
    }
    for i in range(LAYERS):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            expect[f"model.layers.{i}.self_attn.{proj}"] = 4
        expect[f"model.layers.{i}.mlp.gate_proj"] = 4
        expect[f"model.layers.{i}.mlp.down_proj"] = None
    for module, bits in expect.items():
        if bits is None:
            assert quant[module] is False, module
        elif bits != 4:
            assert quant[module] == {"group_size": 32, "bits": bits}, module
        else:
            assert module not in quant
    model, _ = load(str(out))
    assert module_bits(model) == expect
    from safetensors.numpy import load_file

    stored = load_file(str(out / "model.safetensors"))
    assert stored["model.layers.0.mlp.down_proj.weight"].dtype == np.float16  # Q5_0
    assert stored["model.layers.1.mlp.up_proj.weight"].dtype == np.float16  # F16
    assert stored["model.norm.weight"].dtype == np.float32  # F32 stays
    # kept quantized: exact; dequantized Q5_x: exact but for the float16 rounding
    floats = float_reference(path, out, tmp_path / "floats")
    rounded = float_reference(path, out, tmp_path / "rounded", round16=True)
    ids = np.random.default_rng(4).integers(0, vocab, 24).tolist()
    got, want = logits(out, ids, float32=True), logits(floats, ids)
    np.testing.assert_allclose(got, logits(rounded, ids), atol=1e-5, rtol=1e-4)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-3
    info, ref_info = model_info(out), model_info(floats)
    assert info["params"] == ref_info["params"] == sum(v.size for v in weights.values())
    assert info["quantization"] == {"bits": 4, "group_size": 32}
    assert info["dtype"] == "float16"
    assert info["weight_bytes"] == sum(v.nbytes for v in stored.values())
    # the model runs as stored too (float16 scales, float32 norms)
    model(mx.array([ids]))


def test_llama3_rope_scaling_from_rope_freqs(tokenizers_, tmp_path, home):
    """Llama 3.1/3.2 GGUFs carry rope_freqs instead of rope_scaling: we recover the latter."""
    meta, vocab = tokenizers_["llama"]
    weights = hf_weights("llama", vocab)
    scaling = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    ref = write_hf(tmp_path / "ref", "llama", weights, vocab, rope_scaling=scaling)
    factors = g.llama3_factors(10000.0, HEAD_DIM, 32.0, 1.0, 4.0, 8192).astype(np.float32)
    assert factors.min() == 1.0 and factors.max() == 32.0  # some frequencies are rescaled
    path = write_gguf(
        tmp_path / "l3.gguf", "llama", {**weights, "rope_freqs.weight": factors}, meta
    )
    out = g.convert(path, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"] == scaling
    ids = np.random.default_rng(2).integers(0, vocab, 64).tolist()
    np.testing.assert_allclose(logits(out, ids), logits(ref, ids), atol=1e-4, rtol=1e-4)
    # factors no Llama 3 scaling produces: refused before any work, naming the tensor
    odd = write_gguf(
        tmp_path / "odd.gguf", "llama", {**weights, "rope_freqs.weight": factors[::-1].copy()}, meta
    )
    with pytest.raises(ModelError, match="rope_freqs"):
        g.convert(odd, progress=False)


def test_cache_second_convert_is_instant(tokenizers_, tmp_path, home):
    meta, vocab = tokenizers_["llama"]
    path = write_gguf(tmp_path / "m.gguf", "llama", hf_weights("llama", vocab), meta)
    first = g.convert(path, progress=False)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    start = time.monotonic()
    again = g.convert(path, progress=False)
    assert time.monotonic() - start < 0.2
    assert again == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    # the same bytes under another name share the directory (content addressed)
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(path.read_bytes())
    assert g.convert(copy, progress=False) == first
    assert [p.name for p in (home / "models").iterdir() if p.is_dir()] == [first.name]


def test_progress_in_a_log_is_whole_lines(tokenizers_, tmp_path, home, capsys):
    """stderr that is no terminal (a pipe, a log, a studio's child) gets no carriage returns:
    the counts rewritten in place ran into the next line there."""
    meta, vocab = tokenizers_["llama"]
    path = write_gguf(tmp_path / "m.gguf", "llama", hf_weights("llama", vocab), meta)
    g.convert(path, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("converting m.gguf (llama, ")
    assert re.fullmatch(r"  converted (\d+)/\1 tensors \(\d+\.\ds\)", lines[1]), lines
    assert lines[2].startswith("converted in ") and len(lines) == 3


def test_gguf_source_of_a_converted_directory(tokenizers_, tmp_path, home):
    from mlxlora.models.info import gguf_source

    meta, vocab = tokenizers_["llama"]
    path = write_gguf(tmp_path / "m.gguf", "llama", hf_weights("llama", vocab), meta)
    converted = g.convert(path, progress=False)
    assert gguf_source(converted) == {
        "gguf": str(path.resolve()),
        "gguf_sha256": g.file_sha256(path),
    }
    assert gguf_source(tmp_path) == {}  # not converted from a GGUF


def test_shards_past_the_limit(tokenizers_, tmp_path, home, monkeypatch):
    meta, vocab = tokenizers_["qwen2"]
    weights = hf_weights("qwen2", vocab)
    ref = write_hf(tmp_path / "ref", "qwen2", weights, vocab)
    path = write_gguf(tmp_path / "s.gguf", "qwen2", weights, meta)
    monkeypatch.setattr(gguf_weights, "SHARD_BYTES", 100_000)
    out = g.convert(path, progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 2 and set(index["weight_map"].values()) == set(files)
    assert set(index["weight_map"]) == set(weights)
    ids = np.random.default_rng(3).integers(0, vocab, 16).tolist()
    np.testing.assert_allclose(logits(out, ids), logits(ref, ids), atol=1e-4, rtol=1e-4)


def test_describe(tokenizers_, tmp_path):
    meta, vocab = tokenizers_["qwen2"]
    path = write_gguf(tmp_path / "q.gguf", "qwen2", hf_weights("qwen2", vocab), meta, "Q8_0")
    info = g.describe(path)
    assert info["architecture"] == "qwen2"
    assert info["supported"] and info["problem"] is None
    assert info["quant_types"]["Q8_0"] == LAYERS * 7 + 1
    assert info["tensor_count"] == LAYERS * 12 + 2
    assert (info["block_count"], info["head_count"], info["head_count_kv"]) == (2, 4, 2)
    assert info["vocab_size"] == vocab and info["tokenizer_pre"] == "qwen2"
    assert info["chat_template"]


# --- errors --------------------------------------------------------------------------------


def test_unsupported_architecture(tokenizers_, tmp_path, home):
    meta, vocab = tokenizers_["llama"]
    path = write_gguf(tmp_path / "p.gguf", "phi3", hf_weights("llama", vocab), meta)
    with pytest.raises(ModelError) as err:
        g.convert(path, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "'phi3'" in msg
    assert "supported: llama, mistral, qwen2, gemma" in msg
    assert not (home / "models").exists() or not any((home / "models").glob("gguf-*"))
    assert g.describe(path)["supported"] is False


def test_unsupported_quant_type(tokenizers_, tmp_path, home):
    meta, vocab = tokenizers_["llama"]
    weights = hf_weights("llama", vocab)
    path = tmp_path / "iq.gguf"
    write_gguf(path, "llama", weights, meta)
    # rewrite one tensor as IQ2_XXS (an importance-matrix type gguf-py cannot dequantize)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(meta["tokens"])
    iq = gguf.GGMLQuantizationType.IQ2_XXS
    shape = gguf.quant_shape_to_byte_shape((INTER, 256), iq)
    w.add_tensor("blk.0.ffn_up.weight", np.zeros(shape, np.uint8), raw_dtype=iq)
    w.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError) as err:
        g.convert(path, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "IQ2_XXS" in msg and "Q4_K" in msg
    assert not (home / "models").exists() or not any((home / "models").glob("gguf-*"))


def test_not_a_gguf_file(tmp_path, home):
    bad = tmp_path / "model.gguf"
    bad.write_text("this is not a model\n")
    with pytest.raises(ModelError, match="not a GGUF file"):
        g.convert(bad, progress=False)
    with pytest.raises(ModelError, match="no such GGUF file"):
        g.convert(tmp_path / "missing.gguf", progress=False)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x05" * 10)
    with pytest.raises(ModelError, match="cannot read the GGUF file"):
        g.describe(truncated)


# --- tokenizers ----------------------------------------------------------------------------


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_bpe_tokenizer_parity(pre, tmp_path):
    from transformers import AutoTokenizer

    from mlxlora.models.gguf_tokenizer import write_tokenizer

    tok = train_bpe(pre)
    m = bpe_metadata(tok, pre)
    meta = _tokenizer_meta(m)
    write_tokenizer(tmp_path, meta)
    auto = AutoTokenizer.from_pretrained(tmp_path)
    for text in SAMPLES + ["<|im_start|>user\nこんにちは<|im_end|>"]:
        want = tok.encode(text).ids
        assert auto.encode(text) == want, text
        assert auto.decode(want) == text
    assert auto.eos_token == "<|im_end|>" and auto.bos_token == "<|im_start|>"
    assert auto.convert_tokens_to_ids("<|im_end|>") == m["eos"]


@pytest.mark.parametrize("add_prefix", [True, False])
def test_sentencepiece_tokenizer_parity(add_prefix, tmp_path):
    from transformers import AutoTokenizer

    from mlxlora.models.gguf_tokenizer import write_tokenizer

    sp = train_spm(add_prefix)
    meta = _tokenizer_meta(spm_metadata(sp, add_prefix))
    write_tokenizer(tmp_path, meta)
    auto = AutoTokenizer.from_pretrained(tmp_path)
    bytes_used = 0
    for text in SAMPLES:
        want = sp.encode(text)
        bytes_used += sum(sp.is_byte(i) for i in want)
        assert auto.encode(text, add_special_tokens=False) == want, text
        assert auto.encode(text) == [1, *want]  # add_bos_token, as llama.cpp does for SPM
        assert auto.decode(want) == sp.decode(want)
    assert bytes_used > 0  # the samples exercise byte fallback
    assert auto.bos_token == "<s>" and auto.eos_token == "</s>" and auto.unk_token == "<unk>"
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["bos_token_id"] == 1


def _tokenizer_meta(m: dict) -> dict:
    """The reader-side dict (tokenizer.* keys) for a test tokenizer description."""
    meta = {
        "tokenizer.ggml.model": m["model"],
        "tokenizer.ggml.tokens": m["tokens"],
        "tokenizer.ggml.token_type": m["types"],
        "tokenizer.ggml.bos_token_id": m["bos"],
        "tokenizer.ggml.eos_token_id": m["eos"],
        "tokenizer.ggml.add_bos_token": m["add_bos"],
        "tokenizer.chat_template": TEMPLATE,
    }
    for key, name in (
        ("pre", "pre"),
        ("merges", "merges"),
        ("scores", "scores"),
        ("pad", "padding_token_id"),
        ("unk", "unknown_token_id"),
        ("add_prefix", "add_space_prefix"),
    ):
        if key in m:
            meta[f"tokenizer.ggml.{name}"] = m[key]
    return meta
