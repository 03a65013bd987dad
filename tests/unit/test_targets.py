"""Short LoRA target names mapped onto each architecture's real modules (no model needed).

The block paths below are what mlx-lm's model classes hold (tests/engine/test_architectures.py
trains the common families for real).
"""

from __future__ import annotations

import pytest

from mlxlora.errors import ModelError
from mlxlora.targets import SHORT_NAMES, match_targets

LLAMA = [f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")] + [
    f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")
]
BLOCKS = {
    "phi3": ["mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj", "self_attn.qkv_proj"],
    "starcoder2": [
        "mlp.c_fc",
        "mlp.c_proj",
        "self_attn.k_proj",
        "self_attn.o_proj",
        "self_attn.q_proj",
        "self_attn.v_proj",
    ],
    "phi": ["mlp.fc1", "mlp.fc2", "self_attn.dense", "self_attn.k_proj", "self_attn.q_proj"]
    + ["self_attn.v_proj"],
    "gpt2": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
    "gpt_neox": [
        "attention.dense",
        "attention.query_key_value",
        "mlp.dense_4h_to_h",
        "mlp.dense_h_to_4h",
    ],
    "internlm2": ["attention.wo", "attention.wqkv", "feed_forward.w1", "feed_forward.w2"]
    + ["feed_forward.w3"],
    "exaone": [
        "attn.attention.k_proj",
        "attn.attention.out_proj",
        "attn.attention.q_proj",
        "attn.attention.v_proj",
        "mlp.c_fc_0",
        "mlp.c_fc_1",
        "mlp.c_proj",
    ],
}
# What each short name adapts, in SHORT_NAMES order (None: the model has no such module).
EXPECTED = {
    "phi3": ["self_attn.qkv_proj"] * 3
    + ["self_attn.o_proj"]
    + ["mlp.gate_up_proj"] * 2
    + ["mlp.down_proj"],
    "starcoder2": [f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    + [None, "mlp.c_fc", "mlp.c_proj"],
    "phi": [f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "dense")]
    + [None, "mlp.fc1", "mlp.fc2"],
    "gpt2": ["attn.c_attn"] * 3 + ["attn.c_proj", None, "mlp.c_fc", "mlp.c_proj"],
    "gpt_neox": ["attention.query_key_value"] * 3
    + ["attention.dense", None, "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
    "internlm2": ["attention.wqkv"] * 3
    + ["attention.wo", "feed_forward.w1", "feed_forward.w3", "feed_forward.w2"],
    "exaone": [f"attn.attention.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
    + ["mlp.c_fc_0", "mlp.c_fc_1", "mlp.c_proj"],
}


@pytest.mark.parametrize("family", sorted(BLOCKS))
def test_each_short_name_finds_the_family_s_module(family):
    match = match_targets(list(SHORT_NAMES), BLOCKS[family])
    expected = dict(zip(SHORT_NAMES, EXPECTED[family], strict=True))
    for name, path in expected.items():
        assert match.adapted.get(name) == ([path] if path else None), name
    assert match.missing == [name for name, path in expected.items() if path is None]
    assert match.keys == sorted({p for p in EXPECTED[family] if p})


def test_llama_names_adapt_themselves_without_a_warning():
    match = match_targets(["q_proj", "v_proj"], LLAMA)
    assert match.keys == ["self_attn.q_proj", "self_attn.v_proj"]
    assert match.warnings() == []


def test_fused_and_missing_targets_are_reported():
    match = match_targets(["q_proj", "k_proj", "v_proj", "gate_proj", "down_proj"], BLOCKS["gpt2"])
    assert match.warnings() == [
        "lora.target_modules: gate_proj not in this model, skipped (its linear layers:"
        " attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)",
        "lora.target_modules mapped onto this model's modules: q_proj, k_proj, v_proj ->"
        " attn.c_attn; down_proj -> mlp.c_proj",
    ]


def test_a_model_s_own_names_match_by_last_name_or_path():
    assert match_targets(["qkv_proj"], BLOCKS["phi3"]).keys == ["self_attn.qkv_proj"]
    assert match_targets(["c_proj"], BLOCKS["gpt2"]).keys == ["attn.c_proj", "mlp.c_proj"]
    assert match_targets(["mlp.c_proj"], BLOCKS["gpt2"]).keys == ["mlp.c_proj"]
    assert match_targets(["qkv_proj"], BLOCKS["phi3"]).warnings() == []


def test_targets_matching_nothing_are_refused_naming_the_model_s_layers():
    with pytest.raises(ModelError) as err:
        match_targets(["gate_proj", "lm_head"], BLOCKS["gpt2"])
    assert str(err.value) == (
        "lora.target_modules gate_proj, lm_head match no layer of this model; its linear"
        " layers: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj"
    )
