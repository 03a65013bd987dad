"""Causal attention for training on a CPU, where MLX has no fused attention kernel.

Used by the MLX backend only when select_device() chose the CPU; Metal and CUDA keep
mx.fast.scaled_dot_product_attention.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxlora.memory import ATTENTION_BLOCK


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
