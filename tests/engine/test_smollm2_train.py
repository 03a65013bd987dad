"""LoRA on the real pretrained SmolLM2-135M-Instruct: validation loss falls on the bundled data."""

from __future__ import annotations

import pytest

from mlxlora import config, engine
from mlxlora.events import Eval, Sample, Step, read_events

pytestmark = pytest.mark.smollm2


def test_lora_lowers_validation_loss_and_changes_the_answer(
    home, smollm2, quickstart_data, tmp_path
):
    _, model_dir = smollm2
    cfg = config.load(
        quickstart_data.parents[2] / "configs" / "quickstart.yaml",
        ["training.max_steps=8", "training.eval_every=8", "samples=['What is 30 plus 12?']"],
    )
    cfg.model = str(model_dir)
    summary = engine.train(cfg, tmp_path / "run")
    events = read_events(tmp_path / "run" / "events.jsonl")
    evals = [e for e in events if isinstance(e, Eval)]
    assert [e.step for e in evals] == [0, 8]
    base, tuned = evals[0].val_loss, evals[-1].val_loss
    print(f"\nSmolLM2 val loss {base:.3f} -> {tuned:.3f}")
    assert base < 5.0  # a trained model, not a random one (ln 49152 = 10.8)
    assert tuned < base * 0.7
    steps = [e for e in events if isinstance(e, Step)]
    rate = sum(e.tokens for e in steps) / sum(e.tokens / e.tokens_per_sec for e in steps)
    print(f"{rate:.0f} tokens/s, peak {summary['peak_memory_gb']} GB")
    before, after = [e.answer for e in events if isinstance(e, Sample)]
    assert before != after


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
