"""The torch backend's loss: cross-entropy over labelled rows, one chunk of the output
projection at a time, each chunk's gradient made in its forward pass (as mlx_loss does).

Keeping a chunk's (rows x vocab) logits for backward is what the chunks avoid; recomputing them
there (torch.utils.checkpoint, what this backend did) runs the output projection three times per
chunk (forward, again in backward, and its gradient) and the softmax twice. Making
d(loss)/d(hidden) (rows x hidden, small) in the forward pass runs the projection twice and the
softmax once. On the Qwen2.5-0.5B shape that projection (896 x 151,936) is about a third of a
LoRA step's arithmetic. torch has no fused linear cross-entropy (Liger's is a Triton kernel,
CUDA only), hence the autograd.Function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _ChunkLoss(torch.autograd.Function):
    """Summed cross-entropy of `softcap`-capped `hidden @ weight.T` against `targets`; the
    weight is the frozen output projection (LoRA never adapts it), so only hidden gets a
    gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap):
        logits = F.linear(hidden, weight).float()
        slope = None
        if softcap:
            logits = torch.tanh(logits / softcap)
            slope = 1 - logits.square()  # d(capped)/d(raw logits), before scaling back
            logits.mul_(softcap)
        lse = torch.logsumexp(logits, dim=-1)
        loss = (lse - logits.gather(1, targets[:, None])[:, 0]).sum()
        dlogits = logits.sub_(lse[:, None]).exp_()  # the softmax, in the logits' memory
        dlogits.scatter_add_(1, targets[:, None], dlogits.new_full((len(targets), 1), -1.0))
        if slope is not None:
            dlogits.mul_(slope)
        ctx.save_for_backward((dlogits.to(weight.dtype) @ weight).to(hidden.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad):
        (dhidden,) = ctx.saved_tensors
        return dhidden * grad.to(dhidden.dtype), None, None, None


def chunked_cross_entropy(
    head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, rows: int, softcap=None
) -> torch.Tensor:
    """Summed cross-entropy of head(hidden) against targets, `rows` rows at a time: with
    gradients (each chunk's made in its forward) when hidden needs one, else loss only."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), rows):
        h, t = hidden[start : start + rows], targets[start : start + rows]
        if hidden.requires_grad and torch.is_grad_enabled():
            total = total + _ChunkLoss.apply(h, head.weight, t, softcap)
            continue
        logits = head(h).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        total = total + F.cross_entropy(logits, t, reduction="sum")
    return total
