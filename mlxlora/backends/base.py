"""The small interface every training backend implements. The engine only talks to this."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlxlora.errors import ModelError

# Tokens that end an assistant turn in common chat templates. mlx-lm stops at the tokenizer's
# eos_token_ids; a GGUF-converted or base tokenizer may name `<|endoftext|>` as EOS while the
# chat template closes turns with `<|im_end|>` (SmolLM2, Qwen), so those count as well.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


# Model types whose logits are exactly head(decoder(x)), optionally soft-capped: both backends
# compute their loss in chunks of rows through the head instead of materialising every logit.
CHUNKABLE_TYPES = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "smollm3",
}


def prompt_tokens(tokenizer, messages: list[dict], raw: bool = False) -> list[int]:
    """Token ids for a generation prompt, the same on both backends: the chat template with the
    assistant turn opened; for a tokenizer without a template the plain layout training uses;
    raw: the contents as text. `tokenizer`: an HF tokenizer or mlx-lm's wrapper of one."""
    if raw:
        return list(tokenizer.encode("\n\n".join(m["content"] for m in messages)))
    templated = getattr(tokenizer, "has_chat_template", None)  # mlx-lm's wrapper says
    if templated if templated is not None else getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)  # transformers 5
    from mlxlora.data.batching import plain_prompt

    return list(tokenizer.encode(plain_prompt(messages), add_special_tokens=False))


def check_request(max_tokens: int, temperature: float) -> None:
    """A generation request both generators accept, or a one-line error."""
    if max_tokens < 1:
        raise ModelError(f"max_tokens must be at least 1 (got {max_tokens})")
    if temperature < 0:
        raise ModelError(f"temperature must be 0 (greedy) or more (got {temperature})")


def uncut(piece: str, finish_reason: str | None) -> str:
    """The last piece of an answer without the replacement characters its token limit left
    where it cut a character's bytes (every other Japanese answer cut short ended in "�");
    other pieces as they are."""
    return piece.rstrip("\ufffd") if finish_reason == "length" else piece


class Generator:
    """What both backends' generators share: the prompt, the answer streamed piece by piece
    with its stats, the whole answer. A backend's generator holds `model` and `tokenizer` and
    supplies `_stream_text` (its decoding loop)."""

    def prompt_tokens(self, messages: list[dict], raw: bool = False) -> list[int]:
        return prompt_tokens(self.tokenizer, messages, raw)

    def stream(
        self,
        messages: list[dict],
        max_tokens: int = 100,
        raw: bool = False,
        temperature: float = 0.0,
        seed: int = 0,
    ):
        """The continuation's new text piece by piece (greedy at temperature 0, else sampled
        with `seed`), up to end of turn or `max_tokens` new tokens; `last_stats` holds the
        counts, speed and new token ids once it is done."""
        check_request(max_tokens, temperature)
        prompt = prompt_tokens(self.tokenizer, messages, raw)
        self.last_stats = {"prompt_tokens": len(prompt), "generation_tokens": 0, "tokens": []}
        for piece, stats in self._stream_text(prompt, max_tokens, temperature, seed):
            self.last_stats = stats
            yield piece

    def generate(self, messages: list[dict], max_tokens: int = 100, **options) -> str:
        """The continuation up to end of turn or `max_tokens` new tokens, new text only;
        `options`: stream's raw, temperature, seed."""
        return "".join(self.stream(messages, max_tokens, **options))

    def _stream_text(self, prompt: list[int], max_tokens: int, temperature: float, seed: int):
        raise NotImplementedError


def package_version(dist: str) -> str:
    """An installed distribution's version, for doctor and the run summary."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@dataclass
class Batch:
    """One micro-batch, host side. `loss_mask[b, t]`: does target `tokens[b, t + 1]` count."""

    tokens: np.ndarray  # (B, T) int32, right-padded
    loss_mask: np.ndarray  # (B, T - 1) bool
    real_tokens: int  # non-padding tokens in the batch

    @property
    def label_tokens(self) -> int:
        return int(self.loss_mask.sum())

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.tokens.size


@dataclass
class BackendInfo:
    name: str
    device: str
    dtype: str
    blas: str
    versions: dict[str, str]
    memory_budget_bytes: int | None  # what training may use on this device, if known
    attention: str = "unfused"  # how training keeps attention (memory.ATTENTION_MODES)
    pad_multiple: int = 1  # the backend pads a batch's positions to a multiple of this
    evaluation: str = "gpu"  # how a step is evaluated, which decides its peak (memory.EVALUATIONS)


class Reading(Protocol):
    """A number the device may still be computing (a step's loss or gradient norm on a
    GPU): float() waits for it. The engine reads a step's once the next step is queued, so
    that the device computes while the host waits (trainer.finish_pending)."""

    def __float__(self) -> float: ...


class Backend(Protocol):
    """Loads a model with LoRA layers and runs forward/backward/update on host batches."""

    info: BackendInfo
    tokenizer: Any  # HF-style: encode(), apply_chat_template(), eos_token_id
    lora_targets: Any  # targets.TargetMatch: what load() adapted for lora.target_modules

    def load(self, model_dir: Path, config: Any) -> None: ...

    def weight_bytes(self) -> int:
        """Bytes the loaded weights occupy on the device, as they will train."""
        ...

    def param_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        ...

    def accumulate(self, batch: Batch, seed: int) -> float | Reading:
        """Forward and backward on one micro-batch; add the gradient of its summed loss; return
        its mean loss (a Reading where the device may still be computing it)."""
        ...

    def limit_memory(self, budget: int) -> None:
        """Keep the framework's own allocations and caches within `budget` bytes, where the
        device lets us (a GPU)."""
        ...

    def update(self, lr: float, grad_clip: float) -> float | Reading:
        """Apply the accumulated gradient, averaged over every labelled token of the step (so
        the micro-batch size does not change it); return its norm (a float or a Reading)."""
        ...

    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        """(summed loss, label tokens) without gradients."""
        ...

    def generate(self, messages: list[dict], max_tokens: int) -> str:
        """Greedy answer of the model as it stands (adapter included)."""
        ...

    def save_adapter(self, directory: Path) -> None: ...

    def save_state(self, directory: Path) -> None:
        """Adapter weights plus optimizer state, enough to resume exactly."""
        ...

    def load_state(self, directory: Path) -> None:
        """The adapter and optimizer state of a checkpoint; CheckpointUnreadable where its
        files are damaged or missing."""
        ...

    def peak_memory_bytes(self) -> int: ...

    def reset_peak_memory(self) -> None: ...
