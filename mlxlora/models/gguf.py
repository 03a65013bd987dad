"""A GGUF file (llama.cpp, Ollama) becomes a normal HF-format model directory.

`convert(path)` reads the file with `gguf.GGUFReader`, dequantizes every tensor to float32,
renames llama.cpp's tensor names to the HF ones, undoes what llama.cpp's converter did to
them (the rope row permutation of Q and K for llama/mistral, the +1 on gemma's norms), and
writes config.json, model.safetensors (sharded past 2 GB) and the tokenizer files rebuilt from
the metadata (gguf_tokenizer). The result is cached under `home()/models/gguf-<sha256[:16]>/`,
built beside it and renamed into place, so a second call costs a `stat`.

`describe(path)` says what a GGUF file holds (for errors and listings). Imports no mlx or torch;
numpy, gguf, safetensors and tokenizers only.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from mlxlora.errors import ModelError

# Bump when the bytes written change: a cached directory from another version is rebuilt.
CONVERTER_VERSION = 1
SHARD_BYTES = 2 * 1024**3
MAGIC = b"GGUF"

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
SKIPPED = ("rope_freqs.weight",)  # llama3 rope factors: computed from config by mlx-lm
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


# --- reading ------------------------------------------------------------------------------


def _check_magic(path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise ModelError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")


def _value(field):
    """A reader field as Python: scalars, str, lists (strings decoded leniently)."""
    from gguf import GGUFValueType

    types = field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        if types[-1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        if not field.data:
            return []
        return np.concatenate([field.parts[i] for i in field.data]).tolist()
    if types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    value = field.parts[field.data[0]]
    return value.tolist()[0] if hasattr(value, "tolist") else value


def _open(path: Path):
    _check_magic(path)
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # truncated or corrupt header
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(f"{path}: cannot read the GGUF file ({first})") from None
    meta = {k: _value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return reader, meta


def _summary(path: Path, reader, meta: dict) -> dict:
    arch = meta.get("general.architecture")
    types = Counter(t.tensor_type.name for t in reader.tensors)

    def a(key: str):
        return meta.get(f"{arch}.{key}")

    tokens = meta.get("tokenizer.ggml.tokens") or []
    return {
        "path": str(path),
        "size": path.stat().st_size,
        "architecture": arch,
        "name": meta.get("general.name"),
        "tensor_count": len(reader.tensors),
        "quant_types": dict(types.most_common()),
        "file_type": meta.get("general.file_type"),
        "context_length": a("context_length"),
        "block_count": a("block_count"),
        "embedding_length": a("embedding_length"),
        "feed_forward_length": a("feed_forward_length"),
        "head_count": a("attention.head_count"),
        "head_count_kv": a("attention.head_count_kv"),
        "vocab_size": len(tokens),
        "tokenizer_model": meta.get("tokenizer.ggml.model"),
        "tokenizer_pre": meta.get("tokenizer.ggml.pre"),
        "chat_template": bool(meta.get("tokenizer.chat_template")),
    }


def _problem(info: dict, reader) -> str | None:
    """Why we cannot convert this file (one line), or None."""
    from mlxlora.models.gguf_tokenizer import TOKENIZER_MODELS

    arch = info["architecture"]
    if arch not in ARCHS:
        return f"architecture {arch!r} is not supported (supported: {', '.join(ARCHS)})"
    bad = sorted(t for t in info["quant_types"] if t not in QUANT_TYPES)
    if bad:
        return (
            f"tensor type {', '.join(bad)} is not supported (supported: {', '.join(QUANT_TYPES)})"
        )
    if info["tokenizer_model"] not in TOKENIZER_MODELS:
        return (
            f"tokenizer model {info['tokenizer_model']!r} is not supported "
            f"(supported: {', '.join(TOKENIZER_MODELS)})"
        )
    for key in ("block_count", "embedding_length", "feed_forward_length", "head_count"):
        if not info[key]:
            return f"metadata {arch}.{key.replace('head_', 'attention.head_')} is missing"
    for t in reader.tensors:
        try:
            hf_name(t.name)
        except ModelError as exc:
            return f"{exc} for architecture {arch!r}"
    return None


def describe(path: str | Path) -> dict:
    """Architecture, tensor types, counts and the metadata of interest of a GGUF file.

    Adds `supported` (bool) and `problem` (why not, one line, or None).
    """
    path = Path(path).expanduser()
    reader, meta = _open(path)
    info = _summary(path, reader, meta)
    info["problem"] = _problem(info, reader)
    info["supported"] = info["problem"] is None
    return info


# --- cache --------------------------------------------------------------------------------


def _models_root() -> Path:
    from mlxlora.runs import home

    return home() / "models"


def file_sha256(path: Path, chunk: int = 16 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _hash_index() -> Path:
    return _models_root() / "gguf-hashes.json"


def _known_hash(path: Path) -> str | None:
    """The sha256 recorded for this path at its current size and mtime (no reread)."""
    try:
        index = json.loads(_hash_index().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    st = path.stat()
    rec = index.get(str(path.resolve()))
    if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
        return rec.get("sha256")
    return None


def _remember_hash(path: Path, digest: str) -> None:
    file = _hash_index()
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    st = path.stat()
    index[str(path.resolve())] = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": digest,
    }
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}")
    tmp.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, file)


def cache_dir(digest: str) -> Path:
    return _models_root() / f"gguf-{digest[:16]}"


def _complete(final: Path) -> bool:
    try:
        src = json.loads((final / "source.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return src.get("converter") == CONVERTER_VERSION and (final / "config.json").is_file()


# --- conversion ---------------------------------------------------------------------------


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
    for key, name in (("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            config[f"{name}_token_id"] = int(value)
    return config


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rope permutation of the rows of a Q or K projection (or bias)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor(t, config: dict, arch: str) -> np.ndarray:
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


def _write_weights(dest: Path, reader, config: dict, arch: str, progress: bool) -> None:
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
            tensors[name] = _tensor(t, config, arch)
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


def _build(dest: Path, path: Path, digest: str, reader, meta: dict, progress: bool) -> None:
    from mlxlora.models.gguf_tokenizer import write_tokenizer

    arch = meta["general.architecture"]
    config = hf_config(meta, reader)
    config["mlxlora_gguf"] = {"file": path.name, "sha256": digest}
    _write_weights(dest, reader, config, arch, progress)
    write_tokenizer(dest, meta, config["max_position_embeddings"])
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    source = {
        "path": str(path.resolve()),
        "size": path.stat().st_size,
        "sha256": digest,
        "architecture": arch,
        "name": meta.get("general.name"),
        "converter": CONVERTER_VERSION,
    }
    (dest / "source.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


def convert(path: str | Path, progress: bool = True) -> Path:
    """The HF-format directory converted from the GGUF file at `path` (cached by content)."""
    from mlxlora.runs import atomic_dir

    path = Path(path).expanduser()
    _check_magic(path)
    digest = _known_hash(path)
    if digest and _complete(cache_dir(digest)):
        return cache_dir(digest)
    reader, meta = _open(path)
    info = _summary(path, reader, meta)
    problem = _problem(info, reader)
    if problem:
        raise ModelError(f"{path}: {problem}")
    if digest is None:
        digest = file_sha256(path)
        _remember_hash(path, digest)
    final = cache_dir(digest)
    if _complete(final):
        return final
    start = time.monotonic()
    if progress:
        types = ", ".join(info["quant_types"])
        print(
            f"converting {path.name} ({info['architecture']}, {info['tensor_count']} tensors: "
            f"{types}) -> {final}",
            file=sys.stderr,
        )
    with atomic_dir(final) as tmp:
        _build(tmp, path, digest, reader, meta, progress)
    if progress:
        print(f"converted in {time.monotonic() - start:.1f}s", file=sys.stderr)
    return final
