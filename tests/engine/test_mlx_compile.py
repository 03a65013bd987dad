"""training.compile on the MLX backend: the mx.compile'd loss and gradient (batches padded to a
multiple of COMPILE_BUCKET positions, unlabelled rows weighted 0) trains as the uncompiled step
does, on builtin:tiny on the CPU (MLX builds its fused kernels with the C++ compiler)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mlx_lm")

from mlxlora import config  # noqa: E402
from mlxlora.models.resolve import resolve_model  # noqa: E402
from tests.conftest import random_batches  # noqa: E402


def train(compiled, dropout: float = 0.0, checkpoint: bool = False) -> list[float]:
    """Losses and gradient norms of 3 steps of 2 micro-batches (AdamW with weight decay)."""
    from mlxlora.backends.mlx import MLXBackend

    cfg = config.from_dict(
        {
            "model": "builtin:tiny",
            "data": {"dataset": "unused.jsonl"},
            "lora": {"rank": 8, "alpha": 16, "dropout": dropout},
            "training": {"compile": compiled, "grad_checkpoint": checkpoint, "weight_decay": 0.01},
        }
    )
    backend = MLXBackend()
    backend.load(resolve_model("builtin:tiny", progress=False), cfg)
    assert (backend._compiled is not None) == (compiled is True)  # auto: not on a CPU
    data, out = random_batches(3, rows=3), []
    for step in range(3):
        for micro in range(2):
            out.append(backend.accumulate(data[(step + micro) % 3], seed=step * 64 + micro))
        out.append(backend.update(5e-3, 0.5))
    return out


@pytest.mark.parametrize("checkpoint", [False, True])
def test_compiled_steps_equal_uncompiled_ones(home, checkpoint):
    plain, compiled = train(False, checkpoint=checkpoint), train(True, checkpoint=checkpoint)
    np.testing.assert_allclose(compiled, plain, rtol=1e-4)
    assert plain[-3] < plain[0] - 0.3  # it learned: the steps were not no-ops


def test_compiled_dropout_is_the_same_for_the_same_seed(home):
    """Padding changes dropout's mask shapes, so masks differ from an uncompiled run's, but a
    resumed run redraws the same masks: the same seeds give the same steps."""
    first, second = train(True, dropout=0.1), train(True, dropout=0.1)
    assert first == second


def test_auto_stays_eager_until_a_gpu_measures_compiling(home, monkeypatch):
    """training.compile: auto (the default) leaves the step uncompiled on a CPU (MLX would
    first build its kernels with the C++ compiler) and on a GPU too: no GPU has yet timed the
    compiled step (an H100 lease ran out before it, 2026-11-26)."""
    from mlxlora.backends import mlx as mlx_backend
    from mlxlora.backends import mlx_device

    def loaded():
        cfg = config.from_dict({"model": "builtin:tiny", "data": {"dataset": "unused.jsonl"}})
        backend = mlx_backend.MLXBackend()
        backend.load(resolve_model("builtin:tiny", progress=False), cfg)
        return backend

    assert loaded()._compiled is None
    monkeypatch.setattr(mlx_device, "select_device", lambda: ("gpu (Metal)", None))
    assert loaded()._compiled is None
