"""The model shapes the benchmarks share, and random-weight models of them built with mlx-lm.

Issue 12's workload names two real architectures (Llama-3.2-1B and Qwen2.5-0.5B); their configs
live here once, in HF's config.json keys, for the torch benchmark (transformers builds them) and
the MLX ones (mlx-lm's model classes build them). No weights are downloaded: the weights are
random (seed 0), which is all a throughput or memory measurement needs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

LLAMA_3_2_1B = {
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": True,
}
QWEN2_5_0_5B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}


def random_model(cfg: dict, dest: Path, dtype: str = "float32") -> Path:
    """An HF-format directory (config.json, model.safetensors, builtin:tiny's tokenizer files)
    holding mlx-lm's model of `cfg` with its own random init (seed 0), saved in `dtype`."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    from mlxlora.models.resolve import resolve_model

    dest.mkdir(parents=True)
    (dest / "config.json").write_text(json.dumps({**cfg, "torch_dtype": dtype}, indent=2))
    model_class, args_class = _get_classes(cfg)
    mx.random.seed(0)
    model = model_class(args_class.from_dict(cfg))
    model.set_dtype(getattr(mx, dtype))
    mx.save_safetensors(
        str(dest / "model.safetensors"),
        dict(tree_flatten(model.parameters())),
        metadata={"format": "pt"},
    )
    tiny = resolve_model("builtin:tiny", progress=False)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny / name).exists():
            shutil.copy(tiny / name, dest / name)
    return dest
