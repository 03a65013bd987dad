"""Fewer kernels for the torch backend's step: PEFT's LoRA linear layers through one autograd
function each, and RMSNorms through torch's one-operator rms_norm (written here: PEFT and torch
have no fused LoRA linear; Unsloth's and Liger's kernels are Triton, CUDA only, and patch
models' classes).

The 1B-shape step on an H100 was bound by the host: the GPU computed about half the step and
waited on Python for the rest (some 5,000 kernel launches a step, stop 22's profile). PEFT's
forward runs each adapted layer as four modules and ~7 autograd nodes: the base product, the
LoRA input's cast, two products, the scaling, the sum; ~17 kernels with backward. Here the same
arithmetic is 12 kernels and one node: the scaling rides on B's cast, the base and LoRA
products share one output (addmm) in both directions, and backward is written out. The
parameters, their names and the files they save to stay PEFT's; the products run in the base's
precision, as `torch_peft.half_precision_forward` asks of PEFT's own forward. Each layer is
changed on the instance (its `forward`), never the class, and only where it computes what the
replacement computes.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


class _LoRALinear(torch.autograd.Function):
    """y = x W^T + bias + scale * (dropout(x) A^T) B^T for a frozen W and bias; gradients for
    x, A and B (A and B in float32, as the optimizer keeps them)."""

    @staticmethod
    def forward(ctx, x, dropped, weight, bias, lora_a, lora_b, scale):
        dtype = weight.dtype
        lora_in = x if dropped is None else dropped
        a = lora_a.to(dtype)
        b = torch.mul(lora_b, scale, out=torch.empty_like(lora_b, dtype=dtype))  # one kernel
        x2, in2 = x.reshape(-1, x.shape[-1]), lora_in.reshape(-1, x.shape[-1])
        xa = in2 @ a.t()
        y = F.linear(x2, weight, bias).addmm_(xa, b.t())
        ctx.save_for_backward(in2, weight, a, b, xa)
        ctx.scale, ctx.x_shape, ctx.has_dropout = scale, x.shape, dropped is not None
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        lora_in, weight, a, b, xa = ctx.saved_tensors
        dy = dy.reshape(-1, dy.shape[-1])
        dxa = dy @ b
        grad_b = torch.mul(dy.t() @ xa, ctx.scale, out=torch.empty(b.shape, device=b.device))
        grad_a = (dxa.t() @ lora_in).float()
        dx = dropped = None
        if ctx.needs_input_grad[1]:  # the LoRA branch's input gradient, back through dropout
            dropped = (dxa @ a).view(ctx.x_shape)
        if ctx.needs_input_grad[0]:  # not for the first block's input, which nothing trains
            dx = dy @ weight
            if not ctx.has_dropout:
                dx = dx.addmm_(dxa, a)
            dx = dx.view(ctx.x_shape)
        return dx, dropped, None, None, grad_a, grad_b, None


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The forward of a PEFT Linear with one plain LoRA adapter; PEFT's own for anything else
    it can be asked (merged or disabled adapters, per-row adapters)."""
    if args or kwargs or self.merged or self.disable_adapters or self.active_adapters != [ADAPTER]:
        return type(self).forward(self, x, *args, **kwargs)
    base, dropout = self.base_layer, self.lora_dropout[ADAPTER]
    live = isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0
    dropped = dropout(x) if live else None
    return _LoRALinear.apply(
        x.to(base.weight.dtype),
        dropped if dropped is None else dropped.to(base.weight.dtype),
        base.weight,
        base.bias,
        self.lora_A[ADAPTER].weight,
        self.lora_B[ADAPTER].weight,
        self.scaling[ADAPTER],
    )


ADAPTER = "default"  # the one adapter torch_peft.add_lora makes


def fuse_lora(model) -> int:
    """Gives each plain LoRA layer on an nn.Linear base (not 4-bit, not DoRA, no LoRA bias) the
    fused forward; returns how many it gave it to."""
    from peft.tuners.lora.layer import Linear

    fused = 0
    for module in model.modules():
        plain = (
            isinstance(module, Linear)
            and type(module.base_layer) is nn.Linear
            and ADAPTER in module.lora_A
            and not module.lora_variant
            and not module.lora_bias.get(ADAPTER)
            and isinstance(module.lora_dropout[ADAPTER], nn.Dropout | nn.Identity)
        )
        if plain:
            module.forward = types.MethodType(_fused_forward, module)
            fused += 1
    return fused


def _rms_norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The norm in the input's precision (computed in float32 inside the kernel, as
    transformers' form computes it), kept out of autocast, whose lists may run it in float32."""
    with torch.autocast(x.device.type, enabled=False):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.variance_epsilon)


def fuse_rms_norms(model) -> int:
    """Gives each RMSNorm that computes what torch's rms_norm computes (Llama's form: checked
    on a probe, so Gemma's `1 + weight` keeps its own) torch's one-operator norm, fused into
    a kernel each way on CUDA where transformers' form launches ~8 forward and ~12 backward
    (two norms a block); returns how many it gave it to."""
    fused = 0
    for module in model.modules():
        weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
        if not type(module).__name__.endswith("RMSNorm") or weight is None or eps is None:
            continue
        probe = torch.randn(4, weight.shape[-1], generator=torch.Generator().manual_seed(0))
        probe = probe.to(weight.device, weight.dtype)
        with torch.no_grad():
            own, torch_s = module(probe).float(), _rms_norm_forward(module, probe).float()
        if torch.allclose(own, torch_s, rtol=2e-2, atol=1e-3):
            module.forward = types.MethodType(_rms_norm_forward, module)
            fused += 1
    return fused
