"""GGUF tensors and hyperparameters as HF ones: names, config.json, weights.

llama.cpp's converter renames every tensor, permutes the rows of Q and K for llama/mistral (its
rope layout), adds 1 to gemma's norm weights, and replaces Llama 3's rope_scaling by a table of
per-frequency factors (rope_freqs). This module undoes each of those and writes safetensors,
sharded past 2 GB.

Weights stay quantized where MLX's affine quantization (w = scales * q + biases, q unsigned,
group 32) represents the GGUF block exactly: Q4_0 (d*(q-8): scales d, biases -8d), Q4_1
(d*q + m: scales d, biases m) and Q8_0 (d*q, q signed: q+128 at 8 bits, biases -128d), for the
2-D tensors mlx-lm quantizes (the Linear projections and the token embedding). config.json then
gets mlx-lm's `quantization` block, with per-module entries for 8-bit modules and `false` for
the projections left in float. Every other tensor is dequantized: F32 stays float32, the rest
(F16, BF16, K-quants, Q5_x, 1-D quantized tensors) become float16 (float32 where float16 would
overflow). Imports no mlx or torch: numpy, gguf, safetensors only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from mlxlora.errors import ModelError

SHARD_BYTES = 2 * 1024**3
PIPE_PROGRESS_SECONDS = 10.0
# general.architecture -> (model_type, architectures, llama.cpp permuted Q/K rows, norm offset)
ARCHS = {
    "llama": ("llama", "LlamaForCausalLM", True, 0.0),
    "mistral": ("mistral", "MistralForCausalLM", True, 0.0),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", False, 0.0),
    "gemma": ("gemma", "GemmaForCausalLM", False, 1.0),
}
QUANT_TYPES = (
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)  # fmt: skip

GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# GGUF types MLX's affine quantization holds exactly at group size 32 -> bits
KEPT_TYPES = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
GROUP_SIZE = 32
# the HF modules mlx-lm's load_model quantizes (nn.Linear and nn.Embedding have to_quantized)
QUANTIZABLE = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)  # fmt: skip
QUANTIZABLE_GLOBAL = ("model.embed_tokens", "lm_head")
SKIPPED = ("rope_freqs.weight",)  # llama3 rope factors: rope_scaling in config.json instead
SKIPPED_BLOCK = ("attn_rot_embd",)


def hf_name(name: str) -> str | None:
    """The HF tensor name for a GGUF one; None for one we drop; ModelError if unknown."""
    if name in SKIPPED:
        return None
    stem, _, suffix = name.rpartition(".")
    if suffix not in ("weight", "bias"):
        raise ModelError(f"unexpected tensor {name!r}")
    if stem in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        if parts[2] in SKIPPED_BLOCK:
            return None
        if parts[2] in BLOCK_NAMES:
            return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{suffix}"
    raise ModelError(f"unexpected tensor {name!r}")


def hf_config(meta: dict, reader) -> dict:
    arch = meta["general.architecture"]
    model_type, architecture, _, _ = ARCHS[arch]

    def a(key: str, default=None):
        value = meta.get(f"{arch}.{key}")
        return default if value is None else value

    names = {t.name for t in reader.tensors}
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    hidden = int(a("embedding_length"))
    heads = int(a("attention.head_count"))
    kv_heads = int(a("attention.head_count_kv", heads))
    head_dim = int(a("attention.key_length", hidden // heads))
    bias = "blk.0.attn_q.bias" in names
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": hidden,
        "num_hidden_layers": int(a("block_count")),
        "intermediate_size": int(a("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": int(embd.shape[-1]),
        "max_position_embeddings": int(a("context_length", 4096)),
        "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(a("rope.freq_base", 10000.0)),
        "hidden_act": "gelu_pytorch_tanh" if arch == "gemma" else "silu",
        "attention_bias": bias,
        "mlp_bias": False,
        "tie_word_embeddings": arch == "gemma" or "output.weight" not in names,
        "torch_dtype": "float32",
    }
    if arch == "gemma":
        config["hidden_activation"] = "gelu_pytorch_tanh"
    scaling = a("rope.scaling.type")
    if scaling == "linear" and a("rope.scaling.factor"):
        config["rope_scaling"] = {"type": "linear", "factor": float(a("rope.scaling.factor"))}
    has_freqs, llama3 = rope_freqs_scaling(meta, reader)
    if llama3:
        config["rope_scaling"] = llama3
    for key, name in (("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            config[f"{name}_token_id"] = int(value)
    return config


def llama3_factors(base: float, dim: int, factor: float, low: float, high: float, old: int):
    """Per-frequency rope factors of Llama 3.1's scaling (what llama.cpp stores as rope_freqs)."""
    wavelen = 2 * np.pi * base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    smooth = (old / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, mid))


def rope_scaling_from_factors(factors: np.ndarray, base: float, dim: int) -> dict | None:
    """The HF `rope_scaling` (rope_type llama3) that reproduces a rope_freqs tensor, or None."""
    factors = np.asarray(factors, dtype=np.float64).reshape(-1)
    factor = float(factors.max())
    if factors.shape[0] != dim // 2:
        return None
    for old in (8192, 4096, 2048, 16384, 32768, 65536, 131072):
        for low, high in ((1.0, 4.0), (1.0, 2.0), (1.0, 8.0), (2.0, 4.0), (2.0, 8.0)):
            want = llama3_factors(base, dim, factor, low, high, old)
            if np.allclose(want, factors, rtol=1e-4, atol=1e-5):
                return {
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": old,
                }
    return None


def rope_freqs_scaling(meta: dict, reader) -> tuple[bool, dict | None]:
    """(the file has a rope_freqs tensor, the llama3 rope_scaling it matches or None)."""
    t = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if t is None:
        return False, None
    arch = meta["general.architecture"]
    hidden = int(meta[f"{arch}.embedding_length"])
    dim = int(meta.get(f"{arch}.rope.dimension_count") or 0) or int(
        meta.get(f"{arch}.attention.key_length")
        or hidden // int(meta[f"{arch}.attention.head_count"])
    )
    base = float(meta.get(f"{arch}.rope.freq_base") or 10000.0)
    data = np.asarray(t.data).view(np.float32) if t.tensor_type.name == "F32" else None
    return True, None if data is None else rope_scaling_from_factors(data, base, dim)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rope permutation of the rows of a Q or K projection (or bias)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _fix_rows(w: np.ndarray, name: str, config: dict, arch: str) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (rows only: also valid for packed weights)."""
    _, _, permuted, _ = ARCHS[arch]
    stem = name.rsplit(".", 1)[0]
    if permuted and stem.endswith((".attn_q", ".attn_k")):
        n = config["num_attention_heads"] if stem.endswith("q") else config["num_key_value_heads"]
        w = unpermute(w, n)
    return w


def dequantized(t, config: dict, arch: str) -> np.ndarray:
    """The tensor in float32, in the HF layout."""
    from gguf.quants import dequantize

    shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # ne is innermost-first
    w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
    w = _fix_rows(w, t.name, config, arch)
    _, _, _, norm_offset = ARCHS[arch]
    if norm_offset and t.name.endswith("norm.weight"):
        w = w - np.float32(norm_offset)
    return np.ascontiguousarray(w)


def _block_bytes(data: np.ndarray, rows: int, block: int) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(data, dtype=np.uint8)).reshape(rows, -1, block)


def _scale_dtype(*arrays: np.ndarray) -> type:
    """float16 when every value survives the round trip (GGUF's d and m are float16 already;
    -8d and -128d are exact unless they overflow), else float32."""
    with np.errstate(over="ignore"):
        for a in arrays:
            if not np.array_equal(a.astype(np.float16).astype(np.float32), a, equal_nan=True):
                return np.float32
    return np.float16


def mlx_quantized(data: np.ndarray, qtype: str, rows: int, cols: int):
    """(weight uint32 [rows, cols*bits/32], scales, biases [rows, cols/32], bits): the MLX
    affine quantization of Q4_0 / Q4_1 / Q8_0 block bytes, equal value for value.

    MLX packs values little end first: value i of a group of 32/bits sits at bit i*bits of its
    uint32 word, so the words read as little-endian bytes hold (q0 | q1 << 4), (q2 | q3 << 4)...
    for 4 bits and q0, q1, q2... for 8 bits. GGUF's Q4 blocks hold q[j] | q[j+16] << 4 in byte j.
    """
    groups = cols // GROUP_SIZE
    if qtype == "Q8_0":
        b = _block_bytes(data, rows, 34)
        d = b[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        q = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        scales, biases, bits = d, d * np.float32(-128), 8
    elif qtype in ("Q4_0", "Q4_1"):
        head = 2 if qtype == "Q4_0" else 4
        b = _block_bytes(data, rows, head + 16)
        d = b[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        if qtype == "Q4_0":
            biases = d * np.float32(-8)
        else:
            biases = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        qs = b[..., head:]
        q32 = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # the block's 32 values in order
        q = (q32[..., 0::2] | (q32[..., 1::2] << 4)).astype(np.uint8)
        scales, bits = d, 4
    else:
        raise ValueError(f"{qtype} is not kept quantized")
    weight = np.ascontiguousarray(q.reshape(rows, -1)).view("<u4").astype(np.uint32)
    dtype = _scale_dtype(scales, biases)
    scales = scales.reshape(rows, groups).astype(dtype)
    biases = biases.reshape(rows, groups).astype(dtype)
    return weight, scales, biases, bits


def module_of(name: str) -> str | None:
    """The HF module path of a weight mlx-lm would quantize (its Linear / Embedding), or None."""
    if not name.endswith(".weight"):
        return None
    stem = name[: -len(".weight")]
    if stem in QUANTIZABLE_GLOBAL or stem.endswith(QUANTIZABLE):
        return stem
    return None


def plan(t, name: str, quantized: bool = True) -> tuple[str, int]:
    """How a tensor is written -- 'q4' / 'q8' (kept quantized), 'f32' or 'f16' -- and its bytes.

    Only 2-D tensors of quantizable modules stay quantized (none where not `quantized`): 1-D
    quantized tensors (llama.cpp writes none) and the rest are dequantized.
    """
    kind = t.tensor_type.name
    n = int(t.n_elements)
    if (
        quantized
        and kind in KEPT_TYPES
        and module_of(name)
        and len(t.shape) == 2
        and int(t.shape[0]) % GROUP_SIZE == 0
    ):
        bits = KEPT_TYPES[kind]
        return f"q{bits}", n * bits // 8 + n // GROUP_SIZE * 2 * 2
    if kind == "F32":
        return "f32", n * 4
    return "f16", n * 2


def as_float16(w: np.ndarray) -> np.ndarray:
    """float16 unless that overflows (then float32: a few outliers must not become inf)."""
    with np.errstate(over="ignore"):
        h = w.astype(np.float16)
    if np.isinf(h).any() and not np.isinf(w).any():
        return w
    return h


def quantization_config(plans: dict[str, tuple[str, int]]) -> dict | None:
    """mlx-lm's `quantization` for the written tensors: the width of the most modules as the
    default, an entry for each module of another width, `False` for a quantizable module in
    float."""
    widths: dict[int, int] = {}
    for kind, _ in plans.values():
        if kind.startswith("q"):
            widths[int(kind[1:])] = widths.get(int(kind[1:]), 0) + 1
    if not widths:
        return None
    default = max(widths, key=widths.get)
    quant: dict = {"group_size": GROUP_SIZE, "bits": default}
    for name, (kind, _) in sorted(plans.items()):
        module = module_of(name)
        if module is None:
            continue
        if not kind.startswith("q"):
            quant[module] = False
        elif int(kind[1:]) != default:
            quant[module] = {"group_size": GROUP_SIZE, "bits": int(kind[1:])}
    return quant


class _Counts:
    """The tensors converted so far: one line rewritten in a terminal; in a log or a pipe
    (a studio's child, CI) a whole line every PIPE_PROGRESS_SECONDS and at the end."""

    def __init__(self, total: int):
        self.total = total
        self.start = self.last = time.monotonic()

    def show(self, done: int) -> None:
        now = time.monotonic()
        line = f"  converted {done}/{self.total} tensors ({now - self.start:.1f}s)"
        if sys.stderr.isatty():
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        elif done == self.total or now - self.last >= PIPE_PROGRESS_SECONDS:
            self.last = now
            print(line, file=sys.stderr, flush=True)


def write_weights(
    dest: Path, reader, config: dict, arch: str, progress: bool, quantized: bool = True
) -> dict:
    """Write the safetensors (every tensor float where not `quantized`); returns what
    config.json must add: `quantization` (when any tensor stays quantized) and `torch_dtype`."""
    from safetensors.numpy import save_file

    todo = []
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None or (name == "lm_head.weight" and config["tie_word_embeddings"]):
            continue
        kind, nbytes = plan(t, name, quantized)
        todo.append((name, t, kind, nbytes))
    shards: list[list] = [[]]
    size = 0
    for item in todo:
        if shards[-1] and size + item[3] > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item[3]
    n = len(shards)
    weight_map = {}
    total = 0
    dtypes: set[str] = set()
    done, counts = 0, _Counts(len(todo))
    for k, shard in enumerate(shards, 1):
        file = "model.safetensors" if n == 1 else f"model-{k:05d}-of-{n:05d}.safetensors"
        tensors = {}
        for name, t, kind, _ in shard:
            if kind.startswith("q"):
                rows, cols = int(t.shape[1]), int(t.shape[0])  # ne is innermost-first
                weight, scales, biases = mlx_quantized(t.data, t.tensor_type.name, rows, cols)[:3]
                stem = name[: -len(".weight")]
                parts = {
                    name: weight,
                    f"{stem}.scales": scales,
                    f"{stem}.biases": biases,
                }
                for key, value in parts.items():
                    tensors[key] = np.ascontiguousarray(_fix_rows(value, t.name, config, arch))
                    weight_map[key] = file
                dtypes.add(str(scales.dtype))
            else:
                w = dequantized(t, config, arch)
                tensors[name] = w if kind == "f32" else as_float16(w)
                weight_map[name] = file
                dtypes.add(str(tensors[name].dtype))
            done += 1
            if progress and (done % 50 == 0 or done == len(todo)):
                counts.show(done)
        total += sum(v.nbytes for v in tensors.values())
        save_file(tensors, str(dest / file), metadata={"format": "pt"})
        del tensors
    if progress and sys.stderr.isatty():
        print(file=sys.stderr)  # ends the line the counts rewrote
    if n > 1:
        index = {
            "metadata": {"total_size": total},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    extra: dict = {"torch_dtype": "float16" if "float16" in dtypes else "float32"}
    quant = quantization_config({name: (kind, nbytes) for name, _, kind, nbytes in todo})
    if quant:
        extra["quantization"] = quant
    return extra
