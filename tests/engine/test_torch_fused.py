"""The torch backend's fused RMSNorms (backends/torch_fused.py) against transformers' own
forward on builtin:tiny: the same loss and gradients; a norm of another form keeps its own."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("peft")

from mlxlora.models.resolve import resolve_model  # noqa: E402
from tests.conftest import random_batches  # noqa: E402
from tests.engine.test_torch_backend import ALL_TARGETS  # noqa: E402
from tests.engine.test_train import make_config  # noqa: E402


def loaded_backend(quickstart_data, *overrides):
    """A torch backend on builtin:tiny whose LoRA B is not zero (at init every A gets no
    gradient, which would leave half the comparison empty)."""
    import torch

    from mlxlora.backends.torch import TorchBackend

    backend = TorchBackend()
    backend.load(
        resolve_model("builtin:tiny", progress=False), make_config(quickstart_data, *overrides)
    )
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for p in backend._trainable:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return backend


def own_forward(model) -> None:
    """Each fused norm back on its class's forward."""
    for module in model.modules():
        vars(module).pop("forward", None)


def loss_and_grads(backend, batch, seed=1):
    loss = backend.accumulate(batch, seed=seed)
    grads = [p.grad.detach().clone().numpy() for p in backend._trainable]
    backend.optimizer.zero_grad(set_to_none=True)
    backend._labelled = 0
    return loss, grads


def test_fused_norms_give_transformers_loss_and_gradients(home, quickstart_data):
    from mlxlora.backends import torch_peft

    backend = loaded_backend(quickstart_data, ALL_TARGETS)
    fused = sum(vars(m).get("forward") is not None for m in backend.model.modules())
    assert fused == 2 * len(torch_peft.blocks(backend.model.base_model.model)) + 1  # and final
    batch = random_batches(1, rows=3)[0]
    fused_loss, fused_grads = loss_and_grads(backend, batch)
    own_forward(backend.model)
    loss, grads = loss_and_grads(backend, batch)
    assert fused_loss == pytest.approx(loss, rel=1e-6)
    assert min(np.abs(g).max() for g in grads) > 1e-4  # every LoRA matrix has a gradient
    for fused_grad, grad in zip(fused_grads, grads, strict=True):
        np.testing.assert_allclose(fused_grad, grad, rtol=1e-4, atol=1e-5 * np.abs(grad).max())


def test_only_norms_of_llama_s_form_take_torch_s_rms_norm():
    """Gemma-style norms scale by 1 + weight: the probe keeps them on their own forward."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from mlxlora.backends.torch_fused import fuse_rms_norms

    class ZeroCenteredRMSNorm(LlamaRMSNorm):
        def forward(self, x):
            x = x.float()
            return (
                x
                * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
                * (1 + self.weight)
            )

    torch.manual_seed(0)
    norms = torch.nn.ModuleList([LlamaRMSNorm(16), ZeroCenteredRMSNorm(16)])
    with torch.no_grad():
        for norm in norms:
            norm.weight.normal_()
    x = torch.randn(3, 16)
    before = [norm(x) for norm in norms]
    assert fuse_rms_norms(norms) == 1
    assert "forward" in vars(norms[0]) and "forward" not in vars(norms[1])
    for norm, expected in zip(norms, before, strict=True):
        torch.testing.assert_close(norm(x), expected)
