"""Helpers of the export tests: training a run, MLX's logits, the HF tokenizer."""

from __future__ import annotations

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


def train_run(home, run, data, model="builtin:tiny", steps=4, learning_rate=2e-2, backend="mlx"):
    """A few steps of LoRA on q, k, v, o, gate and down (rank 4, alpha 16), in workspace `home`."""
    from mlxlora import config, engine

    cfg = config.from_dict(
        {
            "name": "export",
            "model": model,
            "backend": backend,
            "data": {"dataset": str(data), "val_split": 0.1, "max_length": 64},
            "lora": {"rank": 4, "alpha": 16, "target_modules": TARGETS},
            "training": {
                "learning_rate": learning_rate,
                "max_steps": steps,
                "batch_size": 2,
                "seed": 1,
            },
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLXLORA_HOME", str(home))
        engine.train(cfg, run)
    return run


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


def family_model(dest, family, built_tiny):
    """A tiny random model of `family` (mlx-lm's own class) with builtin:tiny's tokenizer."""
    from engine.test_architectures import build_model

    build_model(dest, family, built_tiny)
    return dest


def build_spm_llama(dest, built_tiny):
    import json

    import sentencepiece as spm

    from mlxlora.models.builtin import corpus_lines

    family_model(dest, "llama", built_tiny)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (dest / name).unlink()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_prefix=str(dest / "tokenizer"),
        vocab_size=1024, model_type="bpe", byte_fallback=True, character_coverage=0.9995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
        remove_extra_whitespaces=False, normalization_rule_name="identity",  # as Llama 2's
        split_digits=True, allow_whitespace_only_pieces=True,
    )  # fmt: skip
    (dest / "tokenizer.vocab").unlink()
    (dest / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "chat_template": "{% for m in messages %}[INST] {{ m['content'] }} [/INST]"
                "{% endfor %}",
            }
        )
    )
    config = json.loads((dest / "config.json").read_text())
    config.update(bos_token_id=1, eos_token_id=2)  # 1536 embedding rows: padded vocabulary
    (dest / "config.json").write_text(json.dumps(config))
    return dest
