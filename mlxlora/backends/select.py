"""Choose a backend for a config. `auto`: MLX on Apple Silicon (Metal); torch where CUDA is
there and Metal is not; otherwise MLX (its CPU build), then torch. Imports each backend module
only when asked."""

from __future__ import annotations

import importlib.util
import os
import platform

from mlxlora.errors import BackendUnavailable
from mlxlora.machine import NVIDIA_DRIVER


def mlx_available() -> bool:
    return (
        importlib.util.find_spec("mlx") is not None
        and importlib.util.find_spec("mlx_lm") is not None
    )


def torch_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("torch", "transformers", "peft"))


def apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def cuda_present() -> bool:
    """An NVIDIA driver is there and torch can use it (torch is imported only then)."""
    if not NVIDIA_DRIVER.exists() or not torch_available():
        return False
    import torch

    return torch.cuda.is_available()


def process_rank() -> int:
    """This process's rank in a data-parallel job (torchrun sets RANK, mlx.launch MLX_RANK);
    0 when alone."""
    return int(os.environ.get("RANK") or os.environ.get("MLX_RANK") or "0")


def resolve_name(requested: str) -> str:
    """The backend that will run `requested` (auto | mlx | torch), or a clear error."""
    if requested == "auto":
        if not (apple_silicon() and mlx_available()) and cuda_present():
            return "torch"
        requested = "mlx" if mlx_available() or not torch_available() else "torch"
    if requested == "torch" and not torch_available():
        raise BackendUnavailable("backend torch: install it with `pip install 'mlxlora[torch]'`")
    if requested == "mlx" and not mlx_available():
        raise BackendUnavailable(
            "backend mlx: install it with `pip install mlx mlx-lm` (Linux: mlx[cpu])"
        )
    return requested


def create(requested: str = "auto"):
    """A fresh training backend for `requested`."""
    if resolve_name(requested) == "torch":
        from mlxlora.backends.torch import TorchBackend

        return TorchBackend()
    from mlxlora.backends.mlx import MLXBackend

    return MLXBackend()


def describe(requested: str = "auto"):
    """BackendInfo of the backend `requested` would give, without loading a model."""
    if resolve_name(requested) == "torch":
        from mlxlora.backends import torch as torch_backend

        return torch_backend.describe()
    from mlxlora.backends import mlx_device

    return mlx_device.describe()


def generator(requested: str, model_dir, adapter_dir=None):
    """A loaded generator (`.stream`, `.generate`, `.perplexity`, `.eval_loss`) with the LoRA
    adapter in `adapter_dir` applied if given, on the backend `requested` resolves to as for
    training: every run's adapter directory holds mlx-lm's layout, which both load."""
    if resolve_name(requested) == "torch":
        from mlxlora.backends.torch_infer import TorchGenerator

        return TorchGenerator(model_dir, adapter_dir)
    from mlxlora.backends.mlx_infer import MLXGenerator

    return MLXGenerator(model_dir, adapter_dir)
