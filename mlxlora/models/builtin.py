"""`builtin:tiny`: a small llama model with a real tokenizer, built locally in a second.

It lets every command, test and tutorial level run with no network: a normal HF-format model
directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with a ChatML
template) that mlx-lm, transformers and our own resolver load like any downloaded model. The
weights are random (fixed seed), so it learns quickly but knows nothing to begin with.

Imports no mlx or torch: numpy, safetensors and tokenizers only.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

# Bump when anything below changes the bytes written; the resolver caches per version.
BUILTIN_TINY_VERSION = 2

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
VOCAB_SIZE = 1536  # 3 special + 256 byte symbols + ~1277 merges of the bundled corpus
SEED = 1234

ARCH = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
}

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus_lines() -> list[str]:
    """The bundled English + Japanese corpus the tokenizer is trained on."""
    text = resources.files("mlxlora.models").joinpath("tiny_corpus.json").read_text("utf-8")
    return json.loads(text)["lines"]


def train_tokenizer():
    """A byte-level BPE trained on the bundled corpus (returns a `tokenizers.Tokenizer`).

    Deterministic: the BPE trainer orders candidate merges by (count, pair ids), so ties never
    depend on hash-map order or on how many threads count pairs; we checked identical bytes
    across runs with RAYON_NUM_THREADS=1 and 16 and test it on every build. We train rather
    than ship a tokenizer.json so the corpus stays the one source; a future `tokenizers` whose
    trainer changed could change the merges, which is why the resolver caches the built model
    once (per BUILTIN_TINY_VERSION) instead of rebuilding it under an existing run.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    return tok


def _weights(cfg: dict) -> dict[str, np.ndarray]:
    """HF llama tensor names, normal(0, 0.02) projections, unit norms, fixed seed."""
    rng = np.random.default_rng(SEED)
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head_dim

    def normal(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    # The embedding is also the (tied) output head. With std 0.02 its logits span only about
    # +-2.6, which caps how confident any adapter can make the model (loss stays near 6.8);
    # 0.05 still starts near ln(vocab) but lets LoRA on a random model visibly learn.
    w = {"model.embed_tokens.weight": normal(cfg["vocab_size"], h, std=0.05)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = normal(h, h)
        w[p + "self_attn.k_proj.weight"] = normal(kv, h)
        w[p + "self_attn.v_proj.weight"] = normal(kv, h)
        w[p + "self_attn.o_proj.weight"] = normal(h, h)
        w[p + "mlp.gate_proj.weight"] = normal(inter, h)
        w[p + "mlp.up_proj.weight"] = normal(inter, h)
        w[p + "mlp.down_proj.weight"] = normal(h, inter)
        w[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
    w["model.norm.weight"] = np.ones(h, np.float32)
    return w


def _dump(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny(dest: Path) -> Path:
    """Write the builtin tiny model into `dest` (created if needed) and return `dest`."""
    from safetensors.numpy import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **ARCH,
        "head_dim": ARCH["hidden_size"] // ARCH["num_attention_heads"],
        "vocab_size": tok.get_vocab_size(),
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": pad,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
        "mlxlora_builtin": f"tiny-v{BUILTIN_TINY_VERSION}",
    }
    _dump(dest / "config.json", config)
    save_file(_weights(config), str(dest / "model.safetensors"), metadata={"format": "pt"})

    (dest / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    _dump(
        dest / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": {
                str(i): {
                    "content": t,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for t, i in sorted(ids.items(), key=lambda kv: kv[1])
            },
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 4096,
            "chat_template": CHATML_TEMPLATE,
        },
    )
    _dump(
        dest / "special_tokens_map.json",
        {
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
        },
    )
    _dump(
        dest / "generation_config.json",
        {"bos_token_id": pad, "eos_token_id": [eos, pad], "pad_token_id": pad, "do_sample": False},
    )
    return dest
