"""Training memory: a rough estimate for LoRA on a model and what to change when it will not
fit (the machine's budget: mlxlora.machine). Imports no mlx or torch.

The estimate is arithmetic on the architecture (hidden size, layers, heads, vocab), with
factors measured against MLX's peak (benchmarks/memory_matrix.py); it aims at 0.95-1.15 of the
measured peak (never under: a user bets a run on it) and to move the right way when a setting
changes (memory_fit.py fits a job to a budget with it). `info` is a dict as
`mlxlora.models.model_info` or a catalog entry gives: hidden_size, num_hidden_layers,
vocab_size, num_attention_heads, num_key_value_heads, intermediate_size, head_dim, params,
quantization, weight_bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mlxlora import machine
from mlxlora.memory_weights import lora_param_count, model_dims, weight_bytes

GIB = 1024**3
# Rows (tokens) per chunk of the chunked cross-entropy (see loss_bytes for how many are live).
LOSS_CHUNK_ELEMENTS = 2**25  # logits per loss chunk: 128 MB in float32, whatever the vocab


def loss_chunk_rows(vocab_size: int) -> int:
    """Labelled positions per chunk of the output projection (the MLX backend uses this too):
    a fixed logit budget, so a 152k vocabulary takes 220 rows a chunk and a 49k one 682."""
    return max(64, min(1024, LOSS_CHUNK_ELEMENTS // max(vocab_size, 1)))


# Query rows per block of the MLX backend's CPU attention (blocked_causal_attention): a block
# of queries only meets the keys before it, so the masked upper triangle is never materialised.
ATTENTION_BLOCK = 64


def causal_block_fraction(length: int, block: int = ATTENTION_BLOCK) -> float:
    """Share of the (length x length) scores that the blocked causal attention computes and
    keeps: (n + 1) / 2n for n query blocks (1 for one block, -> 1/2 for long sequences)."""
    n = max(1, -(-length // block))
    return (n + 1) / (2 * n)


# The fused loss keeps three float32 (rows x vocab) arrays per chunk: logits, softmax and its
# gradient. How many chunks are live at once depends on how the step is evaluated (a
# TrainShape's `evaluation`, one of EVALUATIONS; measured, fused loss alone and whole steps;
# benchmarks/README.md):
# * "breadth-first", MLX's default order up to a frontier of MLX_BFS_MAX_WIDTH=20, on a CPU
#   (the benchmarks' stand-in for a GPU): the first SIDE_BY_SIDE_CHUNKS chunks are live
#   together and each row beyond them adds about half a row of logits (measured on a CPU: 32
#   chunks held 24.6 chunk-sized arrays);
# * "gpu", MLX on a GPU: breadth-first, and the host queues kernels ahead of the device, whose
#   buffers are freed once the kernels reading them have run. Each row beyond the first
#   chunks holds GPU_LATER_ROW_COPIES: fitted to the H100's capped peaks (Qwen2.5-0.5B and
#   Llama-3.2-1B shapes, 8 x up to 1024 tokens: 0.5 left both ~1.9 GB under, 0.91x / 0.93x;
#   1.0 gives 1.02x / 1.00x). tests/gpu measures the chunks there;
# * depth-first (MLX_BFS_MAX_WIDTH=1, which the MLX backend sets on a CPU, where it costs no
#   time): DEPTH_FIRST_LIVE_CHUNKS chunks, whatever their number (MLX's CPU stream runs a few
#   operations ahead of the one it computes), plus one hidden-sized gradient (tokens x
#   hidden) per chunk, which each chunk's slice of the hidden states hands back to autograd
#   (the probe's peak grows with the square of their number; whole steps' too: counting two
#   of them, qwen-layout's 75 chunks at 8 x 2048 checkpointed peaked at 1.39x the estimate).
#   Once they are summed (SUMMED_GRADIENTS_LIVE) a checkpointed step rebuilds its last block
#   beside part of the loss (REBUILT_BESIDE_CHUNKS): see estimate_training_memory;
# * "eager", torch (backends/torch_loss.py): a chunk's logits and softmax are freed before
#   the next chunk starts, and each chunk keeps its d(hidden) (rows x hidden) for backward.
#   EAGER_CHUNK_COPIES float32 chunks are live at the peak (logsumexp's temporary beside the
#   float32 logits; in half precision the bf16 logits and their float32 copy are less):
#   measured on a CPU, 2.01-2.10 chunks for 220-682-row chunks of 49k-152k vocabularies.
EVALUATIONS = ("gpu", "breadth-first", "depth-first", "eager")
LOGIT_COPIES = 3
SIDE_BY_SIDE_CHUNKS = 4
LATER_ROW_COPIES = 0.5
GPU_LATER_ROW_COPIES = 1.0
EAGER_CHUNK_COPIES = 2
DEPTH_FIRST_LIVE_CHUNKS = 3
SUMMED_GRADIENTS_LIVE = 2  # of the chunks' hidden gradients once summed: the sum, the last
# Chunks whose logits are still live beside the block a checkpointed depth-first step rebuilds
# (fitted: SmolLM2 peaks alike at 8 x 1024, 4 x 2048 and 2 x 4096, whose attention on top of
# three chunks read 1.16x and 1.31x; builtin:tiny's two chunks are both live; benchmarks/README.md)
REBUILT_BESIDE_CHUNKS = 2
UNCHUNKED_LOGIT_COPIES = 4  # the model's own logits through nn.losses.cross_entropy
LORA_BYTES_PER_PARAM = 16  # float32 weight, gradient, Adam m and v
# The CPU's blocked attention keeps each layer's causal probabilities for backward, and its
# backward adds about a third more in gradients of the blocks (measured, random llama layouts).
BLOCKED_ATTENTION_FACTOR = 1.3
# How a training step's attention holds its (batch x heads x len x len) probabilities:
# * "unfused": MLX on Metal, which trains with mx.fast's unfused fallback for forward and
#   backward ("faster for training", MLX's ScaledDotProductAttention::use_fallback), and on
#   CUDA (its batches are not padded for cuDNN's kernel: mlx.PAD_FOR_CUDNN_ATTENTION): every
#   layer that takes a gradient keeps its probabilities, and the layer in backward
#   UNFUSED_BACKWARD_COPIES more (their gradient and the softmax's; checkpointed, the rebuilt
#   layer's two). Measured on a CPU, which differentiates the same unfused graph
#   (`benchmarks/memory_matrix.py --unfused`); on Metal not yet;
# * "blocked": the MLX backend on a CPU (blocked_causal_attention, causal blocks only);
# * "fused": a flash kernel with its own backward (torch's SDPA, on a CPU as on CUDA; MLX on
#   CUDA only where its batches are padded for cuDNN's, which is off): no probabilities are
#   kept, the backward recomputes them a tile at a time; each layer keeps the logsumexp of
#   its rows (float32, batch x heads x len). Measured on a CPU with torch (its live peak,
#   glibc's mmap threshold held fixed): SmolLM2 at 2 x 512 and 4 x 1024, checkpointed or not,
#   1.02-1.04x with this rule, where one layer's probabilities and scores made the
#   checkpointed 4 x 1024 1.26x (benchmarks/README.md). torch on a CPU is estimated with the
#   blocked rule: its resident peak keeps freed tensors (backends/torch.py describe).
ATTENTION_MODES = ("unfused", "blocked", "fused")
UNFUSED_BACKWARD_COPIES = 2
# MLX's own: the buffers of the gathers and reshapes, the embedding output, the backward's
# transients of one layer; a share of the rest (the estimate must not under-promise).
FRAMEWORK_OVERHEAD = 0.04


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB': powers of 1024, named as such (Activity Monitor calls them GB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass(frozen=True)
class TrainShape:
    """The settings that drive training memory, as in a Config."""

    batch_size: int = 4
    max_length: int = 2048
    lora_rank: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_layers: int = -1
    grad_checkpoint: bool = False
    dtype_bytes: int = 2
    chunked_loss: bool = True
    grad_accumulation: int = 1
    # How attention trains (see ATTENTION_MODES): "unfused" MLX on Metal, "blocked" the MLX
    # backend on a CPU, "fused" a flash kernel with its own backward (torch or cuDNN on CUDA).
    attention: str = "unfused"
    loss_chunk_rows: int = 0  # 0: loss_chunk_rows(vocab)
    evaluation: str = "gpu"  # how the step is evaluated (EVALUATIONS, see LOGIT_COPIES)

    @classmethod
    def from_config(cls, cfg, dtype_bytes: int = 2) -> TrainShape:
        return cls(
            batch_size=cfg.training.batch_size,
            max_length=cfg.data.max_length,
            lora_rank=cfg.lora.rank,
            lora_targets=tuple(cfg.lora.target_modules),
            lora_layers=cfg.lora.num_layers,
            grad_checkpoint=cfg.training.grad_checkpoint,
            dtype_bytes=dtype_bytes,
            grad_accumulation=cfg.training.grad_accumulation,
            loss_chunk_rows=cfg.training.loss_chunk_rows,
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes, by what holds them."""

    weights: int
    lora_params: int  # count of trainable parameters
    lora_optimizer: int  # bytes: LoRA weights, gradients, Adam m and v (float32)
    activations: int  # saved for backward (or, checkpointed, the layer inputs + one layer)
    attention: int  # scores / probabilities
    loss: int  # the live loss chunks
    overhead: int = 0  # MLX's transients and buffers

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.lora_optimizer
            + self.activations
            + self.attention
            + self.loss
            + self.overhead
        )

    def breakdown(self) -> list[tuple[str, int]]:
        """(label, bytes) rows for display, total last."""
        return [
            ("model weights", self.weights),
            (f"LoRA + optimizer state ({self.lora_params:,} params)", self.lora_optimizer),
            ("activations saved for backward", self.activations),
            ("attention", self.attention),
            ("loss chunks", self.loss),
            ("framework overhead", self.overhead),
            ("total", self.total),
        ]

    def __str__(self) -> str:
        return ", ".join(f"{label} {fmt_bytes(n)}" for label, n in self.breakdown())


def estimate_training_memory(
    info: dict,
    batch_size: int,
    max_length: int,
    lora_rank: int,
    lora_targets: list[str],
    lora_layers: int,
    grad_checkpoint: bool,
    dtype_bytes: int,
    chunked_loss: bool = True,
    attention_mode: str = "unfused",
    weights: int | None = None,
    chunk_rows: int = 0,
    evaluation: str = "gpu",
) -> MemoryEstimate:
    """Peak memory of one LoRA training step, worst case: every sequence `max_length` long.

    Activations (what autograd keeps, per token of an adapted layer, in the model dtype): the
    frozen projections need no saved inputs for their backward (only W), so a llama block keeps
    about 4*hidden (two norm inputs, the attention output, the LoRA input) + q, k, v after rope
    (q_dim + 2*kv_dim) + 3*intermediate (gate, up, silu(gate)), plus the input of o_proj or
    down_proj when those are adapted. Layers below the first adapted one keep nothing.
    Attention (batch*heads*len^2 in the model dtype), by `attention_mode` (ATTENTION_MODES):
    unfused, every adapted layer's probabilities and the backward's copies of one layer
    (checkpointed: the scores and probabilities of the one layer in backward); fused, no
    probabilities, each kept layer's float32 logsumexp (batch*heads*len); blocked (the
    MLX backend on a CPU), in every adapted layer (checkpointed: one) the probabilities of the
    causal blocks only (causal_block_fraction of len^2) and two copies of q, with
    BLOCKED_ATTENTION_FACTOR for their backward.
    Gradient checkpointing (mx.checkpoint around each block) keeps only each adapted block's
    input (tokens x hidden) and rebuilds one block at a time in backward: breadth-first (a
    GPU) MLX starts on the last block while the loss chunks are live, so its activations and
    attention count on top of them; depth-first (a CPU) it starts once the chunks' hidden
    gradients are summed, its attention on top of what the loss still holds
    (_beside_the_rebuilt_block), its activations as far as they outgrow that, and that phase
    counts as far as it outgrows the loss's own peak (_rebuilt_after_the_sum); torch (eager)
    keeps the attention beside the chunks. No block's attention outlives its backward
    (measured: benchmarks/README.md).
    Loss: see loss_bytes.
    """
    h, layers, vocab, heads, kv, q, inter = model_dims(info)
    adapted = layers if lora_layers < 0 else min(lora_layers, layers)
    lora_params = lora_param_count(info, lora_rank, lora_targets, lora_layers)
    tokens = batch_size * max_length

    per_token = 4 * h + q + 2 * kv + 3 * inter
    if "o_proj" in lora_targets:
        per_token += q
    if "down_proj" in lora_targets:
        per_token += inter
    one_layer = tokens * per_token * dtype_bytes
    if attention_mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode {attention_mode!r} is not one of {ATTENTION_MODES}")
    probs = batch_size * heads * max_length**2 * dtype_bytes  # one layer's
    if attention_mode == "blocked":
        attention = _blocked_attention(batch_size, heads, max_length, q, dtype_bytes)
        attention *= 1 if grad_checkpoint else adapted
    elif attention_mode == "fused":  # each kept layer's logsumexp
        attention = (1 if grad_checkpoint else adapted) * batch_size * heads * max_length * 4
    elif not grad_checkpoint:
        attention = (adapted + UNFUSED_BACKWARD_COPIES) * probs
    else:  # the layer a checkpoint rebuilt, in backward
        attention = 2 * probs
    rows = (chunk_rows or loss_chunk_rows(vocab)) if chunked_loss else 0
    loss = loss_bytes(tokens, rows, vocab, evaluation, hidden_row_bytes=h * dtype_bytes)
    if grad_checkpoint:
        rebuilt = one_layer  # breadth-first, on top of the loss chunks
        if evaluation == "depth-first":
            beside = _beside_the_rebuilt_block(tokens, rows, vocab, tokens * h * dtype_bytes, loss)
            attention, rebuilt = _rebuilt_after_the_sum(loss, beside, attention, one_layer)
        elif evaluation == "eager":  # its attention beside the chunks, the rest once they go
            rebuilt = max(0, one_layer - loss)
        activations = adapted * tokens * h * dtype_bytes + rebuilt
    else:
        activations = adapted * one_layer
    weights = weights if weights is not None else weight_bytes(info, dtype_bytes)
    lora_optimizer = lora_params * LORA_BYTES_PER_PARAM
    subtotal = weights + lora_optimizer + activations + attention + loss
    return MemoryEstimate(
        weights=weights,
        lora_params=lora_params,
        lora_optimizer=lora_optimizer,
        activations=activations,
        attention=attention,
        loss=loss,
        overhead=int(subtotal * FRAMEWORK_OVERHEAD),
    )


def loss_bytes(
    tokens: int,
    chunk_rows: int,
    vocab: int,
    evaluation: str = "gpu",
    hidden_row_bytes: int = 0,
) -> int:
    """The live float32 logits of the loss over `tokens` labelled rows as `evaluation` holds
    them (see LOGIT_COPIES; chunk_rows 0: the model's own unchunked logits), and depth-first
    or eager the hidden-sized gradients the chunks hand back (`hidden_row_bytes` a row)."""
    if evaluation not in EVALUATIONS:
        raise ValueError(f"evaluation {evaluation!r} is not one of {EVALUATIONS}")
    if not chunk_rows:
        return tokens * vocab * 4 * UNCHUNKED_LOGIT_COPIES
    if evaluation == "eager":
        return min(tokens, chunk_rows) * EAGER_CHUNK_COPIES * vocab * 4 + tokens * hidden_row_bytes
    if evaluation == "depth-first":
        logits = min(tokens, DEPTH_FIRST_LIVE_CHUNKS * chunk_rows) * LOGIT_COPIES * vocab * 4
        chunks = -(-tokens // chunk_rows)
        return logits + chunks * tokens * hidden_row_bytes
    later = GPU_LATER_ROW_COPIES if evaluation == "gpu" else LATER_ROW_COPIES
    side_by_side = min(tokens, SIDE_BY_SIDE_CHUNKS * chunk_rows)
    copies = side_by_side * LOGIT_COPIES + (tokens - side_by_side) * later
    return int(copies * vocab * 4)


def _beside_the_rebuilt_block(tokens: int, rows: int, vocab: int, gradient: int, loss: int):
    """What a depth-first loss still holds when a checkpointed step rebuilds its last block:
    REBUILT_BESIDE_CHUNKS chunks' logits and SUMMED_GRADIENTS_LIVE hidden-sized gradients
    (`gradient` bytes each); unchunked, the whole `loss`."""
    if not rows:
        return loss
    chunks = -(-tokens // rows)
    logits = min(tokens, REBUILT_BESIDE_CHUNKS * rows) * LOGIT_COPIES * vocab * 4
    return logits + min(chunks, SUMMED_GRADIENTS_LIVE) * gradient


def _rebuilt_after_the_sum(loss: int, beside: int, attention: int, one_layer: int):
    """(attention, rebuilt activations) at a depth-first checkpointed step's peak: the last
    block rebuilt beside what the loss holds once its gradients are summed (`beside`), its
    attention on top, its activations as far as they outgrow it; both as far as that phase
    outgrows the loss's own peak (`loss`: a large vocabulary's many chunks outgrow it)."""
    rebuild = beside + attention + max(0, one_layer - beside)
    shown = min(attention, max(0, rebuild - loss))
    return shown, max(0, rebuild - loss) - shown


def _blocked_attention(batch, heads, length, q_dim, dtype_bytes) -> int:
    """What the CPU's blocked causal attention keeps for one layer's backward: the causal
    probabilities (and their gradients, BLOCKED_ATTENTION_FACTOR) and two copies of q."""
    probs = batch * heads * length**2 * causal_block_fraction(length) * dtype_bytes
    return int(probs * BLOCKED_ATTENTION_FACTOR) + batch * length * 2 * q_dim * dtype_bytes


def estimate(info: dict, shape: TrainShape, weights: int | None = None) -> MemoryEstimate:
    return estimate_training_memory(
        info,
        shape.batch_size,
        shape.max_length,
        shape.lora_rank,
        list(shape.lora_targets),
        shape.lora_layers,
        shape.grad_checkpoint,
        shape.dtype_bytes,
        shape.chunked_loss,
        attention_mode=shape.attention,
        weights=weights,
        chunk_rows=shape.loss_chunk_rows,
        evaluation=shape.evaluation,
    )


def shape_here(shape: TrainShape, device=None) -> TrainShape:
    """`shape` as `device` (a machine.TrainingDevice; by default `auto`'s) trains it: on a CPU
    see on_cpu; on a GPU in half precision; with that device's attention and evaluation."""
    device = device or machine.training_device()
    shape = on_cpu(shape) if device.on_cpu else shape
    return replace(shape, attention=device.attention, evaluation=device.evaluation)


def on_cpu(shape: TrainShape) -> TrainShape:
    """`shape` as MLX's CPU backend trains it: float32 (bf16 matmuls are slow there), the
    blocked attention, and depth-first evaluation."""
    return replace(shape, dtype_bytes=4, attention="blocked", evaluation="depth-first")


# Share of the budget above which an estimate is "tight": it fits, with little to spare.
TIGHT_FRACTION = 0.8


def calibrated_need(estimate: int, peak: int, trained_estimate: int, outgrew: float = 1.0) -> int:
    """A coming step's need: its estimate, scaled up by how far the measured peak of the steps
    so far passed their own estimate (`trained_estimate`, 0 before the first step), and at
    least by `outgrew` (a resumed run's earlier sessions: memory_fit.outgrowth). Where the
    estimate under-promises (on a CUDA GPU: 0.6x before attention counted as MLX trains it,
    0.84-0.92x recomputed since; torch on a CPU: glibc's heap) a run still stops before a
    longer batch would pass its budget; where it over-promises it is left as is."""
    grown = peak / trained_estimate if trained_estimate else 1.0
    return int(estimate * max(1.0, outgrew, grown))


def fit_verdict(total: int, budget: int | None) -> str:
    """'fits', 'tight' (over TIGHT_FRACTION of the budget), 'will not fit', or 'unknown'."""
    if not budget:
        return "unknown"
    if total > budget:
        return "will not fit"
    return "tight" if total > TIGHT_FRACTION * budget else "fits"


# --- what to change -----------------------------------------------------------------------
