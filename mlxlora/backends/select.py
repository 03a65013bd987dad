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
    """The backend that will run `requested` (auto | mlx | torch), or a clear error.

    Only MLX is implemented so far; torch (PyTorch + PEFT on CUDA hosts) comes later, so
    every name resolves to "mlx" or fails here, and the functions below may assume MLX.
    """
    if requested == "torch" or (requested == "auto" and not mlx_available() and torch_available()):
        raise BackendUnavailable("backend torch: not implemented yet; use backend: mlx")
    if not mlx_available():
        raise BackendUnavailable(
            "backend mlx: install it with `pip install mlx mlx-lm` (Linux: mlx[cpu])"
        )
    return "mlx"


def create(requested: str = "auto"):
    """A fresh training backend for `requested`."""
    resolve_name(requested)
    from mlxlora.backends.mlx import MLXBackend

    return MLXBackend()


def describe(requested: str = "auto"):
    """BackendInfo of the backend `requested` would give, without loading a model."""
    resolve_name(requested)
    from mlxlora.backends import mlx

    return mlx.describe()


def generator(requested: str, model_dir, adapter_dir=None):
    """A loaded generator (`.generate(messages, max_tokens)`, `.perplexity(text)`) for the
    backend `requested` would give, with the LoRA adapter in `adapter_dir` applied if given."""
    resolve_name(requested)
    from mlxlora.backends.mlx_infer import MLXGenerator

    return MLXGenerator(model_dir, adapter_dir)
