"""Inference with transformers + PEFT: chat generation and perplexity through a run's adapter,
behind the same interface as `mlx_infer.MLXGenerator` (a host without MLX can try its runs).

The prompt is built by the same function as on MLX (base.prompt_tokens), generation stops at
the same tokens (the model's and tokenizer's EOS plus base.END_OF_TURN) and reports the same
stats as mlx-lm's stream_generate: the stop token counts in `generation_tokens` but is not
shown, `finish_reason` is "stop" or "length". Device and dtype are the training backend's
(bf16 on CUDA, float32 on a CPU).
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

from mlxlora.adapters_convert import CONFIG, MLX_WEIGHTS, adapted_modules, mlx_to_peft
from mlxlora.backends import torch_peft
from mlxlora.backends.base import END_OF_TURN, Generator, uncut
from mlxlora.errors import ModelError


def stop_token_ids(model, tokenizer) -> set[int]:
    """Where a turn ends: the ids mlx-lm stops at (the config's and tokenizer's EOS) and the
    END_OF_TURN tokens this vocabulary has."""
    configured = model.generation_config.eos_token_id
    stops = set(configured if isinstance(configured, list) else [configured])
    stops.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    stops.update(vocab[t] for t in END_OF_TURN if t in vocab)
    return stops - {None}


def cache_argument(model) -> str:
    """The name of the KV cache in the forward's arguments and outputs (transformers 5.2x
    renamed `past_key_values` to `cache`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def next_tokens(
    model, prompt: list[int], max_tokens: int, temperature: float, seed: int
) -> Iterator[int]:
    """Up to `max_tokens` new token ids, one forward pass each through the KV cache: the
    argmax at temperature 0, else drawn from softmax(logits / temperature) seeded by `seed`.

    Written here rather than through transformers' `generate`: that streams only through a
    callback (a thread to turn it into an iterator), and this yields each id as it is picked.
    """
    device = next(model.parameters()).device
    draw = torch.Generator(device).manual_seed(seed) if temperature > 0 else None
    inputs, cache, cache_name = torch.tensor([prompt], device=device), None, cache_argument(model)
    with torch.no_grad(), torch_peft.varying_length_attention():
        for _ in range(max_tokens):
            out = model(input_ids=inputs, use_cache=True, logits_to_keep=1, **{cache_name: cache})
            cache, logits = out[cache_name], out.logits[0, -1].float()
            if draw is None:
                token = int(logits.argmax())
            else:
                probs = F.softmax(logits / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=draw))
            yield token
            inputs = torch.tensor([[token]], device=device)


def stream_text(
    model, tokenizer, prompt: list[int], max_tokens: int, temperature: float = 0.0, seed: int = 0
) -> Iterator[tuple[str, dict]]:
    """(new text piece, stats so far) per new token until a stop token or max_tokens, with
    stats shaped as mlx_infer.stream_text's; a piece is "" while a character is incomplete."""
    from tokenizers.decoders import DecodeStream

    stops = stop_token_ids(model, tokenizer)
    decoder = DecodeStream(skip_special_tokens=False)  # what mlx-lm's detokenizers show
    stats = {"prompt_tokens": len(prompt), "generation_tokens": 0, "finish_reason": None}
    stats["tokens"], stats["generation_tps"] = [], 0.0
    start, pending = None, []  # pending: tokens of a character not complete yet
    trim = trims_first_space(tokenizer)
    for count, token in enumerate(next_tokens(model, prompt, max_tokens, temperature, seed), 1):
        start = start or time.perf_counter()  # speed after the prompt, as mlx-lm measures it
        stats["generation_tokens"] = count
        stats["generation_tps"] = count / max(time.perf_counter() - start, 1e-9)
        if token in stops:
            stats["finish_reason"] = "stop"
            break
        stats["tokens"].append(token)
        piece = decoder.step(tokenizer.backend_tokenizer, token)
        pending = [] if piece is not None else [*pending, token]
        if count == max_tokens:
            stats["finish_reason"] = "length"
            piece = uncut((piece or "") + flush(tokenizer, pending), "length")
        if piece and trim:
            piece, trim = piece.removeprefix(" "), False
        yield piece or "", dict(stats)
    if stats["finish_reason"] == "stop":
        piece = flush(tokenizer, pending)
        yield piece.removeprefix(" ") if trim else piece, dict(stats)


def trims_first_space(tokenizer) -> bool:
    """Whether mlx-lm shows this tokenizer's answers without their leading space: its byte-level
    BPE detokenizer drops it (`Ġword` first), HF's decoder keeps it. SentencePiece decoders
    drop it on both sides already."""
    from tokenizers.decoders import ByteLevel

    return isinstance(tokenizer.backend_tokenizer.decoder, ByteLevel)


def flush(tokenizer, pending: list[int]) -> str:
    """The text of tokens left incomplete at the end, replacement characters included (as
    mlx-lm's detokenizers finalize)."""
    return tokenizer.decode(pending, skip_special_tokens=False) if pending else ""


def load_adapter(model, adapter_dir: Path):
    """The PeftModel of `model` with the adapter in `adapter_dir` (mlx-lm's layout, which
    every run's adapter has, whichever backend trained it)."""
    try:
        config = json.loads((adapter_dir / CONFIG).read_text())["lora_parameters"]
        weights = load_file(str(adapter_dir / MLX_WEIGHTS))
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"{adapter_dir}: cannot read the adapter: {exc}") from None
    modules = adapted_modules(mlx_to_peft(weights))
    rank = config["rank"]
    try:
        peft_model = torch_peft.add_lora(model, modules, rank, config["scale"] * rank, 0.0)
    except ValueError as exc:  # PEFT: a module the adapter names is not in this model
        first = (str(exc).splitlines() or ["does not fit"])[0]
        raise ModelError(f"{adapter_dir}: the adapter does not fit this model: {first}") from None
    torch_peft.load_mlx_weights(peft_model, weights)
    return peft_model


class TorchGenerator(Generator):
    """A model (plus adapter) loaded once; `generate` and `perplexity` as many times as needed."""

    def __init__(self, model_dir: Path, adapter_dir: Path | None = None):
        device, dtype = torch_peft.select_device()
        self.device = str(device)
        model, self.tokenizer = torch_peft.load_base(Path(model_dir), device, dtype)
        if adapter_dir is not None:
            model = load_adapter(model, Path(adapter_dir))
        self.model = model.eval()

    def _stream_text(self, prompt: list[int], max_tokens: int, temperature: float, seed: int):
        return stream_text(self.model, self.tokenizer, prompt, max_tokens, temperature, seed)

    def _summed_loss(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(input_ids=tokens[:, :-1]).logits.float()
        losses = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        return (losses if mask is None else losses * mask).sum()

    def eval_loss(self, batch) -> tuple[float, int]:
        """(summed cross-entropy over the batch's labelled targets, their count), from full
        logits, as MLXGenerator.eval_loss."""
        tokens = torch.from_numpy(batch.tokens.astype("int64")).to(self.model.device)
        mask = torch.from_numpy(batch.loss_mask).to(self.model.device)
        return self._summed_loss(tokens, mask).item(), batch.label_tokens

    def perplexity(self, text: str) -> float:
        """exp(mean next-token cross-entropy) of `text`, every token after the first scored."""
        ids = list(self.tokenizer.encode(text))
        if len(ids) < 2:
            raise ModelError("perplexity needs a text of at least two tokens")
        tokens = torch.tensor([ids], device=self.model.device)
        return math.exp(self._summed_loss(tokens, None).item() / (len(ids) - 1))
