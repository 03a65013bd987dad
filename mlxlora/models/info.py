"""What is in a local HF-format model directory: architecture, quantization, parameter count
and dtype (read from config.json and the safetensors headers, no weights loaded), and the GGUF
it was converted from. Imports no mlx or torch.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from mlxlora.errors import ModelError

_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "I64": 8,
    "I32": 4,
    "U32": 4,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file: {name: {dtype, shape, data_offsets}}."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100_000_000:
            raise ModelError(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file (cut short, not one at all), or None: mlx's
    loader fails on one with a traceback."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            size = os.fstat(f.fileno()).st_size
        if 8 + n > size:
            return f"cut short ({size} bytes; its header alone takes {8 + n})"
        tensors = safetensors_header(path).values()
        end = 8 + n + max((int(t["data_offsets"][1]) for t in tensors), default=0)
    except (OSError, ValueError, struct.error, ModelError, KeyError, TypeError, IndexError):
        return "not a safetensors file"
    return f"cut short ({size} bytes of {end})" if size < end else None


def _prod(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def count_parameters(
    model_dir: Path, bits: int | None = None, quantization: dict | None = None
) -> tuple[int, int, str | None]:
    """(parameters, bytes of tensors, dominant float dtype) from the safetensors headers.

    An MLX-quantized linear stores `W.weight` as uint32 words packing 32/bits values, plus
    `W.scales` and `W.biases` per group; bitsandbytes stores `W.weight` as bytes packing
    8/bits values, plus `W.weight.absmax`, `W.weight.quant_map` and its quant state. Either
    counts as the unpacked weight, and the rest count as bytes but not as parameters.
    `quantization` (mlx-lm's config block) may give a module its own width:
    `{"model.layers.3.mlp.down_proj": {"bits": 8, ...}}`.
    """
    tensors: dict[str, dict] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(safetensors_header(file))
    quantization = quantization or {}
    params = nbytes = 0
    float_elems: dict[str, int] = {}
    for name, t in tensors.items():
        n = _prod(t["shape"])
        nbytes += n * _DTYPE_BYTES.get(t["dtype"], 4)
        base = name.rsplit(".", 1)[0]
        packed = (
            f"{base}.scales" in tensors and tensors.get(f"{base}.weight", {}).get("dtype") == "U32"
        )
        if packed and name.endswith((".scales", ".biases")):
            continue
        if _bnb_state_of(name, tensors):
            continue
        if packed and name.endswith(".weight"):
            own = quantization.get(base)
            width = own.get("bits") if isinstance(own, dict) else None
            n = n * 32 // (width or bits or 4)
        elif f"{name}.absmax" in tensors:  # bitsandbytes: bytes of 8/bits values
            n = n * 8 // (bits or 4)
        elif t["dtype"] in _DTYPE_NAMES:
            float_elems[t["dtype"]] = float_elems.get(t["dtype"], 0) + n
        params += n
    dominant = max(float_elems, key=float_elems.get) if float_elems else None
    return params, nbytes, _DTYPE_NAMES.get(dominant) if dominant else None


def _bnb_state_of(name: str, tensors: dict) -> bool:
    """True for a bitsandbytes weight's state (`W.weight.absmax`, `W.weight.quant_state.*`)."""
    head, sep, _ = name.partition(".weight.")
    return bool(sep) and f"{head}.weight.absmax" in tensors


def bnb_bits(quant: dict) -> int | None:
    """The width of an HF bitsandbytes quantization_config: 4 or 8; None for another method."""
    if quant.get("quant_method") != "bitsandbytes":
        return None
    return 4 if quant.get("load_in_4bit") else 8 if quant.get("load_in_8bit") else None


def refuse_bitsandbytes_in_mlx(model_dir: str | Path, merging: bool = False) -> None:
    """ModelError for an HF bitsandbytes checkpoint, which mlx-lm cannot load (it listed
    every layer's quantization state as unknown parameters, 85 lines for builtin:tiny).
    `merging`: for fuse and export, which read the base with MLX whichever backend trained
    the run (advice to train on backend torch sent a torch run's user in a circle)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # mlx-lm says what is wrong with it
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if isinstance(quant, dict) and bnb_bits(quant) and merging:
        raise ModelError(
            f"{model_dir}: a bitsandbytes {bnb_bits(quant)}-bit base cannot be fused or"
            " exported: both read its weights with MLX, which cannot load it; a run trained on"
            " its float model can be"
        )
    if isinstance(quant, dict) and bnb_bits(quant):
        raise ModelError(
            f"{model_dir}: a bitsandbytes {bnb_bits(quant)}-bit checkpoint runs on backend"
            " torch only (QLoRA: pip install 'mlxlora[torch,qlora]', backend: torch); on MLX"
            " use its float model or an MLX-quantized one (mlx-community's ...-4bit)"
        )


def gguf_source(model_dir: str | Path) -> dict:
    """{"gguf": file, "gguf_sha256": digest} for a directory converted from a GGUF, else {}.

    Read from the source.json that gguf.convert writes (the cache is keyed by that digest), so
    no multi-gigabyte file is hashed again. The file is the one first converted to this
    directory: another path holding the same bytes shares it.
    """
    try:
        source = json.loads((Path(model_dir) / "source.json").read_text(encoding="utf-8"))
        return {"gguf": source["path"], "gguf_sha256": source["sha256"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def model_info(model_dir: str | Path) -> dict:
    """Architecture, quantization, parameter count and dtype of a local model directory."""
    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{model_dir}: config.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{model_dir}/config.json: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{model_dir}/config.json: expected a JSON object")
    text = {**config, **config.get("text_config", {})}  # multimodal configs nest the LM
    quant = config.get("quantization") or config.get("quantization_config") or None
    quant = quant if isinstance(quant, dict) else None
    bits = (quant.get("bits") or bnb_bits(quant)) if quant else None
    heads = text.get("num_attention_heads")
    hidden = text.get("hidden_size")
    params, nbytes, st_dtype = count_parameters(model_dir, bits, quant)
    return {
        "model_type": text.get("model_type") or config.get("model_type"),
        "hidden_size": hidden,
        "num_hidden_layers": text.get("num_hidden_layers"),
        "vocab_size": text.get("vocab_size"),
        "num_attention_heads": heads,
        "num_key_value_heads": text.get("num_key_value_heads") or heads,
        "intermediate_size": text.get("intermediate_size"),
        "head_dim": text.get("head_dim") or (hidden // heads if hidden and heads else None),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "quantization": _quantization(quant, bits),
        "params": params,
        "weight_bytes": nbytes,
        "dtype": config.get("torch_dtype") or config.get("dtype") or st_dtype,
    }


def _quantization(quant: dict | None, bits: int | None) -> dict | None:
    """{"bits", "group_size"} of a quantized model, and "method": "bitsandbytes" for an HF
    bitsandbytes one (torch keeps it quantized: QLoRA; its blocks of 64 values share a scale)."""
    if not bits:
        return None
    if bnb_bits(quant):
        return {"bits": bits, "group_size": 64, "method": "bitsandbytes"}
    return {"bits": bits, "group_size": quant.get("group_size")}


def tokenizer_of(model_dir: str | Path, label: str):
    """The Hugging Face tokenizer in `model_dir` (no backend is imported); ModelError naming
    `label` when there is none."""
    # Only the tokenizer is needed: silence transformers' "PyTorch was not found" advisory.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ModelError("counting tokens needs the `transformers` package") from None
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's directory
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{label}: cannot load a tokenizer: {first}") from None
