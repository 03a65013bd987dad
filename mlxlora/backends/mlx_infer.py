"""Inference with MLX: greedy chat generation and perplexity, optionally through a LoRA adapter.

The device is chosen by `mlxlora.backends.mlx_device.select_device` (the one place that decides); on
a CPU floating weights are cast to float32 as in training, so a trained adapter sees the same
numbers it was trained with.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

from mlxlora.backends.blas import preload_openblas

preload_openblas()  # must precede the first `import mlx.core`

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402

from mlxlora.backends.base import END_OF_TURN, Generator, uncut  # noqa: E402
from mlxlora.backends.mlx_device import fit_to_device, select_device  # noqa: E402
from mlxlora.errors import ModelError  # noqa: E402
from mlxlora.models.info import refuse_bitsandbytes_in_mlx  # noqa: E402


def add_end_of_turn_tokens(tokenizer) -> None:
    """Make generation stop at whichever END_OF_TURN tokens this vocabulary has."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for token in END_OF_TURN:
        if token in vocab:
            tokenizer.add_eos_token(token)


def stream_text(
    model, tokenizer, prompt: list[int], max_tokens: int, temperature: float = 0.0, seed: int = 0
) -> Iterator[tuple[str, dict]]:
    """The continuation of `prompt` up to end of turn or max_tokens, greedy (temperature 0) or
    sampled with `seed`, piece by piece as the detokenizer completes them: (new text piece,
    stats so far; `tokens`: the new token ids, the stop token left out)."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    if temperature > 0:  # greedy leaves MLX's global generator (training's dropout) alone
        mx.random.seed(seed)
    tokens = []
    for response in stream_generate(
        model, tokenizer, prompt, max_tokens=max_tokens, sampler=make_sampler(temp=temperature)
    ):
        if response.finish_reason != "stop":  # the closing response of a stop holds its token
            tokens.append(response.token)
        yield (
            uncut(response.text, response.finish_reason),
            {
                "prompt_tokens": response.prompt_tokens,
                "generation_tokens": response.generation_tokens,
                "generation_tps": response.generation_tps,
                "finish_reason": response.finish_reason,
                "tokens": tokens,
            },
        )


def generate_text(model, tokenizer, prompt: list[int], max_tokens: int) -> tuple[str, dict]:
    """Greedy continuation of `prompt` up to end of turn or max_tokens: (new text, stats)."""
    pieces = []
    stats = {"prompt_tokens": len(prompt), "generation_tokens": 0}
    for piece, now in stream_text(model, tokenizer, prompt, max_tokens):
        pieces.append(piece)
        stats = now
    return "".join(pieces), stats


class MLXGenerator(Generator):
    """A model (plus adapter) loaded once; `generate` and `perplexity` as many times as needed."""

    def __init__(self, model_dir: Path, adapter_dir: Path | None = None):
        from mlx_lm.utils import load

        self.device, dtype = select_device()
        refuse_bitsandbytes_in_mlx(model_dir)
        try:
            model, tokenizer = load(
                str(model_dir), adapter_path=str(adapter_dir) if adapter_dir else None
            )
        except (FileNotFoundError, ValueError) as exc:
            what = f"{model_dir} with adapter {adapter_dir}" if adapter_dir else str(model_dir)
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"cannot load {what}: {first}") from None
        model = fit_to_device(model, "auto", self.device, dtype)
        model.eval()
        self.model, self.tokenizer = model, tokenizer
        add_end_of_turn_tokens(tokenizer)

    def _stream_text(self, prompt: list[int], max_tokens: int, temperature: float, seed: int):
        return stream_text(self.model, self.tokenizer, prompt, max_tokens, temperature, seed)

    def eval_loss(self, batch) -> tuple[float, int]:
        """(summed cross-entropy over the batch's labelled targets, their count): the
        training backend's validation loss, computed from full logits (no training head)."""
        tokens = mx.array(batch.tokens)
        logits = self.model(tokens[:, :-1]).astype(mx.float32)
        losses = nn.losses.cross_entropy(logits, tokens[:, 1:], reduction="none")
        total = (losses * mx.array(batch.loss_mask)).sum()
        mx.eval(total)
        return total.item(), batch.label_tokens

    def perplexity(self, text: str) -> float:
        """exp(mean next-token cross-entropy) of `text`, every token after the first scored."""
        ids = list(self.tokenizer.encode(text))
        if len(ids) < 2:
            raise ModelError("perplexity needs a text of at least two tokens")
        tokens = mx.array([ids])
        logits = self.model(tokens[:, :-1]).astype(mx.float32)
        loss = nn.losses.cross_entropy(logits, tokens[:, 1:], reduction="mean")
        mx.eval(loss)
        return math.exp(loss.item())
