"""Tokenizing records and cutting batches: the loss covers exactly the answer, order is
reproducible from (seed, epoch), padding stays small."""

from __future__ import annotations

import numpy as np
import pytest

from mlxlora.data import batching


@pytest.fixture
def tokenizer(home):
    from transformers import AutoTokenizer

    from mlxlora.models.resolve import resolve_model

    return AutoTokenizer.from_pretrained(str(resolve_model("builtin:tiny")))


def chat(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def test_loss_mask_covers_the_answer_only(tokenizer):
    ex = batching.encode(chat("What is the capital of Peru?", "Lima."), tokenizer)
    learned = tokenizer.decode(list(ex.tokens[ex.offset :]))
    assert learned.startswith("Lima.<|im_end|>")
    assert "Peru" in tokenizer.decode(list(ex.tokens[: ex.offset]))
    other = batching.encode(chat("Hi", "Hello there, friend."), tokenizer)
    batch = batching.collate([ex, other])
    targets = batch.tokens[0, 1:][batch.loss_mask[0]]
    assert list(targets) == list(ex.tokens[ex.offset :])
    assert batch.real_tokens == len(ex.tokens) + len(other.tokens)
    everything = batching.encode(chat("Q?", "A."), tokenizer, completions_only=False)
    assert everything.offset == 0


def test_text_records_learn_every_token_and_end_with_eos(tokenizer):
    ex = batching.encode({"text": "plain text"}, tokenizer)
    assert ex.offset == 0 and ex.tokens[-1] == tokenizer.eos_token_id


def test_truncation_and_records_without_answer_room(tokenizer):
    long_answer = chat("Q?", "word " * 200)
    long_prompt = chat("word " * 200, "A.")
    examples, truncated, dropped = batching.encode_all([long_answer, long_prompt], tokenizer, 32)
    assert (truncated, dropped) == (2, 1)
    assert len(examples) == 1 and len(examples[0].tokens) == 32 and examples[0].truncated


def test_order_is_reproducible_and_padding_small():
    rng = np.random.default_rng(0)
    examples = [batching.Example(tuple(range(int(n))), 1) for n in rng.integers(5, 200, 101)]
    first = batching.batch_order(examples, 4, seed=1, epoch=0)
    assert first == batching.batch_order(examples, 4, seed=1, epoch=0)
    assert first != batching.batch_order(examples, 4, seed=1, epoch=1)
    assert sorted(i for b in first for i in b) == list(range(101))  # every record, once
    real = total = 0
    for idx in first:
        batch = batching.collate([examples[i] for i in idx])
        real, total = real + batch.real_tokens, total + batch.tokens.size
    assert 1 - real / total < 0.10


def test_split_is_deterministic_and_disjoint():
    records = list(range(50))
    train, val = batching.split(records, 0.1, seed=3)
    assert (train, val) == batching.split(records, 0.1, seed=3)
    assert len(val) == 5 and not set(train) & set(val) and len(train) + len(val) == 50


def test_a_record_past_the_models_context_is_truncated_without_transformers_alarm(tokenizer):
    """transformers warned that such a record "will result in indexing errors"; it is cut
    to max_length and the run says so itself."""
    import logging

    class Heard(logging.Handler):
        said: list[str] = []

        def emit(self, record):
            self.said.append(record.getMessage())

    logger, heard = logging.getLogger("transformers.tokenization_utils_base"), Heard()
    logger.addHandler(heard)
    level = logger.level
    logger.setLevel(logging.WARNING)  # the CLI's tests leave transformers' loggers quieter
    try:
        long = "word " * (tokenizer.model_max_length + 10)
        for record in (chat("Q?", long), {"text": long}):
            (ex,), truncated, _ = batching.encode_all([record], tokenizer, 64)
            assert len(ex.tokens) == 64 and truncated == 1
        assert batching.encode_all([chat(long, "A.")], tokenizer, 64)[2] == 1  # a long prompt
        assert heard.said == []
        tokenizer.encode(long)  # the alarm the handler hears, as it did from encode_all
    finally:
        logger.removeHandler(heard)
        logger.setLevel(level)
    assert len(heard.said) == 1 and "indexing errors" in heard.said[0]
