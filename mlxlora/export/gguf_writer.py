"""Write GGUF files llama.cpp (and so Ollama) loads: a whole model, or a LoRA adapter.

Built on the `gguf` package (GGUFWriter, its tensor-name maps, its quantizers, SpecialVocab);
only the per-architecture details the package leaves to a converter are written here.
Imports no mlx at module level.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlxlora.errors import ExportError

# HF model_type -> llama.cpp architecture (general.architecture)
SUPPORTED_ARCHITECTURES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma2",
}
QUANTIZATIONS = ("f16", "q8_0", "q4_0", "q4_k_m")


def model_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: cannot read the model config ({exc})") from None


def check_supported(model_dir: Path) -> str:
    """The llama.cpp architecture of the model in `model_dir`, or ExportError naming the
    supported ones (checked before any work)."""
    model_type = model_config(model_dir).get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ExportError(
            f"{model_dir}: GGUF export does not support model_type {model_type!r} "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    return SUPPORTED_ARCHITECTURES[model_type]


def write_gguf(
    model_dir: Path, out: Path, quantize: str = "f16", chat_template: str | None = None
) -> Path:
    """Write the HF-format model in `model_dir` as one GGUF file `out` (atomically) with its
    tokenizer and chat template (`chat_template` overrides the tokenizer's); `quantize` is one
    of QUANTIZATIONS (q4_k_m needs llama-cpp-python, the `export` extra). Returns `out`."""
    raise NotImplementedError


def write_lora_gguf(run_or_adapter_dir: Path, base_model_dir: Path, out: Path) -> Path:
    """Write the run's final adapter (or an mlx-lm adapter directory) as a llama.cpp LoRA
    adapter GGUF for the base model in `base_model_dir`; llama.cpp applies it with the scale
    it was trained with (adapter.lora.alpha = mlx-lm's scale x rank). Returns `out`."""
    raise NotImplementedError
