"""GGUF tensors and hyperparameters as HF ones: names, config.json, dequantized weights.

llama.cpp's converter renames every tensor, permutes the rows of Q and K for llama/mistral (its
rope layout), adds 1 to gemma's norm weights, and replaces Llama 3's rope_scaling by a table of
per-frequency factors (rope_freqs). This module undoes each of those and writes float32
safetensors, sharded past 2 GB. Imports no mlx or torch: numpy, gguf, safetensors only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from mlxlora.errors import ModelError

SHARD_BYTES = 2 * 1024**3
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


def dequantized(t, config: dict, arch: str) -> np.ndarray:
    from gguf.quants import dequantize

    shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # ne is innermost-first
    w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
    _, _, permuted, norm_offset = ARCHS[arch]
    stem = t.name.rsplit(".", 1)[0]
    if permuted and stem.endswith((".attn_q", ".attn_k")):
        n = config["num_attention_heads"] if stem.endswith("q") else config["num_key_value_heads"]
        w = unpermute(w, n)
    if norm_offset and t.name.endswith("norm.weight"):
        w = w - np.float32(norm_offset)
    return np.ascontiguousarray(w)


def write_weights(dest: Path, reader, config: dict, arch: str, progress: bool) -> None:
    from safetensors.numpy import save_file

    todo = []
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None or (name == "lm_head.weight" and config["tie_word_embeddings"]):
            continue
        todo.append((name, t, int(t.n_elements) * 4))
    shards: list[list] = [[]]
    size = 0
    for item in todo:
        if shards[-1] and size + item[2] > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item[2]
    n = len(shards)
    weight_map = {}
    done, start = 0, time.monotonic()
    for k, shard in enumerate(shards, 1):
        file = "model.safetensors" if n == 1 else f"model-{k:05d}-of-{n:05d}.safetensors"
        tensors = {}
        for name, t, _ in shard:
            tensors[name] = dequantized(t, config, arch)
            weight_map[name] = file
            done += 1
            if progress and (done % 50 == 0 or done == len(todo)):
                print(
                    f"\r  dequantized {done}/{len(todo)} tensors ({time.monotonic() - start:.1f}s)",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        save_file(tensors, str(dest / file), metadata={"format": "pt"})
        del tensors
    if progress:
        print(file=sys.stderr)
    if n > 1:
        index = {
            "metadata": {"total_size": sum(i[2] for i in todo)},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
