"""How the MLX backend's training attention runs: on a CPU through blocked causal attention
(MLX has no fused kernel there); on CUDA through cuDNN's fused kernels where batches are
padded for them (mlx.PAD_FOR_CUDNN_ATTENTION, off: the padded step ran out of an H100's memory).

Metal and CUDA keep mx.fast.scaled_dot_product_attention. Metal differentiates its unfused
fallback; CUDA uses cuDNN's fused backward for lengths that are a multiple of
CUDA_ATTENTION_TILE (MLX 0.32) and otherwise recomputes the unfused attention, whose
probabilities of every layer were live at once on an H200 (the estimate's 0.6x then).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxlora.memory import ATTENTION_BLOCK

# With mlx.PAD_FOR_CUDNN_ATTENTION, CUDA batches are padded to a multiple of this many positions
# where cuDNN's attention applies:
# unlabelled positions after the last token, which causal attention keeps out of every real
# position's result.
CUDA_ATTENTION_TILE = 128


def blocked_causal_attention(queries, keys, values, scale: float, block: int = ATTENTION_BLOCK):
    """softmax(q k^T * scale + causal mask) v, one block of query rows at a time.

    On a CPU, mx.fast.scaled_dot_product_attention falls back to plain ops over the full
    (len x len) scores, masked half included; the exp of the softmax over those scores is the
    single largest cost of a training step (MLX's CPU exp is scalar). A block of queries
    [s, e) only needs keys [0, e): the masked upper triangle is never computed, exp'd or kept
    for the backward pass, which halves attention time and the saved probabilities. Grouped
    query heads are folded into the rows so each block is one matmul per kv head. Same
    result as the fused kernel (to float32 rounding).
    """
    B, H, L, D = queries.shape
    kv_heads = keys.shape[1]
    rep = H // kv_heads
    q = (queries * scale).reshape(B, kv_heads, rep, L, D)
    outs = []
    for s in range(0, L, block):
        e = min(L, s + block)
        rows = q[:, :, :, s:e].reshape(B, kv_heads, rep * (e - s), D)
        scores = rows @ keys[:, :, :e].swapaxes(-1, -2)
        seen = mx.arange(e)[None, :] <= mx.tile(mx.arange(s, e), (rep,))[:, None]
        scores = mx.where(seen, scores, mx.array(-mx.inf, scores.dtype))
        probs = mx.softmax(scores, axis=-1, precise=True)
        outs.append((probs @ values[:, :, :e]).reshape(B, kv_heads, rep, e - s, D))
    return mx.concatenate(outs, axis=3).reshape(B, H, L, D)


def use_blocked_attention(model: nn.Module) -> bool:
    """CPU only (decided in MLXBackend.load next to select_device): route the model's causal,
    cache-free attention (training and eval forward passes) through blocked_causal_attention.
    Anything else (generation with a KV cache, array masks, sinks) keeps mlx-lm's function.
    Patches the `scaled_dot_product_attention` name of the model's own mlx-lm module, once."""
    import sys

    module = sys.modules.get(type(model).__module__)
    original = getattr(module, "scaled_dot_product_attention", None)
    if original is None:
        return False
    if getattr(original, "_mlxlora_blocked", False):
        return True

    def attention(queries, keys, values, cache, scale, mask, sinks=None):
        if (
            cache is None
            and sinks is None
            and isinstance(mask, str)
            and mask == "causal"
            and queries.shape[-2] == keys.shape[-2] > ATTENTION_BLOCK
            and queries.shape[1] % keys.shape[1] == 0
        ):
            return blocked_causal_attention(queries, keys, values, scale)
        return original(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)

    attention._mlxlora_blocked = True
    module.scaled_dot_product_attention = attention
    return True


def takes_cudnn_attention(model: nn.Module, model_config: dict) -> bool:
    """Whether MLX's CUDA build trains this model's attention with cuDNN's fused kernels once
    lengths are multiples of CUDA_ATTENTION_TILE (MLX 0.32's supports_sdpa_cudnn): the model
    calls mx.fast's attention (mlx-lm's scaled_dot_product_attention; gemma2 computes its
    own), in half precision, with heads of a multiple of 8 up to 128 wide, on a card of compute
    capability 8 (Ampere) or later."""
    import sys

    from mlx.utils import tree_flatten

    module = sys.modules.get(type(model).__module__)
    text = {**model_config, **model_config.get("text_config", {})}
    heads = text.get("num_attention_heads") or 0
    head_dim = text.get("head_dim") or (text.get("hidden_size", 0) // heads if heads else 0)
    dtypes = {v.dtype for _, v in tree_flatten(model.parameters())}
    return (
        getattr(module, "scaled_dot_product_attention", None) is not None
        and bool(dtypes & {mx.bfloat16, mx.float16})
        and 0 < head_dim <= 128
        and head_dim % 8 == 0
        and mx.device_info().get("compute_capability_major", 0) >= 8
    )
