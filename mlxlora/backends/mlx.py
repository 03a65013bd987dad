"""The MLX backend: mlx-lm's models and LoRA layers, driven one micro-batch at a time.

Where it runs and in which dtype is mlx_device's (`select_device`, the one place that picks).
"""

from __future__ import annotations

import json
from pathlib import Path

from mlxlora.backends.blas import preload_openblas

preload_openblas()  # must precede the first `import mlx.core`

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten, tree_map, tree_unflatten  # noqa: E402

from mlxlora.backends import mlx_device, mlx_dist  # noqa: E402
from mlxlora.backends.base import Batch  # noqa: E402
from mlxlora.backends.mlx_attention import (  # noqa: E402
    CUDA_ATTENTION_TILE,
    takes_cudnn_attention,
    use_blocked_attention,
)
from mlxlora.backends.mlx_loss import (  # noqa: E402
    chunked_cross_entropy,
    chunked_cross_entropy_for_training,
    output_head,
)
from mlxlora.errors import CheckpointUnreadable, ModelError  # noqa: E402
from mlxlora.memory import loss_chunk_rows  # noqa: E402
from mlxlora.models.info import gguf_source, refuse_bitsandbytes_in_mlx  # noqa: E402
from mlxlora.targets import TargetMatch, match_targets  # noqa: E402

COMPILE_BUCKET = 64  # training.compile pads batches to a multiple of this many positions
# Padding CUDA batches to CUDA_ATTENTION_TILE so that cuDNN's fused attention trains them: off.
# On an H100 (2026-11-26) the padded Qwen2.5-0.5B-shape step ran out of the card's 80 GB and the
# 1B shape's 20 steps did not end in two minutes, where the unpadded step had peaked at 23 and
# 29 GB on an H200. The benchmark's mlxlora-tiled side turns it on to measure it again.
PAD_FOR_CUDNN_ATTENTION = False


def _save_safetensors(path: Path, arrays: dict) -> None:
    """mx.save_safetensors through a Python file: a full disk raises OSError(ENOSPC), which the
    engine reports as one, where mlx's own writer raises a bare RuntimeError or, on some
    files, nothing at all (a checkpoint cut short but taken for whole)."""
    with open(path, "wb") as f:
        mx.save_safetensors(f, arrays)


def lora_keys(layers: list[nn.Module], targets: list[str]) -> TargetMatch:
    """The linear layers of `layers` (the adapted blocks) that `targets` name (see targets.py)."""
    linear = {
        name
        for layer in layers
        for name, module in layer.named_modules()
        if isinstance(module, (nn.Linear, nn.QuantizedLinear))
    }
    return match_targets(targets, sorted(linear))


def checkpoint_layers(layers) -> None:
    """Recompute each block's activations in the backward pass (less memory, ~30% more time).

    mlx-lm's grad_checkpoint patches the block class itself, which leaks into every model of
    the process; a per-model subclass keeps it to these instances and parameter names intact.
    """
    base = type(layers[0])

    def call(self, *args, **kwargs):
        def inner(params, *args, **kwargs):
            self.update(params)
            return base.__call__(self, *args, **kwargs)

        return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

    checkpointed = type(f"Checkpointed{base.__name__}", (base,), {"__call__": call})
    for layer in layers:
        layer.__class__ = checkpointed


class MLXBackend:
    """Backend implementation for MLX (see backends/base.py for the contract)."""

    def __init__(self):
        self.group = mlx_dist.group()
        self.info = mlx_device.describe()
        self.info.device += mlx_dist.describe(self.group)
        self.model = None
        self.tokenizer = None
        self.optimizer = None
        self._grads = None
        self._labelled = 0  # labelled tokens in the gradients accumulated so far

    # --- setup ------------------------------------------------------------------------

    def load(self, model_dir: Path, config) -> None:
        from mlx_lm.tuner.utils import linear_to_lora_layers
        from mlx_lm.utils import load, maybe_set_recommended_wired_limit

        device, dtype = mlx_device.select_device()
        if device.startswith("gpu"):
            maybe_set_recommended_wired_limit()
        refuse_bitsandbytes_in_mlx(model_dir)
        try:
            model, tokenizer, model_config = load(str(model_dir), return_config=True)
        except (FileNotFoundError, ValueError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"{model_dir}: cannot load model: {first}") from None
        model = mlx_device.fit_to_device(model, config.quantized_base, device, dtype)
        if device == "cpu":  # Metal/CUDA keep mx.fast's (memory.ATTENTION_MODES)
            use_blocked_attention(model)
        elif (
            PAD_FOR_CUDNN_ATTENTION
            and device == "gpu (CUDA)"
            and takes_cudnn_attention(model, model_config)
        ):
            self.info.attention, self.info.pad_multiple = "fused", CUDA_ATTENTION_TILE
        model.freeze()
        lora = config.lora
        n_layers = len(model.layers) if lora.num_layers == -1 else lora.num_layers
        if n_layers > len(model.layers):
            raise ModelError(
                f"lora.num_layers={n_layers} but the model has {len(model.layers)} layers"
            )
        self.lora_targets = lora_keys(model.layers[-n_layers:], lora.target_modules)
        self.lora_parameters = {
            "rank": lora.rank,
            "scale": lora.alpha / lora.rank,
            "dropout": lora.dropout,
            "keys": self.lora_targets.keys,
        }
        self.num_layers = n_layers
        mx.random.seed(config.training.seed)
        linear_to_lora_layers(model, n_layers, self.lora_parameters)
        if config.training.grad_checkpoint:
            checkpoint_layers(model.layers)
        model.train()
        self.model, self.tokenizer = model, tokenizer
        self.model_dir = Path(model_dir)
        self.model_type = model_config.get("model_type", "")
        self._head = output_head(model, self.model_type)
        self._chunk_rows = config.training.loss_chunk_rows or loss_chunk_rows(
            model_config["vocab_size"]
        )
        self.optimizer = optim.AdamW(learning_rate=0.0, weight_decay=config.training.weight_decay)
        self._value_and_grad = nn.value_and_grad(model, self._loss)
        # auto: eager until a GPU measures what compiling pays (a CPU would JIT C++ first)
        self._compiled = self._compile_loss_and_grad() if config.training.compile is True else None

    def _compile_loss_and_grad(self):
        """The loss and its gradient as one mx.compile'd graph (fused elementwise kernels), as
        mlx-lm compiles its step. One graph per input shape: batches are padded to a multiple
        of COMPILE_BUCKET positions and the loss covers every row, unlabelled ones weighted 0,
        so a run compiles a handful of graphs rather than one per batch."""
        state = [self.model.state, mx.random.state]  # read and (dropout's key) advanced

        def loss_and_grad(tokens, targets, weights):
            return self._value_and_grad(self.model, tokens, None, targets, weights)

        return mx.compile(loss_and_grad, inputs=state, outputs=state)

    def weight_bytes(self) -> int:
        """Bytes the loaded weights occupy as they will train (after any cast or dequantize)."""
        return sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))

    def param_counts(self) -> tuple[int, int]:
        trainable = sum(v.size for _, v in tree_flatten(self.model.trainable_parameters()))
        total = sum(v.size for _, v in tree_flatten(self.model.parameters()))
        return trainable, total

    # --- loss -------------------------------------------------------------------------

    def _loss(
        self,
        model,
        tokens: mx.array,
        positions: mx.array | None,
        targets: mx.array,
        weights: mx.array | None = None,
        train: bool = True,
    ) -> mx.array:
        """Summed cross-entropy over the labelled positions only (see mlx_loss); positions
        None: over every position, each weighted (the compiled step's fixed shapes)."""
        inputs = tokens[:, :-1]
        if self._head is None:  # unknown architecture: the model's own full logits
            logits = model(inputs)
            logits = logits.reshape(-1, logits.shape[-1]).astype(mx.float32)
            if positions is None:
                return (nn.losses.cross_entropy(logits, targets) * weights).sum()
            return nn.losses.cross_entropy(logits[positions], targets, reduction="sum")
        hidden = model.model(inputs)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        if positions is not None:
            hidden = hidden[positions]
        if not train:
            return chunked_cross_entropy(self._head, hidden, targets, self._chunk_rows)
        return chunked_cross_entropy_for_training(
            self._head, hidden, targets, self._chunk_rows, weights
        )

    def _my_rows(self, batch: Batch) -> tuple[np.ndarray, np.ndarray] | None:
        """(tokens, loss mask) of this process's rows (all of them unless data-parallel)."""
        rows = mlx_dist.my_rows(self.group, len(batch.tokens))
        tokens, mask = batch.tokens[rows], batch.loss_mask[rows]
        if not len(tokens):
            return None
        pad = -mask.shape[1] % self.info.pad_multiple  # the model sees mask.shape[1] positions
        if pad:  # CUDA's attention tile only: no copy of every batch elsewhere
            tokens, mask = np.pad(tokens, ((0, 0), (0, pad))), np.pad(mask, ((0, 0), (0, pad)))
        return tokens, mask

    def _labels(self, batch: Batch) -> tuple[mx.array, mx.array, mx.array] | None:
        """(tokens, labelled positions, their targets) of this process's rows, or None."""
        if (mine := self._my_rows(batch)) is None:
            return None
        tokens, mask = mine
        positions = np.flatnonzero(mask.reshape(-1)).astype(np.int32)
        targets = tokens[:, 1:].reshape(-1)[positions]
        return mx.array(tokens), mx.array(positions), mx.array(targets)

    def _bucketed_labels(self, batch: Batch) -> tuple[mx.array, mx.array, mx.array] | None:
        """(tokens, targets, weights) of this process's rows, padded to a multiple of
        COMPILE_BUCKET positions: every position a target, weighted 1 if labelled, else 0."""
        if (mine := self._my_rows(batch)) is None:
            return None
        tokens, mask = mine
        pad = -mask.shape[1] % COMPILE_BUCKET
        tokens = np.pad(tokens, ((0, 0), (0, pad)))
        weights = np.pad(mask, ((0, 0), (0, pad))).reshape(-1).astype(np.float32)
        return mx.array(tokens), mx.array(tokens[:, 1:].reshape(-1)), mx.array(weights)

    # --- steps ------------------------------------------------------------------------

    def accumulate(self, batch: Batch, seed: int) -> float:
        """Adds the gradient of the summed loss: the update divides by every labelled token of
        the step, so batch 4 and batch 2 x accumulation 2 take the same step."""
        mx.random.seed(seed)  # dropout masks depend on the step only: resume is exact
        n = batch.label_tokens
        compiled = self._compiled is not None
        labels = self._bucketed_labels(batch) if compiled else self._labels(batch)
        if labels is None:  # a data-parallel process with no rows of a short batch
            loss_sum = mx.array(0.0)
            grads = tree_map(mx.zeros_like, self.model.trainable_parameters())
        elif compiled:
            loss_sum, grads = self._compiled(*labels)
        else:
            loss_sum, grads = self._value_and_grad(self.model, *labels)
        self._grads = grads if self._grads is None else tree_map(mx.add, self._grads, grads)
        self._labelled += n  # the whole batch's labels (every process's rows)
        loss_sum = mlx_dist.sum_over_ranks(self.group, loss_sum)
        mx.eval(loss_sum, self._grads)
        return loss_sum.item() / n

    def update(self, lr: float, grad_clip: float) -> float:
        grads = mlx_dist.sum_over_ranks(self.group, self._grads)
        grads = tree_map(lambda g: g / self._labelled, grads)
        if grad_clip > 0:
            grads, norm = optim.clip_grad_norm(grads, grad_clip)
        else:
            norm = mx.sqrt(sum((g * g).sum() for _, g in tree_flatten(grads)))
        self.optimizer.learning_rate = mx.array(lr)
        self.optimizer.update(self.model, grads)
        mx.eval(self.model.trainable_parameters(), self.optimizer.state, norm)
        self._grads, self._labelled = None, 0
        return norm.item()

    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        labels = self._labels(batch)
        loss_sum = mx.array(0.0)
        if labels is not None:
            self.model.eval()
            loss_sum = self._loss(self.model, *labels, train=False)
            self.model.train()
        loss_sum = mlx_dist.sum_over_ranks(self.group, loss_sum)
        mx.eval(loss_sum)
        return loss_sum.item(), batch.label_tokens

    def generate(self, messages: list[dict], max_tokens: int) -> str:
        """Greedy answer of the model as it is now (adapter included), dropout off."""
        from mlxlora.backends.base import prompt_tokens
        from mlxlora.backends.mlx_infer import add_end_of_turn_tokens, generate_text

        add_end_of_turn_tokens(self.tokenizer)
        self.model.eval()
        try:
            prompt = prompt_tokens(self.tokenizer, messages)
            return generate_text(self.model, self.tokenizer, prompt, max_tokens)[0]
        finally:
            self.model.train()

    # --- files ------------------------------------------------------------------------

    def save_adapter(self, directory: Path) -> None:
        """mlx-lm's adapter layout: loadable by `mlx_lm.generate --adapter-path`."""
        directory.mkdir(parents=True, exist_ok=True)
        weights = dict(tree_flatten(self.model.trainable_parameters()))
        _save_safetensors(directory / "adapters.safetensors", weights)
        config = {
            "model": str(self.model_dir),  # as in mlx-lm's own adapter configs
            **gguf_source(self.model_dir),
            "fine_tune_type": "lora",
            "num_layers": self.num_layers,
            "lora_parameters": self.lora_parameters,
            "model_type": self.model_type,
        }
        (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))

    def save_state(self, directory: Path) -> None:
        self.save_adapter(directory)
        state = dict(tree_flatten(self.optimizer.state))
        _save_safetensors(directory / "optimizer.safetensors", state)

    def load_state(self, directory: Path) -> None:
        try:  # mlx's loaders raise these for a file cut short or missing
            weights = mx.load(str(directory / "adapters.safetensors"))
            self.model.load_weights(list(weights.items()), strict=False)
            state = mx.load(str(directory / "optimizer.safetensors"))
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointUnreadable(str(exc)) from exc
        self.optimizer.state = tree_unflatten(list(state.items()))
        mx.eval(self.model.parameters(), self.optimizer.state)

    def limit_memory(self, budget: int) -> None:
        """On a GPU, MLX's memory limit (allocations past it wait for buffers to free, or
        fail cleanly, instead of swapping a Mac) and a cache limit of a quarter of it, as
        mlx-lm sets the wired limit from the working set. Without the cache limit, on CUDA,
        MLX kept the freed buffers of every batch length for reuse: on an H100 its cache held
        73-79 GB beside 1.4-4.7 GB in use when an allocation failed, at step 4-7 (stock
        mlx-lm clears its cache every step). Not on a CPU: there MLX's limit would be the
        machine's RAM, which the run already stops short of. Never above MLX's own limit:
        on CUDA it keeps a fifth of the card for what it does not count (CUDA's context,
        cuBLAS's workspaces), where the budget is the whole card."""
        if self.info.device.startswith("gpu"):
            limit = min(budget, mx.set_memory_limit(budget))  # set returns MLX's own limit
            mx.set_memory_limit(limit)
            mx.set_cache_limit(limit // 4)

    def peak_memory_bytes(self) -> int:
        return mx.get_peak_memory()

    def reset_peak_memory(self) -> None:
        mx.reset_peak_memory()
