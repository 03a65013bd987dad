"""Every common architecture trains with LoRA where it was asked for, through the real engine.

Each family is a tiny random model built by mlx-lm's own model class (2 layers, hidden 64),
saved as an HF-format directory with builtin:tiny's tokenizer, and trained for 3 steps. The
trainable parameter count is worked out by hand from the config's shapes: rank * (in + out)
per adapted linear layer per block, fused projections with their fused sizes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil

import pytest

from mlxlora import config, engine
from mlxlora.backends.select import torch_available
from mlxlora.errors import ModelError
from mlxlora.events import Eval, RunStarted, Step, read_events
from mlxlora.prepare import NO_CHAT_TEMPLATE
from mlxlora.targets import SHORT_NAMES

RANK = 4
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
COMMON = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}
# Per family: what its config needs beyond COMMON. head_dim 24 (not hidden / heads) where the
# family reads it, so a q/o projection whose in/out were swapped would change the count.
FAMILIES = {
    "llama": {"head_dim": 24},
    "mistral": {"head_dim": 24},
    "qwen2": {},
    "qwen3": {"head_dim": 24, "rope_theta": 1e6},
    "gemma": {"head_dim": 24},
    "gemma2": {"head_dim": 24, "query_pre_attn_scalar": 24},
    "gemma3_text": {
        "head_dim": 24,
        "query_pre_attn_scalar": 24,
        "sliding_window": 32,
        "sliding_window_pattern": 2,  # one local and one global layer
    },
    "phi3": {"tie_word_embeddings": False},
    "starcoder2": {"norm_epsilon": 1e-5},
}


def adapted_shapes(family: str, cfg: dict) -> list[tuple[int, int]]:
    """(in, out) of each linear layer that q/k/v/o/gate/up/down adapt in one block."""
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    if family == "phi3":  # qkv_proj, o_proj, gate_up_proj, down_proj
        return [(h, q + 2 * kv), (q, h), (h, 2 * inter), (inter, h)]
    attention = [(h, q), (h, kv), (h, kv), (q, h)]
    if family == "starcoder2":  # no gate: c_fc (up), c_proj (down)
        return attention + [(h, inter), (inter, h)]
    return attention + [(h, inter), (h, inter), (inter, h)]


def build_model(dest, family: str, built_tiny, chat_template: bool = True) -> dict:
    """An HF model directory: mlx-lm's own model class, random weights, builtin:tiny's tokenizer."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    vocab = json.loads((built_tiny / "config.json").read_text())["vocab_size"]
    cfg = {"model_type": family, **COMMON, "vocab_size": vocab, **FAMILIES[family]}
    dest.mkdir()
    (dest / "config.json").write_text(json.dumps(cfg))
    model_class, args_class = _get_classes(cfg)
    mx.random.seed(0)
    model = model_class(args_class.from_dict(cfg))
    mx.save_safetensors(str(dest / "model.safetensors"), dict(tree_flatten(model.parameters())))
    for name in TOKENIZER_FILES:
        shutil.copy(built_tiny / name, dest / name)
    if not chat_template:
        tok_cfg = json.loads((dest / "tokenizer_config.json").read_text())
        del tok_cfg["chat_template"]
        (dest / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return cfg


def train(model_dir, data, run_dir, targets=SHORT_NAMES, backend="mlx"):
    cfg = config.from_dict(
        {
            "name": "arch",
            "backend": backend,
            "model": str(model_dir),
            "data": {"dataset": str(data), "val_split": 0.1, "max_length": 64},
            "lora": {"rank": RANK, "alpha": 8, "target_modules": list(targets)},
            "training": {
                "learning_rate": 1e-2,
                "max_steps": 3,
                "eval_every": 3,
                "val_batches": 1,
                "batch_size": 2,
                "seed": 1,
            },
        }
    )
    engine.train(cfg, run_dir)
    return read_events(run_dir / "events.jsonl")


BACKENDS = [
    "mlx",
    pytest.param(
        "torch",
        marks=pytest.mark.skipif(not torch_available(), reason="pip install 'mlxlora[torch]'"),
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_every_requested_projection(
    family, backend, home, built_tiny, quickstart_data, tmp_path
):
    cfg = build_model(tmp_path / family, family, built_tiny)
    events = train(tmp_path / family, quickstart_data, tmp_path / "run", backend=backend)

    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.backend == backend
    per_block = sum(RANK * (n_in + n_out) for n_in, n_out in adapted_shapes(family, cfg))
    assert started.trainable_params == cfg["num_hidden_layers"] * per_block
    losses = [e.loss for e in events if isinstance(e, Step)]
    evals = [e.val_loss for e in events if isinstance(e, Eval)]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses + evals)
    assert len(evals) == 2 and evals[1] < evals[0]  # same validation batch: the adapter learned

    notes = [w for w in started.warnings if w.startswith("lora.target_modules")]
    if family == "phi3":
        assert notes == [
            "lora.target_modules mapped onto this model's modules: q_proj, k_proj, v_proj ->"
            " self_attn.qkv_proj; gate_proj, up_proj -> mlp.gate_up_proj"
        ]
    elif family == "starcoder2":
        assert notes[0].startswith("lora.target_modules: gate_proj not in this model, skipped")
        assert "up_proj -> mlp.c_fc; down_proj -> mlp.c_proj" in notes[1]
    else:
        assert notes == []
    adapter = json.loads((tmp_path / "run" / "adapters" / "adapter_config.json").read_text())
    assert len(adapter["lora_parameters"]["keys"]) == len(adapted_shapes(family, cfg))


def test_targets_matching_nothing_refuse_the_run(home, quickstart_data, tmp_path):
    with pytest.raises(ModelError) as err:
        train("builtin:tiny", quickstart_data, tmp_path / "run", targets=["lm_head", "w1"])
    assert str(err.value) == (
        "lora.target_modules lm_head, w1 match no layer of this model; its linear layers:"
        " mlp.down_proj, mlp.gate_proj, mlp.up_proj, self_attn.k_proj, self_attn.o_proj,"
        " self_attn.q_proj, self_attn.v_proj"
    )
    assert not (tmp_path / "run").exists()  # refused before a run directory is made


def test_model_without_chat_template_says_which_layout_it_trains(
    home, built_tiny, quickstart_data, tmp_path
):
    build_model(tmp_path / "plain", "llama", built_tiny, chat_template=False)
    events = train(tmp_path / "plain", quickstart_data, tmp_path / "run", targets=["q_proj"])
    started = next(e for e in events if isinstance(e, RunStarted))
    assert NO_CHAT_TEMPLATE in started.warnings
    assert "'assistant: ' + the answer + EOS" in NO_CHAT_TEMPLATE


def test_generation_prompts_a_template_less_model_the_way_it_trained(built_tiny, tmp_path):
    """Without a chat template, generation used to join the contents with blank lines while
    training used `role: content` lines: the tuned model was asked in a layout it never saw."""
    from mlx_lm.utils import load

    from mlxlora.backends.base import prompt_tokens
    from mlxlora.data.batching import encode

    build_model(tmp_path / "plain", "llama", built_tiny, chat_template=False)
    _, tokenizer = load(str(tmp_path / "plain"))
    chat = [{"role": "user", "content": "What is 2 plus 2?"}]
    trained = encode({"messages": [*chat, {"role": "assistant", "content": "4."}]}, tokenizer)
    assert prompt_tokens(tokenizer, chat) == list(trained.tokens[: trained.offset])
    if importlib.util.find_spec("transformers"):  # the torch generator's tokenizer: the same
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(tmp_path / "plain")
        assert prompt_tokens(hf, chat) == list(trained.tokens[: trained.offset])
