"""Choose a backend for a config: `auto` prefers MLX (Apple Silicon, or CPU/CUDA builds of MLX),
then torch. Imports each backend module only when asked."""

from __future__ import annotations

import importlib.util

from mlxlora.errors import BackendUnavailable


def mlx_available() -> bool:
    return (
        importlib.util.find_spec("mlx") is not None
        and importlib.util.find_spec("mlx_lm") is not None
    )


def torch_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("torch", "transformers", "peft"))


def resolve_name(requested: str) -> str:
    if requested == "auto":
        if mlx_available():
            return "mlx"
        if torch_available():
            return "torch"
        raise BackendUnavailable(
            "no backend installed: pip install mlxlora (MLX) or mlxlora[torch]"
        )
    if requested == "mlx" and not mlx_available():
        raise BackendUnavailable(
            "backend mlx: install it with `pip install mlx mlx-lm` (Linux: mlx[cpu])"
        )
    if requested == "torch":
        raise BackendUnavailable("backend torch: not implemented yet; use backend: mlx")
    return requested


def create(requested: str = "auto"):
    """A fresh backend instance for `requested` (auto | mlx | torch)."""
    name = resolve_name(requested)
    from mlxlora.backends.mlx import MLXBackend

    return MLXBackend() if name == "mlx" else None


def describe(requested: str = "auto"):
    """BackendInfo of the backend `requested` would give, without loading a model."""
    name = resolve_name(requested)
    from mlxlora.backends import mlx

    return mlx.describe() if name == "mlx" else None


def generator(requested: str, model_dir, adapter_dir=None):
    """A loaded generator (`.generate(messages, max_tokens)`, `.perplexity(text)`) for the
    backend `requested` would give, with the LoRA adapter in `adapter_dir` applied if given."""
    name = resolve_name(requested)
    from mlxlora.backends.mlx_infer import MLXGenerator

    return MLXGenerator(model_dir, adapter_dir) if name == "mlx" else None
