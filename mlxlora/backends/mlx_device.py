"""Where MLX trains and in which dtype: the one place that picks the device.

On Apple Silicon the model keeps its own dtype on the GPU (MLXBackend.load raises the
wired-memory limit there, as mlx-lm does); on a CPU, bf16 matmuls are ~25x slower than float32,
so floating weights are cast to float32.
"""

from __future__ import annotations

import os
import platform

from mlxlora.backends.blas import blas_in_use, preload_openblas

preload_openblas()  # must precede the first `import mlx.core`

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from mlxlora.backends.base import BackendInfo, package_version  # noqa: E402

QUANTIZED = (nn.QuantizedLinear, nn.QuantizedEmbedding)


def select_device() -> tuple[str, mx.Dtype | None]:
    """(device name, compute dtype override). The one place that picks where MLX runs."""
    if mx.metal.is_available():
        mx.set_default_device(mx.gpu)
        return "gpu (Metal)", None
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        mx.set_default_device(mx.gpu)
        return "gpu (CUDA)", None
    mx.set_default_device(mx.cpu)
    # Depth-first evaluation holds less than MLX's default (a breadth-first frontier of 20) at
    # the same speed on a CPU (SmolLM2 4 x 1024 checkpointed: 2.12 against 2.32 GB, measured
    # with the loss chunks chained; memory.LOGIT_COPIES). MLX reads this once, at the
    # process's first evaluation; a width the user set is kept.
    os.environ.setdefault("MLX_BFS_MAX_WIDTH", "1")
    return "cpu", mx.float32


def dequantize_base(model: nn.Module, policy: str, device: str) -> bool:
    """Whether to turn a quantized base into float weights before adding LoRA.

    MLX's quantized matmul runs ~90x slower than an OpenBLAS float32 matmul on a CPU (2 vs
    200 GFLOP/s measured here), so `auto` dequantizes on a CPU when the float32 weights take
    at most half the memory budget; on a GPU it keeps the 4-bit base (QLoRA).
    """
    quantized = [m for _, m in model.named_modules() if isinstance(m, QUANTIZED)]
    if not quantized or policy == "keep":
        return False
    if policy == "dequantize":
        return True
    if device != "cpu":
        return False
    from mlxlora.machine import memory_budget

    budget = memory_budget()
    params = sum(v.size for _, v in tree_flatten(model.parameters()))
    packed = sum(m.weight.size * (32 // m.bits - 1) for m in quantized)  # uint32 -> values
    return budget is None or (params + packed) * 4 <= budget / 2


def fit_to_device(model: nn.Module, policy: str, device: str, dtype) -> nn.Module:
    """The model as it should compute on `device`: dequantized per `policy`, cast to `dtype`."""
    if dequantize_base(model, policy, device):
        from mlx_lm.utils import dequantize_model

        model = dequantize_model(model)
    model.set_dtype(dtype or half_dtype(model))
    return model


def half_dtype(model: nn.Module) -> mx.Dtype:
    """On a GPU: the model's half-precision dtype, if it has one, else float32.

    A converted GGUF keeps its norms in float32 beside float16 weights; left alone, each norm
    would promote the activations after it to float32 (twice the memory, slower kernels).
    """
    dtypes = {v.dtype for _, v in tree_flatten(model.parameters())}
    return next((d for d in (mx.bfloat16, mx.float16) if d in dtypes), mx.float32)


def describe() -> BackendInfo:
    device, dtype = select_device()
    gpu = mx.device_info() if "gpu" in device else {}
    # Metal: the working set macOS recommends for the GPU; CUDA: the card's memory
    budget = gpu.get("max_recommended_working_set_size") or gpu.get("total_memory")
    return BackendInfo(
        name="mlx",
        device=device,
        dtype="model dtype" if dtype is None else "float32",
        blas=blas_in_use() if device == "cpu" else "Metal/CUDA kernels",
        versions={
            "mlx": mx.__version__,
            "mlx-lm": package_version("mlx-lm"),
            "python": platform.python_version(),
        },
        memory_budget_bytes=budget,
        # how training keeps attention (memory.ATTENTION_MODES): the CPU's blocked attention,
        # else mx.fast's, unfused while differentiated (CUDA too: PAD_FOR_CUDNN_ATTENTION)
        attention="blocked" if device == "cpu" else "unfused",
        evaluation=evaluation_order(device),
    )


def evaluation_order(device: str) -> str:
    """How MLX evaluates a step here (memory.EVALUATIONS): depth-first where
    MLX_BFS_MAX_WIDTH is 1 (select_device sets it on a CPU), else breadth-first; on a GPU with
    kernels queued ahead of the device."""
    if os.environ.get("MLX_BFS_MAX_WIDTH") == "1":
        return "depth-first"
    return "breadth-first" if device == "cpu" else "gpu"
