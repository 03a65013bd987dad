"""A GGUF file (llama.cpp, Ollama) becomes a normal HF-format model directory.

`convert(path)` reads the file with `gguf.GGUFReader`, keeps Q4_0 / Q4_1 / Q8_0 projections and
embeddings as MLX 4- or 8-bit affine-quantized tensors (exactly the same values; config.json
gets mlx-lm's `quantization` block) and dequantizes the rest (F32 to float32, other types to
float16), renames llama.cpp's tensor names to the HF ones, undoes what llama.cpp's converter did to
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
from mlxlora.models.gguf_weights import (  # noqa: F401  (names re-exported for callers)
    ARCHS,
    BLOCK_NAMES,
    GLOBAL_NAMES,
    QUANT_TYPES,
    hf_config,
    hf_name,
    llama3_factors,
    rope_freqs_scaling,
    unpermute,
    write_weights,
)

# Bump when the bytes written change: a cached directory from another version is rebuilt.
CONVERTER_VERSION = 2  # 2: Q4_0/Q4_1/Q8_0 kept quantized, float16
MAGIC = b"GGUF"


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


def _problem(info: dict, reader, meta: dict) -> str | None:
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
    if not any(t.name == "token_embd.weight" for t in reader.tensors):
        return "it has no token_embd.weight tensor"
    if not meta.get("tokenizer.ggml.tokens"):
        return "it has no tokenizer.ggml.tokens (the vocabulary)"
    has_freqs, llama3 = rope_freqs_scaling(meta, reader)
    if has_freqs and not llama3:
        return "its rope_freqs tensor matches no Llama 3 rope scaling we can express in config.json"
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
    info["problem"] = _problem(info, reader, meta)
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


def cache_dir(digest: str, quantized: bool = True) -> Path:
    return _models_root() / f"gguf-{digest[:16]}{'' if quantized else '-float'}"


def _complete(final: Path) -> bool:
    try:
        src = json.loads((final / "source.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return src.get("converter") == CONVERTER_VERSION and (final / "config.json").is_file()


# --- conversion ---------------------------------------------------------------------------


def _build(
    dest: Path, path: Path, digest: str, reader, meta: dict, progress: bool, quantized: bool
) -> None:
    from mlxlora.models.gguf_tokenizer import write_tokenizer

    arch = meta["general.architecture"]
    config = hf_config(meta, reader)
    config["mlxlora_gguf"] = {"file": path.name, "sha256": digest}
    config.update(write_weights(dest, reader, config, arch, progress, quantized))
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


def convert(path: str | Path, progress: bool = True, quantized: bool = True) -> Path:
    """The HF-format directory converted from the GGUF file at `path` (cached by content):
    Q4_0/Q4_1/Q8_0 projections kept in MLX's quantization, or every weight float where not
    `quantized` (what transformers loads: the torch backend's)."""
    from mlxlora.atomic import atomic_dir

    path = Path(path).expanduser()
    _check_magic(path)
    digest = _known_hash(path)
    if digest and _complete(cache_dir(digest, quantized)):
        return cache_dir(digest, quantized)
    reader, meta = _open(path)
    info = _summary(path, reader, meta)
    problem = _problem(info, reader, meta)
    if problem:
        raise ModelError(f"{path}: {problem}")
    if digest is None:
        digest = file_sha256(path)
        _remember_hash(path, digest)
    final = cache_dir(digest, quantized)
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
        _build(tmp, path, digest, reader, meta, progress, quantized)
    if progress:
        print(f"converted in {time.monotonic() - start:.1f}s", file=sys.stderr)
    return final
