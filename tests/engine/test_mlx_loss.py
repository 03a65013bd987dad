"""The MLX backend's labelled-position, chunked, fused loss equals the plain full-logit loss:
same value, same LoRA gradients."""

from __future__ import annotations

import numpy as np
import pytest

from mlxlora import config
from mlxlora.backends import mlx as mlx_backend
from mlxlora.backends import mlx_attention, mlx_device
from mlxlora.data import batching
from mlxlora.models.resolve import resolve_model


@pytest.fixture
def backend(home, quickstart_data):
    from mlxlora.data import formats, refs

    cfg = config.from_dict({"data": {"dataset": "x"}, "lora": {"rank": 4, "dropout": 0.0}})
    b = mlx_backend.MLXBackend()
    b.load(resolve_model("builtin:tiny"), cfg)
    # a non-zero LoRA B so the adapter takes part in the gradient
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    mx.random.seed(5)
    params = [
        (k, mx.random.normal(v.shape) * 0.05)
        for k, v in tree_flatten(b.model.trainable_parameters())
    ]
    b.model.update(tree_unflatten(params))
    meta, records = refs.resolve(str(quickstart_data))
    examples, _, _ = batching.encode_all(
        [formats.normalize(r, meta.type) for r in records[:6]], b.tokenizer, 128
    )
    return b, batching.collate(examples)


def reference_loss(model, tokens, mask):
    import mlx.core as mx
    import mlx.nn as nn

    logits = model(tokens[:, :-1]).astype(mx.float32)
    ce = nn.losses.cross_entropy(logits, tokens[:, 1:]) * mask
    return ce.sum()


@pytest.mark.parametrize("chunk_rows", [1024, 7])  # one chunk, and many with a ragged tail
def test_loss_and_gradients_match_full_logits(backend, chunk_rows):
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    b, batch = backend
    b._chunk_rows = chunk_rows
    tokens, positions, targets = b._labels(batch)
    n = positions.size
    assert 0 < n < batch.loss_mask.size  # prompts are masked out
    mask = mx.array(batch.loss_mask)

    ours, our_grads = nn.value_and_grad(b.model, b._loss)(b.model, tokens, positions, targets)
    ref, ref_grads = nn.value_and_grad(b.model, reference_loss)(b.model, tokens, mask)
    plain = b._loss(b.model, tokens, positions, targets, train=False)
    np.testing.assert_allclose(ours.item(), ref.item(), rtol=1e-5)
    np.testing.assert_allclose(plain.item(), ref.item(), rtol=1e-5)
    ours_flat, ref_flat = dict(tree_flatten(our_grads)), dict(tree_flatten(ref_grads))
    assert ours_flat.keys() == ref_flat.keys() and len(ours_flat) > 0
    for key, g in ref_flat.items():
        np.testing.assert_allclose(np.array(ours_flat[key]), np.array(g), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("length", [65, 150])  # a ragged last block, and several blocks
def test_blocked_causal_attention_matches_fused_kernel(length):
    """The CPU attention (query blocks, masked upper triangle skipped) gives mx.fast's output
    and gradients, with grouped-query heads."""
    import mlx.core as mx

    mx.random.seed(3)
    q = mx.random.normal((2, 6, length, 16))
    k, v = mx.random.normal((2, 2, length, 16)), mx.random.normal((2, 2, length, 16))
    cot = mx.random.normal(q.shape)
    scale = 16**-0.5

    def fused(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")

    def blocked(q, k, v):
        return mlx_attention.blocked_causal_attention(q, k, v, scale, block=32)

    ref_out, ref_grads = mx.vjp(fused, [q, k, v], [cot])
    out, grads = mx.vjp(blocked, [q, k, v], [cot])
    np.testing.assert_allclose(np.array(out[0]), np.array(ref_out[0]), rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.array(g), np.array(r), rtol=1e-4, atol=1e-5)


def test_cpu_backend_routes_causal_attention_through_blocks(backend):
    import sys

    b, _ = backend
    module = sys.modules[type(b.model).__module__]
    assert getattr(module.scaled_dot_product_attention, "_mlxlora_blocked", False)


def test_gpu_fit_gives_one_half_dtype_to_every_floating_weight(home):
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load

    model, _ = load(str(resolve_model("builtin:tiny")))
    model.set_dtype(mx.float16)
    model.model.norm.weight = model.model.norm.weight.astype(mx.float32)  # as a GGUF's norms
    model = mlx_device.fit_to_device(model, "keep", "gpu (Metal)", None)
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float16}
    model = mlx_device.fit_to_device(model, "keep", "cpu", mx.float32)
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float32}


LOSS_MEMORY_PROBE = """
import sys
from mlxlora.backends import mlx_device
from mlxlora.backends.mlx_loss import chunked_cross_entropy_for_training
import mlx.core as mx
mlx_device.select_device()
vocab, hidden, rows, chunks = 8192, 64, 256, int(sys.argv[1])
mx.random.seed(0)
w = mx.random.normal((vocab, hidden)) * 0.02
x = mx.random.normal((rows * chunks, hidden))
targets = mx.random.randint(0, vocab, (rows * chunks,))
scale = mx.ones((hidden,))
mx.eval(w, x, targets, scale)
loss = lambda s: chunked_cross_entropy_for_training(lambda h: h @ w.T, x * s, targets, rows)
before = mx.get_active_memory()
mx.reset_peak_memory()
mx.eval(mx.value_and_grad(loss)(scale))
print(mx.get_peak_memory() - before)
"""


def loss_peak(chunks: int, bfs_width: str | None = None) -> int:
    """Peak bytes of the fused chunked loss and its gradient, measured in a fresh process (MLX
    reads MLX_BFS_MAX_WIDTH once; None: as select_device leaves it)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop("MLX_BFS_MAX_WIDTH", None)
    if bfs_width:
        env["MLX_BFS_MAX_WIDTH"] = bfs_width
    command = [sys.executable, "-c", LOSS_MEMORY_PROBE, str(chunks)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.split()[-1])


CHUNK = 256 * 8192 * 4  # one chunk's float32 logits in the probe


def test_on_a_cpu_the_loss_holds_three_chunks_however_many_there_are():
    """select_device has MLX evaluate depth-first on a CPU: eight loss chunks hold three
    chunks' logits, softmax and gradient (MLX's default breadth-first order held 14 chunk-sized
    arrays), and one hidden-sized gradient per chunk, as memory.loss_bytes says."""
    from mlxlora import memory

    measured = loss_peak(8)
    expected = memory.loss_bytes(2048, 256, 8192, "depth-first", hidden_row_bytes=64 * 4)
    assert measured < 10 * CHUNK
    assert 0.95 <= expected / measured <= 1.1


def test_breadth_first_the_loss_chunks_run_side_by_side_as_the_estimate_says():
    """MLX's default order (a GPU's) computes the independent chunks side by side: 32 chunks
    hold about 25 chunk-sized arrays, as memory.loss_bytes' breadth-first rule says."""
    from mlxlora import memory

    measured = loss_peak(32, bfs_width="20")
    expected = memory.loss_bytes(32 * 256, 256, 8192, "breadth-first")
    assert 20 * CHUNK < measured < 30 * CHUNK
    assert 0.95 <= expected / measured <= 1.1


def test_a_gpu_backend_describes_itself(monkeypatch):
    """On a GPU select_device keeps the model's dtype (None): describing the backend compared
    None with mx.float32 and raised, so no GPU run could start (found on a CUDA GPU); its
    memory budget is the GPU's (MLX's CUDA device_info names it total_memory)."""
    monkeypatch.setattr(mlx_device, "select_device", lambda: ("gpu (CUDA)", None))
    monkeypatch.setattr(mlx_device.mx, "device_info", lambda: {"total_memory": 80 * 2**30})
    info = mlx_device.describe()
    assert (info.device, info.dtype, info.blas) == (
        "gpu (CUDA)",
        "model dtype",
        "Metal/CUDA kernels",
    )
    assert info.memory_budget_bytes == 80 * 2**30  # the card's memory, not the host's RAM
    # unfused until load finds cuDNN's attention (takes_cudnn_attention); Metal: always
    assert (info.attention, info.pad_multiple) == ("unfused", 1)
    metal = {"max_recommended_working_set_size": 11 * 2**30, "memory_size": 16 * 2**30}
    monkeypatch.setattr(mlx_device.mx, "device_info", lambda: metal)
    monkeypatch.setattr(mlx_device, "select_device", lambda: ("gpu (Metal)", None))
    info = mlx_device.describe()
    assert info.memory_budget_bytes == 11 * 2**30
    assert (info.attention, info.pad_multiple) == ("unfused", 1)


def test_cudnn_attention_needs_mx_fast_half_precision_narrow_heads_and_ampere(monkeypatch):
    """CUDA pads batches for cuDNN's fused attention only where MLX takes it: a model that
    calls mx.fast's attention, in half precision, heads 8-128 wide, compute capability 8+."""
    import mlx.core as mx
    from mlx_lm.utils import _get_classes

    def model(family: str, **extra):
        cfg = {
            "model_type": family,
            "hidden_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 96,
            "rms_norm_eps": 1e-6,
            "vocab_size": 64,
            **extra,
        }
        model_class, args_class = _get_classes(cfg)
        built = model_class(args_class.from_dict(cfg))
        built.set_dtype(mx.bfloat16)
        return built, cfg

    takes = mlx_attention.takes_cudnn_attention
    monkeypatch.setattr(mx, "device_info", lambda: {"compute_capability_major": 9})
    llama, cfg = model("llama")
    assert takes(llama, cfg)
    assert not takes(llama, {**cfg, "head_dim": 256})  # gemma-2-2b's heads
    gemma2, gemma_cfg = model("gemma2", head_dim=16, query_pre_attn_scalar=16)
    assert not takes(gemma2, gemma_cfg)  # its attention is its own (softcapping)
    monkeypatch.setattr(mx, "device_info", lambda: {"compute_capability_major": 7})
    assert not takes(llama, cfg)  # a V100
    monkeypatch.setattr(mx, "device_info", lambda: {"compute_capability_major": 9})
    llama.set_dtype(mx.float32)
    assert not takes(llama, cfg)


def test_cuda_batches_are_not_padded_for_cudnn_unless_asked(home, monkeypatch):
    """Padding CUDA batches to 128 positions for cuDNN's fused attention ran out of an H100's
    80 GB on the Qwen2.5-0.5B shape (2026-11-26): a CUDA load leaves batches unpadded and
    counts attention as unfused, even where cuDNN's kernel would apply, unless the flag the
    benchmark's tiled side sets is on."""
    monkeypatch.setattr(mlx_device, "select_device", lambda: ("gpu (CUDA)", None))
    monkeypatch.setattr(mlx_backend, "takes_cudnn_attention", lambda *_: True)
    cfg = config.from_dict({"model": "builtin:tiny", "data": {"dataset": "x"}})

    def loaded():
        b = mlx_backend.MLXBackend()
        b.load(resolve_model("builtin:tiny", progress=False), cfg)
        return b.info.attention, b.info.pad_multiple

    assert loaded() == ("unfused", 1)
    monkeypatch.setattr(mlx_backend, "PAD_FOR_CUDNN_ATTENTION", True)
    assert loaded() == ("fused", 128)


def test_padding_to_the_attention_tile_changes_no_loss_or_gradient(backend):
    """CUDA's batches are padded to a multiple of 128 positions (CUDA_ATTENTION_TILE): the
    padded positions come after every real token and are unlabelled, so the step's loss and
    LoRA gradients are those of the unpadded batch; the memory estimate counts the padded
    length."""
    from mlx.utils import tree_flatten

    from mlxlora.run_memory import train_shape

    b, batch = backend
    assert batch.loss_mask.shape[1] % 128  # the batch is not a multiple already
    plain = b.accumulate(batch, seed=1), tree_flatten(b._grads)
    b._grads, b._labelled = None, 0
    b.info.pad_multiple = 128
    assert b._labels(batch)[0].shape[1] - 1 == 128  # the model sees 128 positions
    padded = b.accumulate(batch, seed=1), tree_flatten(b._grads)
    assert padded[0] == pytest.approx(plain[0], rel=1e-5)
    for (name, g), (_, h) in zip(plain[1], padded[1], strict=True):
        np.testing.assert_allclose(np.array(h), np.array(g), rtol=1e-4, atol=1e-6, err_msg=name)
    cfg = config.from_dict({"data": {"dataset": "x", "max_length": 1000}})
    assert train_shape(cfg, b, 700).max_length == 768
