"""The MLX backend's loss: cross-entropy over labelled rows, one chunk of the output
projection at a time.

Full-vocabulary logits are the largest tensor of a LoRA step (4 x 1024 x 151,936 float32 =
2.5 GB). Only labelled rows go through the output projection, in chunks of `rows` rows, and in
training each chunk's loss and its gradient with respect to the hidden states are made in the
forward pass (fused_cross_entropy), so no chunk's logits wait for the backward pass. How many
chunks MLX still holds at once depends on the order it evaluates the lazy graph in (see
memory.loss_bytes and mlx_device.select_device).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxlora.backends.base import CHUNKABLE_TYPES


def output_head(model: nn.Module, model_type: str):
    """A function hidden -> logits equal to the model's own, or None when it cannot be split."""
    if model_type not in CHUNKABLE_TYPES or not hasattr(model, "model"):
        return None
    head = model.lm_head if "lm_head" in model else model.model.embed_tokens.as_linear
    cap = getattr(model, "final_logit_softcapping", None) if model_type == "gemma2" else None
    if cap:
        return lambda h: mx.tanh(head(h) / cap) * cap
    return head


def fused_cross_entropy(
    head, hidden: mx.array, targets: mx.array, weights: mx.array | None = None
) -> mx.array:
    """Summed cross-entropy of head(hidden) against targets (each row times its weight, if
    given), with its gradient made in forward.

    Autograd (or mx.checkpoint) would keep or recompute the (rows x vocab) logits for the
    backward pass and take exp over them three times; on a CPU that exp, not the matmul, is
    the cost. Here the forward pass computes the softmax once, turns it into d(loss)/d(hidden)
    (rows x hidden, small) and drops the logits; the backward pass only scales that gradient.
    MLX has no fused cross-entropy for this, hence the custom function. One function per
    chunk: one function over all chunks held every chunk's arrays until its end (measured:
    16 chunks held 28-32 chunk-sized arrays against 12-18 with a function per chunk).
    """

    @mx.custom_function
    def loss_and_grad(h):
        logits = head(h).astype(mx.float32)
        index = targets[:, None]
        losses = mx.logsumexp(logits, axis=-1) - mx.take_along_axis(logits, index, axis=-1)[:, 0]
        probs = mx.softmax(logits, axis=-1, precise=True)
        dlogits = mx.put_along_axis(
            probs, index, mx.take_along_axis(probs, index, axis=-1) - 1.0, axis=-1
        )
        if weights is not None:
            losses, dlogits = losses * weights, dlogits * weights[:, None]
        loss = losses.sum()
        _, (dh,) = mx.vjp(head, [h], [dlogits.astype(h.dtype)])
        return loss, dh

    @loss_and_grad.vjp
    def _(primals, cotangents, outputs):
        return (cotangents[0] * outputs[1],)

    return loss_and_grad(hidden)[0]


def chunked_cross_entropy_for_training(
    head, hidden: mx.array, targets: mx.array, rows: int, weights: mx.array | None = None
) -> mx.array:
    """Summed cross-entropy, a fused loss-and-gradient function per chunk of `rows` rows.

    The chunks are independent, so MLX's breadth-first order (a GPU's) computes several side
    by side. Chaining them (each chunk's input waiting for the loss so far) kept 3.5 live on a
    CPU, but on an H200 (CUDA) it lowered no peak (Qwen2.5-0.5B shape: 24.9 GB chained, 23.4
    unchained) and the 1B shape's step failed in cudaGraphInstantiate (out of memory) where it
    had run unchained: so they stay independent, and memory.loss_bytes counts them that way."""
    total = mx.array(0.0)
    for start in range(0, hidden.shape[0], rows):
        chunk = slice(start, start + rows)
        chunk_weights = None if weights is None else weights[chunk]
        total = total + fused_cross_entropy(head, hidden[chunk], targets[chunk], chunk_weights)
    return total


def chunked_cross_entropy(head, hidden: mx.array, targets: mx.array, rows: int) -> mx.array:
    """Summed cross-entropy without gradients (evaluation), one chunk evaluated at a time."""
    total = mx.array(0.0)
    for start in range(0, hidden.shape[0], rows):
        logits = head(hidden[start : start + rows]).astype(mx.float32)
        total = total + nn.losses.cross_entropy(
            logits, targets[start : start + rows], reduction="sum"
        )
        mx.eval(total)
    return total
