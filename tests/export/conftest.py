"""A trained builtin:tiny run shared by the export tests, and MLX's logits to compare against."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

# English and Japanese, with digits, punctuation, runs of spaces and a chat turn's tokens
TEXTS = (
    "What is the capital of France? Paris, since 987 AD.",
    "  two  spaces\tand a tab\nnew line",
    "日本の首都は東京です。富士山は3776メートル。",
    "<|im_start|>user\nこんにちは<|im_end|>\n<|im_start|>assistant\n",
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]


def train_tiny(home, run, data, model="builtin:tiny", steps=4):
    from mlxlora import config, engine

    cfg = config.from_dict(
        {
            "name": "export",
            "model": model,
            "data": {"dataset": str(data), "val_split": 0.1, "max_length": 64},
            "lora": {"rank": 4, "alpha": 16, "target_modules": TARGETS},
            "training": {"learning_rate": 2e-2, "max_steps": steps, "batch_size": 2, "seed": 1},
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLXLORA_HOME", str(home))
        engine.train(cfg, run)
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, built_tiny, quickstart_data):
    """(workspace, run): builtin:tiny trained 4 steps with LoRA on q, k, v, o, gate, down."""
    from mlxlora.models.builtin import BUILTIN_TINY_VERSION

    home = tmp_path_factory.mktemp("export-home")
    shutil.copytree(built_tiny, home / "models" / f"builtin-tiny-v{BUILTIN_TINY_VERSION}")
    return home, train_tiny(home, home / "runs" / "tuned", quickstart_data)


@pytest.fixture
def in_tiny_home(tiny_run, monkeypatch):
    """The tiny run's workspace as MLXLORA_HOME; returns the run directory."""
    monkeypatch.setenv("MLXLORA_HOME", str(tiny_run[0]))
    return tiny_run[1]


def mlx_logits(model_dir, ids, adapter=None) -> np.ndarray:
    """MLX's float32 logits for every position of `ids` (mlx-lm's loader, with the adapter)."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.utils import load

    model, _ = load(str(model_dir), adapter_path=str(adapter) if adapter else None)
    model.update(tree_map(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating)
                          else p, model.parameters()))  # fmt: skip
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def hf_tokenizer(model_dir):
    """The tokenizer mlx-lm (and so training and `mlxlora generate`) uses."""
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(model_dir)
