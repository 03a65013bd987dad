"""Fitting a training job to a memory budget: the settings that keep its math (effective
batch, everything that changes results) and the fastest of them that the estimate fits.
Imports no mlx or torch."""

from __future__ import annotations

from dataclasses import dataclass, replace

from mlxlora.memory import MemoryEstimate, TrainShape, estimate, fmt_bytes, loss_chunk_rows
from mlxlora.memory_weights import lora_weight_bytes, weight_bytes

# Relative step time of the knobs fit turns (from this repo's CPU measurements: checkpointing
# recomputes the forward pass, ~1/3 more; each extra micro-batch a step costs its overhead and
# a less efficient matmul; each halving of the loss chunk one more pass over the head).
CHECKPOINT_COST = 4 / 3
MICRO_BATCH_COST = 0.08
CHUNK_HALVING_COST = 0.02
# Depth-first (a CPU), halving loss chunks whose logits are smaller than this lowered the
# measured peak far less than the estimate (builtin:tiny 4 x 512 checkpointed: 62.2 MB at its
# 1,024-row chunks, 56.8-57.0 MB at 512, 256 and 128 rows, where the estimate fell 20-27 MB; a
# random 8,192-token vocabulary 4 x 1024: 131.0 MB at 4 MiB chunks, 131.1 at 8 MiB): fit does
# not halve a chunk below it.
DEPTH_FIRST_MIN_CHUNK_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Fit:
    """What fit_shape chose: the shape, its estimate, and why."""

    shape: TrainShape
    estimate: MemoryEstimate
    budget: int
    fits: bool
    reason: str

    def changes(self, before: TrainShape) -> dict[str, object]:
        """Config keys whose value the fit changed, with the new values."""
        keys = {
            "training.batch_size": "batch_size",
            "training.grad_accumulation": "grad_accumulation",
            "training.grad_checkpoint": "grad_checkpoint",
            "training.loss_chunk_rows": "loss_chunk_rows",
        }
        return {
            key: getattr(self.shape, attr)
            for key, attr in keys.items()
            if getattr(self.shape, attr) != getattr(before, attr)
        }


def _relative_time(shape: TrainShape, default_rows: int) -> float:
    halvings = 0
    rows = shape.loss_chunk_rows or default_rows
    while rows < default_rows:
        rows, halvings = rows * 2, halvings + 1
    ckpt = CHECKPOINT_COST if shape.grad_checkpoint else 1.0
    return (
        ckpt
        * (1 + MICRO_BATCH_COST * (shape.grad_accumulation - 1))
        * (1 + CHUNK_HALVING_COST * halvings)
    )


def fit_candidates(info: dict, shape: TrainShape) -> list[TrainShape]:
    """Every shape with the same effective batch (micro-batch x accumulation) and the same
    math: micro-batch sizes that divide it, checkpointing on or off, loss chunks of the
    default size down to 1/8 of it (depth-first, none under DEPTH_FIRST_MIN_CHUNK_BYTES)."""
    effective = shape.batch_size * shape.grad_accumulation
    vocab = int(info["vocab_size"])
    default_rows = loss_chunk_rows(vocab)
    least = 64
    if shape.evaluation == "depth-first":
        least = min(default_rows, max(least, -(-DEPTH_FIRST_MIN_CHUNK_BYTES // (vocab * 4))))
    chunks = sorted({max(least, default_rows // d) for d in (1, 2, 4, 8)}, reverse=True)
    return [
        replace(
            shape,
            batch_size=micro,
            grad_accumulation=effective // micro,
            grad_checkpoint=ckpt,
            loss_chunk_rows=0 if rows == default_rows else rows,
        )
        for micro in range(effective, 0, -1)
        if effective % micro == 0
        for ckpt in (False, True)
        for rows in chunks
    ]


def fit_shape(info: dict, shape: TrainShape, budget: int, weights: int | None = None) -> Fit:
    """The fastest shape (by _relative_time) whose estimate fits `budget`, keeping the
    effective batch; when none fits, the one that needs least memory, with fits False."""
    default_rows = loss_chunk_rows(int(info["vocab_size"]))
    scored = [(estimate(info, s, weights=weights), s) for s in fit_candidates(info, shape)]
    fitting = [(e, s) for e, s in scored if e.total <= budget]
    if not fitting:
        est, best = min(scored, key=lambda pair: pair[0].total)
        why = (
            f"nothing with an effective batch of {shape.batch_size * shape.grad_accumulation}"
            f" fits {fmt_bytes(budget)}; the smallest needs ~{fmt_bytes(est.total)}"
        )
        return Fit(best, est, budget, False, why)
    est, best = min(
        fitting, key=lambda pair: (_relative_time(pair[1], default_rows), pair[0].total)
    )
    why = (
        f"fastest of {len(fitting)} configurations with the same effective batch that fit "
        f"{fmt_bytes(budget)}: ~{fmt_bytes(est.total)} estimated, "
        f"{_relative_time(best, default_rows):.2f}x the time of one unchunked micro-batch "
        "without checkpointing"
    )
    return Fit(best, est, budget, True, why)


def outgrowth(events) -> float:
    """How far a run's steps so far outgrew its estimate: the highest peak a step measured over
    the estimate its session started with (at least 1). A resume fitted to the budget alone
    chose what had just failed, one step a session (torch on a CPU: glibc's heap, 1.5-3.8x)."""
    from mlxlora.events import RunStarted, Step

    ratio, started = 1.0, None
    for e in events:
        if isinstance(e, RunStarted):
            started = e.estimated_peak_gb
        elif isinstance(e, Step) and started:
            ratio = max(ratio, e.peak_memory_gb / started)
    return ratio


def fit_advice(est: MemoryEstimate, budget: int, info: dict, shape: TrainShape) -> list[str]:
    """Changes, in priority order and each on top of the ones before, that bring the estimate
    under `budget`, each with the estimated total after it; [] when it already fits."""
    if est.total <= budget:
        return []
    advice: list[str] = []
    # the base's weights as loaded (float32 on a CPU), not as the files hold them; the LoRA
    # layers' are among a run's weights, and a step may change them (lora.num_layers)
    base = est.weights - lora_weight_bytes(info, shape)
    current = shape
    steps = []
    if current.batch_size > 1:
        accum = current.batch_size * current.grad_accumulation
        steps.append(
            (
                f"training.batch_size=1 training.grad_accumulation={accum} (same effective batch)",
                lambda s: replace(s, batch_size=1, grad_accumulation=accum),
                None,
            )
        )
    if current.max_length > 1024:
        steps.append(("data.max_length=1024", lambda s: replace(s, max_length=1024), None))
    if not current.grad_checkpoint:
        steps.append(
            ("training.grad_checkpoint=true", lambda s: replace(s, grad_checkpoint=True), None)
        )
    if not (info.get("quantization") or {}).get("bits"):
        steps.append(
            (
                "a 4-bit model (e.g. the mlx-community ...-4bit version)",
                lambda s: s,
                weight_bytes(info, shape.dtype_bytes, bits=4),
            )
        )
    layers = int(info["num_hidden_layers"])
    if current.lora_layers < 0 or current.lora_layers > 8:
        if layers > 8:
            steps.append(("lora.num_layers=8", lambda s: replace(s, lora_layers=8), None))
    for text, change, new_base in steps:
        current = change(current)
        base = new_base if new_base is not None else base
        total = estimate(info, current, weights=base + lora_weight_bytes(info, current)).total
        fits = total <= budget
        prefix = "" if not advice else "then "
        advice.append(f"{prefix}{text}: ~{fmt_bytes(total)}" + (" (fits)" if fits else ""))
        if fits:
            return advice
    advice.append(
        f"still over the budget of {fmt_bytes(budget)}: pick a smaller model (`mlxlora models`)"
    )
    return advice
