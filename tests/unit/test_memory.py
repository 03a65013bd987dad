"""The training memory estimate, the machine budget and fit advice, checked with numbers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mlxlora import machine, memory, memory_fit, memory_weights
from mlxlora.config import Config
from mlxlora.memory import (
    GIB,
    MemoryEstimate,
    TrainShape,
    estimate,
    estimate_training_memory,
    fmt_bytes,
)
from mlxlora.memory_fit import fit_advice
from mlxlora.memory_weights import lora_weight_bytes, weight_bytes
from mlxlora.models.catalog import find

SMALL = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "vocab_size": 1000,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "params": 100_000,
    "quantization": None,
}


def small(**kw) -> MemoryEstimate:
    args = dict(
        batch_size=2,
        max_length=32,
        lora_rank=4,
        lora_targets=["q_proj", "v_proj"],
        lora_layers=-1,
        grad_checkpoint=False,
        dtype_bytes=2,
    )
    return estimate_training_memory(SMALL, **{**args, **kw})


def test_estimate_arithmetic():
    est = small()
    # LoRA: rank 4 on q (64->64) and v (64->32): 4*128 + 4*96 = 896 per layer, 4 layers.
    assert est.lora_params == 3584
    assert est.lora_optimizer == 3584 * 16  # float32 weight, grad, Adam m and v
    assert est.weights == 100_000 * 2
    # Per token per layer: 4*64 + q 64 + 2*kv 32 + 3*128 = 768 elements of 2 bytes, 64 tokens;
    # attention, unfused (MLX on a GPU): each of the 4 layers' probabilities, 2*4*32*32 of 2
    # bytes, and 2 more copies of one layer in backward.
    assert est.activations == 4 * (64 * 768 * 2) == 393_216
    assert est.attention == (4 + 2) * 2 * 4 * 32 * 32 * 2 == 98_304
    assert est.loss == 64 * 1000 * 4 * 3  # one chunk: logits, softmax and its gradient
    subtotal = 200_000 + 57_344 + 393_216 + 98_304 + 768_000
    assert est.overhead == int(subtotal * memory.FRAMEWORK_OVERHEAD)
    assert est.total == subtotal + est.overhead
    # a checkpoint's rebuilt layer: one layer's scores and probabilities
    assert small(grad_checkpoint=True).attention == 2 * 2 * 4 * 32 * 32 * 2
    # a flash kernel (torch's SDPA): no probabilities, each layer's float32 logsumexp (one
    # layer's, checkpointed)
    assert small(attention_mode="fused").attention == 4 * 2 * 4 * 32 * 4
    assert small(attention_mode="fused", grad_checkpoint=True).attention == 2 * 4 * 32 * 4
    labels = [label for label, _ in est.breakdown()]
    assert labels[0] == "model weights" and labels[-1] == "total" and "3,584" in labels[1]
    assert est.breakdown()[-1][1] == est.total


def test_estimate_moves_the_right_way():
    base = small()
    assert small(grad_checkpoint=True).activations == 4 * 64 * 64 * 2 + 64 * 768 * 2
    assert small(attention_mode="blocked").activations == base.activations
    half = small(lora_layers=2)
    assert half.lora_params == base.lora_params // 2
    assert half.activations == 2 * 64 * 768 * 2
    assert small(lora_layers=99).lora_params == base.lora_params
    wide = small(lora_targets=["o_proj", "down_proj"])
    assert wide.lora_params == 4 * (4 * (64 + 64) + 4 * (128 + 64))
    assert wide.activations == 4 * (64 * (768 + 64 + 128) * 2)
    assert small(dtype_bytes=4).activations == 2 * base.activations
    # Two chunks of 1024 rows run side by side (MLX's breadth-first evaluation): as much as
    # one chunk of 2048; without chunking the model's own logits (4 copies) for every token.
    assert small(batch_size=8, max_length=256).loss == 2048 * 3 * 1000 * 4
    assert small(batch_size=8, max_length=256, chunked_loss=False).loss == 2048 * 1000 * 16


def test_lora_params_match_mlx_lm_for_llama_1b():
    info = find("mlx-community/Llama-3.2-1B-Instruct-4bit").info()
    qv = estimate(info, TrainShape(lora_rank=8))
    assert qv.lora_params == 851_968  # mlx-lm: "Trainable parameters: ... (0.852M/1235.814M)"
    every = estimate(
        info, TrainShape(lora_rank=8, lora_targets=tuple(memory_weights.lora_shapes(info)))
    )
    assert every.lora_params == 16 * 8 * (4096 + 2 * 2560 + 4096 + 3 * 10240) == 5_636_096
    assert qv.weights == info["weight_bytes"]  # the measured download size when known


def test_weight_bytes():
    info = {"params": 1_000_000, "quantization": None}
    assert weight_bytes(info, 2) == 2_000_000
    assert weight_bytes(info, 2, bits=4) == 500_000 + 1_000_000 // 64 * 2 * 2
    q8 = {"params": 1_000_000, "quantization": {"bits": 8, "group_size": 32}}
    assert weight_bytes(q8, 2) == 1_000_000 + 1_000_000 // 32 * 4
    assert weight_bytes({**q8, "weight_bytes": 123}, 2) == 123


def test_train_shape_from_config():
    cfg = Config()
    cfg.training.batch_size, cfg.data.max_length, cfg.lora.num_layers = 2, 512, 8
    shape = TrainShape.from_config(cfg)
    assert shape == TrainShape(batch_size=2, max_length=512, lora_layers=8)


def test_fmt_bytes():
    assert fmt_bytes(512) == "512 B"
    assert fmt_bytes(1536) == "1.5 KiB"
    assert fmt_bytes(12 * GIB) == "12.0 GiB"
    assert fmt_bytes(3000 * GIB) == "3000.0 GiB"


# --- advice -------------------------------------------------------------------------------


def test_no_advice_when_it_fits():
    info = find("mlx-community/Qwen2.5-0.5B-Instruct-4bit").info()
    shape = TrainShape(batch_size=1, max_length=1024)
    assert fit_advice(estimate(info, shape), 12 * GIB, info, shape) == []


def test_advice_in_priority_order_until_it_fits():
    info = find("mlx-community/Llama-3.2-3B-Instruct-4bit").info()
    shape = TrainShape(batch_size=4, max_length=2048, grad_accumulation=2)
    step1 = TrainShape(batch_size=1, max_length=2048, grad_accumulation=8)
    step2 = TrainShape(batch_size=1, max_length=1024, grad_accumulation=8)
    t0, t1, t2 = (estimate(info, s).total for s in (shape, step1, step2))
    assert t0 > t1 > t2
    budget = (t1 + t2) // 2
    advice = fit_advice(estimate(info, shape), budget, info, shape)
    assert advice == [
        "training.batch_size=1 training.grad_accumulation=8 (same effective batch): "
        f"~{fmt_bytes(t1)}",
        f"then data.max_length=1024: ~{fmt_bytes(t2)} (fits)",
    ]


def test_advice_offers_checkpointing_4bit_and_fewer_layers():
    info = find("mlx-community/SmolLM2-360M-Instruct").info()  # bf16, 32 layers
    shape = TrainShape(batch_size=1, max_length=1024)
    ckpt = TrainShape(batch_size=1, max_length=1024, grad_checkpoint=True)
    eight = TrainShape(1, 1024, grad_checkpoint=True, lora_layers=8)
    # the weights as a run counts them loaded: the base's and its LoRA layers' (fewer of
    # them with lora.num_layers=8; a 4-bit model's advice kept them)
    lora, lora8 = lora_weight_bytes(info, shape), lora_weight_bytes(info, eight)
    bf16, q4 = weight_bytes(info, 2) + lora, weight_bytes(info, 2, bits=4)
    totals = [
        estimate(info, ckpt, weights=bf16).total,
        estimate(info, ckpt, weights=q4 + lora).total,
        estimate(info, eight, weights=q4 + lora8).total,
    ]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 3
    budget = 100 * 1024**2
    est = estimate(info, shape, weights=bf16)
    assert fit_advice(est, budget, info, shape) == [
        f"training.grad_checkpoint=true: ~{fmt_bytes(totals[0])}",
        f"then a 4-bit model (e.g. the mlx-community ...-4bit version): ~{fmt_bytes(totals[1])}",
        f"then lora.num_layers=8: ~{fmt_bytes(totals[2])}",
        "still over the budget of 100.0 MiB: pick a smaller model (`mlxlora models`)",
    ]
    # With a budget just above the 4-bit total the advice stops there.
    advice = fit_advice(est, totals[1], info, shape)
    assert len(advice) == 2 and advice[-1].endswith("(fits)")


# 4 x 2048 in bf16 on Metal, which trains attention unfused: each of the 16 layers keeps its
# 4 x 32 x 2048^2 probabilities (1.07 GB), ~34 GB in all; checkpointed ~7.7 GB.
@pytest.mark.parametrize(
    "gb,fits,fits_checkpointed", [(8, False, False), (16, False, True), (24, False, True)]
)
def test_llama_1b_fit_on_macs(gb, fits, fits_checkpointed):
    info = find("mlx-community/Llama-3.2-1B-Instruct-4bit").info()
    budget = machine.unified_budget(gb * GIB)
    assert (estimate(info, TrainShape()).total <= budget) is fits
    assert (estimate(info, TrainShape(grad_checkpoint=True)).total <= budget) is fits_checkpointed


def test_fit_verdict_thresholds():
    """Tight is over 80% of the budget and still fits; over the budget will not fit."""
    budget = 1000
    assert memory.fit_verdict(800, budget) == "fits"
    assert memory.fit_verdict(801, budget) == "tight"
    assert memory.fit_verdict(1000, budget) == "tight"
    assert memory.fit_verdict(1001, budget) == "will not fit"
    assert memory.fit_verdict(1, None) == "unknown"


def test_shape_here_is_float32_blocked_off_a_mac(monkeypatch):
    shape = TrainShape(batch_size=2)
    monkeypatch.setattr(machine, "is_apple_silicon", lambda: True)
    assert memory.shape_here(shape) == shape
    monkeypatch.setattr(machine, "is_apple_silicon", lambda: False)
    here = memory.shape_here(shape)
    assert (here.dtype_bytes, here.attention, here.evaluation) == (4, "blocked", "depth-first")
    assert here.batch_size == 2


def test_fit_keeps_the_effective_batch_and_takes_the_fastest_that_fits():
    shape = TrainShape(batch_size=8, max_length=256, lora_rank=4, dtype_bytes=2)
    whole = estimate(SMALL, shape).total
    assert memory_fit.fit_shape(SMALL, shape, whole).shape == shape  # fits as it is: unchanged
    smaller = memory_fit.fit_shape(SMALL, shape, whole - 1)
    assert smaller.fits and smaller.estimate.total <= whole - 1
    # a smaller loss chunk is the cheapest change (more passes over the head); half the rows
    # saves nothing (four chunks still run side by side), a quarter does
    assert smaller.shape == replace(shape, loss_chunk_rows=memory.loss_chunk_rows(1000) // 4)
    assert smaller.changes(shape) == {"training.loss_chunk_rows": 256}
    at_8 = [c for c in memory_fit.fit_candidates(SMALL, shape) if c.batch_size == 8]
    tighter = memory_fit.fit_shape(SMALL, shape, min(estimate(SMALL, c).total for c in at_8) - 1)
    tighter = tighter.shape
    assert tighter.batch_size * tighter.grad_accumulation == 8 and tighter.batch_size < 8
    impossible = memory_fit.fit_shape(SMALL, shape, 1000)
    assert not impossible.fits and "nothing with an effective batch of 8" in impossible.reason
    least = min(estimate(SMALL, c).total for c in memory_fit.fit_candidates(SMALL, shape))
    assert impossible.estimate.total == least


@pytest.mark.parametrize("evaluation, later", [("breadth-first", 0.5), ("gpu", 1.0)])
def test_smaller_loss_chunks_hold_fewer_logits_beyond_four_chunks(evaluation, later):
    shape = TrainShape(batch_size=8, max_length=256, lora_rank=4, evaluation=evaluation)
    rows = memory.loss_chunk_rows(SMALL["vocab_size"])  # 2048 labelled rows: 2, 4 or 8 chunks
    loss = {d: estimate(SMALL, replace(shape, loss_chunk_rows=rows // d)).loss for d in (1, 2, 4)}
    assert loss[1] == loss[2] == 2048 * 3 * 1000 * 4  # 2 or 4 chunks, all live side by side
    # 8 chunks of 256: four side by side (3 copies); the other 1024 rows half a copy each on a
    # CPU made to evaluate breadth-first, a whole copy on a GPU (its kernels queued ahead)
    assert loss[4] == (4 * 256 * 3 + 1024 * later) * 1000 * 4


def test_eager_torch_holds_one_chunk_at_a_time_and_every_chunk_s_hidden_gradient():
    """torch frees a chunk's logits before the next (backends/torch_loss.py): the depth-first
    rule counted three chunks' three copies, 4.5x what the loss holds."""
    shape = TrainShape(batch_size=8, max_length=256, lora_rank=4, evaluation="eager")
    rows = memory.loss_chunk_rows(SMALL["vocab_size"])  # 1024 of 2048 labelled rows
    hidden_row = SMALL["hidden_size"] * shape.dtype_bytes
    for d in (1, 4):
        loss = estimate(SMALL, replace(shape, loss_chunk_rows=rows // d)).loss
        assert loss == rows // d * 2 * 1000 * 4 + 2048 * hidden_row


def test_depth_first_three_loss_chunks_are_live_whatever_their_number():
    shape = TrainShape(
        batch_size=8, max_length=256, lora_rank=4, evaluation="depth-first"
    )  # 2048 rows
    rows = memory.loss_chunk_rows(SMALL["vocab_size"])  # 1024
    hidden_row = SMALL["hidden_size"] * shape.dtype_bytes
    loss = {d: estimate(SMALL, replace(shape, loss_chunk_rows=rows // d)).loss for d in (1, 2, 8)}
    # 2 chunks: both live; 4 and 16 chunks: three live; a hidden-sized gradient per chunk
    assert loss[1] == 2048 * 3 * 1000 * 4 + 2 * 2048 * hidden_row
    assert loss[2] == 3 * 512 * 3 * 1000 * 4 + 4 * 2048 * hidden_row
    assert loss[8] == 3 * 128 * 3 * 1000 * 4 + 16 * 2048 * hidden_row
    # so on a CPU fit halves the chunk where breadth-first it had to quarter it (a vocabulary
    # whose halved chunks are not under DEPTH_FIRST_MIN_CHUNK_BYTES)
    wide = {**SMALL, "vocab_size": 32768}  # 1024-row chunks too
    whole = estimate(wide, shape).total
    fitted = memory_fit.fit_shape(wide, shape, whole - 1).shape
    assert fitted == replace(shape, loss_chunk_rows=rows // 2)


def test_depth_first_fit_halves_no_chunk_under_eight_mib():
    """builtin:tiny (vocabulary 1,536) 4 x 512 checkpointed on a CPU peaked at 62.2 MB with its
    1,024-row chunks and 56.8-57.0 MB with 512, 256 or 128 rows, where the estimate fell by
    20-27 MB: a fit that halved them there promised 0.66x of the measured peak."""
    tiny = {**SMALL, "vocab_size": 1536}
    shape = TrainShape(batch_size=4, max_length=512, lora_rank=8, grad_checkpoint=True)
    chunks = {
        e: {
            c.loss_chunk_rows for c in memory_fit.fit_candidates(tiny, replace(shape, evaluation=e))
        }
        for e in ("depth-first", "gpu")
    }
    assert chunks == {"depth-first": {0}, "gpu": {0, 512, 256, 128}}
    smollm2 = {**SMALL, "vocab_size": 49152}  # 682-row chunks (128 MiB), down to 85 (16 MiB)
    deep = memory_fit.fit_candidates(smollm2, replace(shape, evaluation="depth-first"))
    assert {c.loss_chunk_rows for c in deep} == {0, 341, 170, 85}


def test_depth_first_checkpointing_counts_the_rebuilt_blocks_attention_not_its_activations():
    shape = TrainShape(batch_size=8, max_length=256, lora_rank=4, grad_checkpoint=True)
    breadth, depth = (
        estimate(SMALL, shape),
        estimate(SMALL, replace(shape, evaluation="depth-first")),
    )
    inputs = 4 * 2048 * 64 * 2
    assert breadth.activations == inputs + 2048 * 768 * 2  # + the rebuilt block
    assert depth.activations == inputs  # the block's activations come after the loss chunks
    assert depth.attention == breadth.attention
    small_vocab = estimate({**SMALL, "vocab_size": 10}, replace(shape, evaluation="depth-first"))
    assert small_vocab.activations == inputs + 2048 * 768 * 2 - small_vocab.loss  # outgrows it


def test_depth_first_the_chunks_gradients_outgrow_the_rebuilt_block_with_a_large_vocabulary():
    """qwen-layout (Qwen2.5's 151,936 tokens, hidden 256, 4 layers) at 8 x 2048 checkpointed on
    a CPU peaked at 2.70 GB where the estimate said 1.95 (0.72x): it counted two of the 75
    chunks' hidden-sized gradients (1.26 GB in all) and the rebuilt block's attention on top.
    The attention comes once they are summed, beside the rest of the loss."""
    qwen = {**SMALL, "hidden_size": 256, "vocab_size": 151936, "intermediate_size": 1024}
    shape = memory.on_cpu(
        TrainShape(batch_size=8, max_length=2048, lora_rank=16, grad_checkpoint=True)
    )
    est = estimate(qwen, shape, weights=172_442_624)  # the run's loaded parameters
    rows = memory.loss_chunk_rows(151936)  # 220: 75 chunks
    logits = 3 * rows * 3 * 151936 * 4
    assert est.loss == logits + 75 * 16384 * 256 * 4
    assert est.attention == 0
    assert 0.95 <= est.total / 2.702e9 <= 1.15  # benchmarks/README.md's measured peak


def test_a_coming_steps_need_grows_by_how_far_the_steps_so_far_outgrew_their_estimate():
    assert memory.calibrated_need(1000, peak=5000, trained_estimate=0) == 1000  # no step yet
    assert memory.calibrated_need(1000, peak=1600, trained_estimate=1000) == 1600  # 0.6x short
    assert memory.calibrated_need(1000, peak=900, trained_estimate=1000) == 1000  # never less
    # a resume's first step: at the rate its earlier sessions outgrew the estimate
    assert memory.calibrated_need(1000, peak=0, trained_estimate=0, outgrew=1.5) == 1500
    assert memory.calibrated_need(1000, peak=1600, trained_estimate=1000, outgrew=1.2) == 1600


def test_fit_advice_counts_the_weights_the_estimate_counted():
    """The advice re-estimated each change with the files' weights (a 4-bit GGUF's 94 MiB)
    where the CPU trains the dequantized float32 ones (513 MiB): "~307 MiB (fits)" under a
    budget the weights alone pass (a QA finding)."""
    info = find("mlx-community/SmolLM2-135M-Instruct").info()
    shape = memory.on_cpu(TrainShape(batch_size=4, max_length=256))
    loaded = info["params"] * 4
    est = estimate(info, shape, weights=loaded)
    advice = fit_advice(est, int(est.total * 0.9), info, shape)
    one = estimate(info, replace(shape, batch_size=1, grad_accumulation=4), weights=loaded)
    assert advice[0].startswith("training.batch_size=1 training.grad_accumulation=4")
    assert advice[0].split("~")[1].split(" (")[0] == memory.fmt_bytes(one.total)
    assert one.total > loaded


def test_a_quantized_base_dequantized_on_a_gpu_plans_half_precision_weights():
    """dequantize on a GPU (and backend torch, which trains MLX-quantized weights from a float
    copy whatever the config says) loads half-precision weights: the 4-bit size under-counted
    them by about 3.5x."""
    from types import SimpleNamespace

    from mlxlora.backends.base import BackendInfo
    from mlxlora.run_memory import planned_weights

    info = {"params": 1_000_000, "quantization": {"bits": 4, "group_size": 64}}
    four_bit = memory_weights.weight_bytes(info, 2)
    assert memory_weights.planned_weights(info, "auto", on_cpu=False) == four_bit  # kept: QLoRA
    assert memory_weights.planned_weights(info, "dequantize", on_cpu=False) == 2_000_000
    assert memory_weights.planned_weights(info, "keep", on_cpu=True) == memory_weights.weight_bytes(
        info, 4
    )
    cfg = Config()  # quantized_base: auto
    for name, planned in (("mlx", four_bit), ("torch", 2_000_000)):
        gpu = BackendInfo(name, "gpu (CUDA, H100)", "bfloat16", "CUDA kernels", {}, 80e9)
        assert planned_weights(cfg, info, SimpleNamespace(info=gpu)) == planned


def test_depth_first_the_rebuilt_block_beside_two_chunks_fits_under_the_loss_peak():
    """SmolLM2 checkpointed on a CPU peaked at 2.58 GB at 4 x 2048 as at 8 x 1024 (the same
    8,192 tokens, 13 chunks): the estimate said 2.98 (1.155x) and 2.78, the longer batch's
    attention counted on top of all three live chunks' logits. Beside the rebuilt block two
    of them are live, and with its attention that stays under the loss's own peak."""
    smollm2 = find("HuggingFaceTB/SmolLM2-135M-Instruct").info()
    shape = memory.on_cpu(TrainShape(lora_rank=16, grad_checkpoint=True))
    shape = replace(
        shape, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj") + ("gate_proj", "up_proj")
    )
    weights = 553_542_912  # the run's loaded float32 parameters
    long, wide = (
        estimate(smollm2, replace(shape, batch_size=b, max_length=n), weights=weights)
        for b, n in ((4, 2048), (8, 1024))
    )
    assert long.attention == wide.attention == 0 and long.total == wide.total
    for est, measured in ((long, 2.58e9), (wide, 2.58e9)):  # benchmarks/README.md
        assert 0.95 <= est.total / measured <= 1.15
