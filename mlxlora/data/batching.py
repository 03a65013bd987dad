"""Tokenize normalized records and cut them into length-bucketed batches.

Records arrive normalized (`{"messages": [...]}` or `{"text": ...}`, see formats.normalize). A
chat record is rendered with the tokenizer's chat template; with `completions_only` the loss
covers only the last assistant turn (the prompt is everything the model sees before it).

Batches group records of similar length so that padding stays small; the batch order, and which
equal-length neighbours share a batch, is drawn from (seed, epoch) alone, so a resumed run sees
exactly the data order an uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlxlora.backends.base import Batch


@dataclass(frozen=True)
class Example:
    tokens: tuple[int, ...]
    offset: int  # first token index that is a training target
    truncated: bool = False


def _render_chat(tokenizer, messages: list[dict]) -> tuple[str, str]:
    """(prompt text, full text) for a chat; the prompt ends where the last answer begins."""
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = tokenizer.apply_chat_template(
            messages[:-1], tokenize=False, add_generation_prompt=True
        )
        return prompt, full
    prompt = plain_prompt(messages[:-1])
    eos = getattr(tokenizer, "eos_token", None) or ""
    return prompt, prompt + " " + messages[-1]["content"] + eos


def plain_prompt(messages: list[dict]) -> str:
    """The layout for a model without a chat template: `role: content` lines, then the
    assistant turn opened. Training and generation both use it, so a tuned model is prompted
    the way it learned. It ends at the colon: the space belongs to the answer's first token
    (byte-level BPE merges it there), so the prompt's tokens are a prefix of the full text's."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def encode(record: dict, tokenizer, completions_only: bool = True) -> Example:
    """Token ids and loss offset for one normalized record. Not verbose: transformers warns
    that a record past the model's context "will result in indexing errors", where
    encode_all truncates it and the run says so."""
    if "text" in record:
        ids = list(tokenizer.encode(record["text"], verbose=False))
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        return Example(tuple(ids), 0)
    prompt, full = _render_chat(tokenizer, record["messages"])
    ids = tokenizer.encode(full, add_special_tokens=False, verbose=False)
    offset = 0
    if completions_only:
        offset = len(tokenizer.encode(prompt, add_special_tokens=False, verbose=False))
    return Example(tuple(ids), min(offset, len(ids) - 1))


def encode_all(
    records: list[dict], tokenizer, max_length: int, completions_only: bool = True
) -> tuple[list[Example], int, int]:
    """Encode and truncate to max_length. Returns (examples, truncated, dropped).

    A record whose prompt alone fills max_length has nothing left to learn from and is dropped.
    """
    examples, truncated, dropped = [], 0, 0
    for record in records:
        ex = encode(record, tokenizer, completions_only)
        if len(ex.tokens) > max_length:
            truncated += 1
            if ex.offset >= max_length - 1:
                dropped += 1
                continue
            ex = Example(ex.tokens[:max_length], ex.offset, truncated=True)
        if len(ex.tokens) < 2:
            dropped += 1
            continue
        examples.append(ex)
    return examples, truncated, dropped


def batch_order(examples: list[Example], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices of each batch: sorted by length (ties broken at random), batches shuffled."""
    rng = np.random.default_rng([seed, epoch])
    lengths = np.array([len(e.tokens) for e in examples])
    order = np.lexsort((rng.random(len(examples)), lengths))
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(examples: list[Example]) -> Batch:
    """Right-pad a group of examples into a Batch with its loss mask."""
    # Pad to the longest member only: the step is not compiled, so odd shapes cost nothing,
    # and rounding up (mlx-lm pads to 32k+1) is most of the padding on short records.
    width = max(len(e.tokens) for e in examples)
    tokens = np.zeros((len(examples), width), dtype=np.int32)
    mask = np.zeros((len(examples), width - 1), dtype=bool)
    for row, ex in enumerate(examples):
        n = len(ex.tokens)
        tokens[row, :n] = ex.tokens
        # target t + 1 is learned when offset <= t + 1 < n
        mask[row, max(ex.offset - 1, 0) : n - 1] = True
    real = sum(len(e.tokens) for e in examples)
    return Batch(tokens=tokens, loss_mask=mask, real_tokens=real)


def micro_batches_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)


def validation_count(n_records: int, fraction: float) -> int:
    """How many of `n_records` `split` sets aside: at least one when asked for."""
    if fraction <= 0 or n_records < 2:
        return 0
    return max(1, round(n_records * fraction))


def split(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train/validation split; at least one validation record when asked for."""
    n_val = validation_count(len(records), fraction)
    if not n_val:
        return list(records), []
    rng = np.random.default_rng([seed, 7919])
    order = rng.permutation(len(records))
    val_idx = set(order[:n_val].tolist())
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val
