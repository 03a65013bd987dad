"""The bytes a model's weights and its LoRA layers take, planned before anything loads:
as the files hold them, as a backend keeps them on a device (dequantized, half precision,
float32), and as a run then counts them (its LoRA layers' among them). `info` as in memory.py.
Imports no mlx or torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlxlora import machine

if TYPE_CHECKING:
    from mlxlora.memory import TrainShape


def model_dims(info: dict) -> tuple[int, int, int, int, int, int, int]:
    """(hidden, layers, vocab, heads, kv width, q width, intermediate) of `info`."""
    h = int(info["hidden_size"])
    heads = int(info["num_attention_heads"])
    kv_heads = int(info.get("num_key_value_heads") or heads)
    head_dim = int(info.get("head_dim") or h // heads)
    return (
        h,
        int(info["num_hidden_layers"]),
        int(info["vocab_size"]),
        heads,
        kv_heads * head_dim,
        heads * head_dim,
        int(info["intermediate_size"]),
    )


def lora_shapes(info: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of each adaptable projection."""
    h, _, _, _, kv, q, inter = model_dims(info)
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }


def weight_bytes(info: dict, dtype_bytes: int, bits: int | None = None) -> int:
    """Resident weights: measured tensor bytes when known, else from params and quantization."""
    quant = info.get("quantization") or {}
    if bits is None and info.get("weight_bytes"):
        return int(info["weight_bytes"])
    bits = bits or quant.get("bits")
    params = int(info["params"])
    if not bits:
        return params * dtype_bytes
    group = quant.get("group_size") or 64
    return int(params * bits / 8 + params / group * 2 * dtype_bytes)  # + a scale and bias per group


def planned_weights(info: dict, quantized_base: str, on_cpu: bool, backend: str = "mlx") -> int:
    """Bytes the weights will take once loaded, before loading: float32 on a CPU unless a
    quantized base is kept (the MLX backend dequantizes there); on a GPU half precision for
    a quantized base dequantized, else what the files hold. A bitsandbytes base stays
    quantized whatever the policy: backend torch, the one that loads it, trains it as QLoRA.
    Backend torch trains an MLX-quantized base from a float copy (torch_peft.transformers_dir):
    dequantized, whatever the policy."""
    if (info.get("quantization") or {}).get("method") == "bitsandbytes":
        return weight_bytes(info, 4 if on_cpu else 2)
    if backend == "torch":
        quantized_base = "dequantize"
    if on_cpu and not (quantized_base == "keep" and info.get("quantization")):
        return int(info["params"]) * 4
    if quantized_base == "dequantize" and info.get("quantization"):
        return int(info["params"]) * 2
    return weight_bytes(info, 4 if on_cpu else 2)


def weights_here(
    info: dict,
    shape: TrainShape | None = None,
    *,
    quantized_base: str = "auto",
    backend: str = "auto",
    device=None,
) -> int:
    """planned_weights for `backend` on `device` (a machine.TrainingDevice; by default
    `auto`'s, whose backend doctor names), and with `shape` its LoRA layers'
    (lora_weight_bytes): the weights as that run counts them once loaded."""
    device = device or machine.training_device()
    backend = device.backend if backend == "auto" else backend
    lora = lora_weight_bytes(info, shape) if shape else 0
    return planned_weights(info, quantized_base, device.on_cpu, backend) + lora


def lora_param_count(info: dict, rank: int, targets, lora_layers: int) -> int:
    """Trainable parameters of LoRA at `rank` on `targets` in the last `lora_layers` (-1: all)."""
    layers = model_dims(info)[1]
    adapted = layers if lora_layers < 0 else min(lora_layers, layers)
    shapes = lora_shapes(info)
    # A model's own module name (qkv_proj) has no shape here; LoRA weights are tiny anyway.
    return adapted * sum(rank * sum(shapes.get(t, ())) for t in targets)


def lora_weight_bytes(info: dict, shape: TrainShape) -> int:
    """The LoRA layers' weights (float32 on both backends, whatever the base's dtype). Once
    loaded they are among the model's parameters, which a run counts as its weights
    (Backend.weight_bytes) and which the estimate's factors were measured with: an estimate
    made before loading adds them to the planned weights to say what the run will say."""
    return 4 * lora_param_count(info, shape.lora_rank, shape.lora_targets, shape.lora_layers)
