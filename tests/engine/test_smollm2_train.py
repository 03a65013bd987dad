"""The real pretrained SmolLM2-135M-Instruct on both backends (its training on the bundled
data: test_quickstart_showcase)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.smollm2


def test_the_embedded_model_trains_on_torch_as_on_mlx(home, smollm2, quickstart_data):
    """On a CUDA host `backend: auto` picks torch, and the quick start's model is MLX-quantized
    weights converted from a GGUF, which transformers cannot load: torch trains the float twin
    converted from the same GGUF. Its loss equals MLX's (which dequantizes on a CPU)."""
    pytest.importorskip("peft")
    from mlxlora.backends.mlx import MLXBackend
    from mlxlora.backends.torch import TorchBackend
    from tests.conftest import random_batches
    from tests.engine.test_train import make_config

    _, model_dir = smollm2
    cfg = make_config(quickstart_data, f"model={model_dir}")
    batch = random_batches(1, rows=3)[0]
    losses = []
    for backend in (MLXBackend(), TorchBackend()):
        backend.load(model_dir, cfg)
        loss_sum, tokens = backend.eval_loss(batch)
        losses.append(loss_sum / tokens)
    print(f"\nloss on random tokens: MLX {losses[0]:.5f}, torch {losses[1]:.5f}")
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
