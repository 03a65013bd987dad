"""Where the memory and the time of one MLX LoRA step go (CPU, issue 4's reference step).

    python benchmarks/memory_breakdown.py [--model builtin:smollm2-135m] [--attention both]

SmolLM2-135M, LoRA r16 on q/k/v/o/gate/up, batch 2 x 512, every position labelled, float32.
Prints two tables:

* memory: peak of one training step (value_and_grad + eval, over the memory allocated before
  it: weights and LoRA) with the model cut to 1, 2 and 8 layers and whole; the per-layer
  slope is what each layer keeps for the backward pass, the 1-layer intercept is mostly the
  loss chunk. Also the forward-only (eval) peak, and each piece on its own: attention, the
  swiglu MLP product, the fused loss chunk, optimizer state.
* time: each piece's forward+backward at this shape, times the layer count, against the
  whole step, and the step's effective GFLOP/s (forward 2*N*T, backward 2*N*T for the
  activation gradients only: the frozen weights get none; LoRA and attention flops on top).

--attention mlx-fast runs the whole-model rows with mx.fast's CPU fallback (the state before
blocked_causal_attention), --attention blocked with the backend's default, both: both.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# isort: off
from mlxlora.backends import mlx as backend_mod  # noqa: E402  (preloads OpenBLAS before mlx)
from mlxlora.backends.mlx_attention import blocked_causal_attention  # noqa: E402
from mlxlora.backends.mlx_loss import fused_cross_entropy  # noqa: E402
import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402
# isort: on

MB = 1e6
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]


def load(model: str):
    from mlxlora import config
    from mlxlora.models.resolve import resolve_model

    cfg = config.from_dict(
        {
            "model": model,
            "data": {"dataset": "x", "max_length": 512},
            "lora": {"rank": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": TARGETS},
            "training": {"batch_size": 2, "seed": 0},
        }
    )
    b = backend_mod.MLXBackend()
    b.load(resolve_model(model), cfg)
    mx.eval(b.model.parameters())
    return b


def step_peak(b, batch, layers, n_layers, forward_only=False):
    """(peak MB over the memory before the step, seconds) of one step on the first n layers."""
    b.model.model.layers = layers[:n_layers]
    b._value_and_grad = nn.value_and_grad(b.model, b._loss)
    mx.eval(b.model.parameters())
    mx.clear_cache()
    mx.synchronize()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    tic = time.perf_counter()
    if forward_only:
        tokens, positions, targets, _ = b._labels(batch)
        mx.eval(b._loss(b.model, tokens, positions, targets, train=False))
    else:
        b.accumulate(batch, seed=1)
        b._grads = None
    return (mx.get_peak_memory() - base) / MB, time.perf_counter() - tic


def piece(fn, *arrays, cot=None, repeat=3):
    """(peak MB over the inputs, seconds) of fn's forward + backward at these inputs."""

    def run():
        out, grads = mx.vjp(
            fn, list(arrays), [cot if cot is not None else mx.ones_like(fn(*arrays))]
        )
        mx.eval(out, grads)

    run()
    mx.clear_cache()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    run()
    peak = (mx.get_peak_memory() - base) / MB
    tic = time.perf_counter()
    for _ in range(repeat):
        run()
    return peak, (time.perf_counter() - tic) / repeat


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--attention", choices=["blocked", "mlx-fast", "both"], default="both")
    args = p.parse_args(argv)

    b = load(args.model)
    layers = list(b.model.model.layers)
    n_all = len(layers)
    rng = np.random.default_rng(0)
    from mlxlora.backends.base import Batch

    tokens = rng.integers(0, b.model.args.vocab_size, size=(2, 513)).astype(np.int32)
    batch = Batch(tokens, np.ones((2, 512), bool), tokens.size)
    T = 1024
    module = sys.modules[type(b.model).__module__]
    blocked = module.scaled_dot_product_attention
    from mlx_lm.models.base import scaled_dot_product_attention as mlx_fast

    print(f"model {args.model}: {n_all} layers, batch 2 x 512, LoRA r16 on {'/'.join(TARGETS)}")
    print(f"weights + LoRA allocated before the step: {mx.get_active_memory() / MB:.0f} MB\n")
    modes = ["mlx-fast", "blocked"] if args.attention == "both" else [args.attention]
    whole = {}
    print("| attention | layers | step peak MB | s | forward-only peak MB |")
    print("|---|---:|---:|---:|---:|")
    for mode in modes:
        module.scaled_dot_product_attention = blocked if mode == "blocked" else mlx_fast
        rows = {}
        for n in (1, 2, 8, n_all):
            step_peak(b, batch, layers, n)  # warm
            rows[n] = step_peak(b, batch, layers, n)
            fwd = step_peak(b, batch, layers, n, forward_only=True)[0]
            print(f"| {mode} | {n} | {rows[n][0]:.0f} | {rows[n][1]:.2f} | {fwd:.0f} |", flush=True)
        slope = (rows[n_all][0] - rows[2][0]) / (n_all - 2)
        print(f"| {mode} | per layer (slope 2..{n_all}) | {slope:.1f} | | |")
        print(f"| {mode} | intercept (loss chunks, embeddings) | {rows[1][0] - slope:.0f} | | |")
        whole[mode] = rows[n_all]
    module.scaled_dot_product_attention = blocked
    b.model.model.layers = layers

    # --- pieces at 2 x 512 -------------------------------------------------------------
    args_ = b.model.args
    H, KV = args_.num_attention_heads, args_.num_key_value_heads
    D = args_.hidden_size // H
    q = mx.random.normal((2, H, 512, D))
    k, v = mx.random.normal((2, KV, 512, D)), mx.random.normal((2, KV, 512, D))
    cot = mx.random.normal(q.shape)
    gate = mx.random.normal((2, 512, args_.intermediate_size))
    up = mx.random.normal(gate.shape)
    hid = mx.random.normal((2, 512, args_.hidden_size))
    w = mx.ones((args_.hidden_size,))
    mx.eval(q, k, v, cot, gate, up, hid, w)
    scale = D**-0.5
    from mlx_lm.models.activations import swiglu

    lin = b.model.model.layers[0].mlp.gate_proj  # a LoRALinear 576 -> 1536
    chunk = b._chunk_rows
    h_chunk = mx.random.normal((chunk, args_.hidden_size))
    t_chunk = mx.random.randint(0, args_.vocab_size, (chunk,))
    mx.eval(h_chunk, t_chunk)
    pieces = [
        (
            "attention, mx.fast CPU fallback (causal)",
            lambda q, k, v: mx.fast.scaled_dot_product_attention(
                q, k, v, scale=scale, mask="causal"
            ),
            (q, k, v),
            cot,
            n_all,
        ),
        (
            "attention, blocked_causal_attention",
            lambda q, k, v: blocked_causal_attention(q, k, v, scale),
            (q, k, v),
            cot,
            n_all,
        ),
        ("swiglu silu(gate)*up (compiled)", swiglu, (gate, up), gate, n_all),
        ("rms_norm (mx.fast)", lambda x: mx.fast.rms_norm(x, w, 1e-5), (hid,), hid, 2 * n_all),
        (
            "rope on q (mx.fast)",
            lambda x: mx.fast.rope(x, D, traditional=False, base=1e5, scale=1.0, offset=0),
            (q,),
            q,
            n_all,
        ),
        ("LoRALinear 576->1536 (frozen W + A, B)", lin, (hid,), gate, 2 * n_all),
        (
            f"fused loss chunk ({chunk} rows x vocab)",
            lambda h: fused_cross_entropy(b._head, h, t_chunk),
            (h_chunk,),
            None,
            1,
        ),
    ]
    print("\n| piece (forward + backward, 2 x 512) | peak MB | ms | x per step | s per step |")
    print("|---|---:|---:|---:|---:|")
    for name, fn, arrays, c, times in pieces:
        peak, sec = piece(fn, *arrays, cot=c)
        print(
            f"| {name} | {peak:.1f} | {sec * 1e3:.1f} | {times} | {sec * times:.2f} |", flush=True
        )

    # --- flops -------------------------------------------------------------------------
    total_params = sum(v.size for _, v in nn.utils.tree_flatten(b.model.parameters()))
    trainable = sum(v.size for _, v in nn.utils.tree_flatten(b.model.trainable_parameters()))
    # forward 2NT + activation grads 2NT (frozen), LoRA weight grads 2*trainable*T,
    # attention 4*B*H*L^2*D forward (q k^T and p v, causal half counted), x2 backward.
    attn = 4 * 2 * H * 512 * 512 * D * 0.5 * 3 * n_all
    flops = 4 * total_params * T + 2 * trainable * T + attn
    print(
        f"\nstep flops ~{flops / 1e9:.0f} GFLOP (4*N*T, N={total_params / 1e6:.0f}M incl. the tied "
        f"head, + LoRA grads + causal attention x3)"
    )
    for mode, (_, sec) in whole.items():
        print(
            f"{mode}: {sec:.2f} s a step = {T / sec:.0f} tokens/s, {flops / sec / 1e9:.0f} GFLOP/s"
        )
    a = mx.random.normal((1024, 576))
    W = mx.random.normal((1536, 576))
    mx.eval(a, W, a @ W.T)
    tic = time.perf_counter()
    for _ in range(10):
        mx.eval(a @ W.T)
    sec = (time.perf_counter() - tic) / 10
    print(f"one 1024x576x1536 matmul: {2 * 1024 * 576 * 1536 / sec / 1e9:.0f} GFLOP/s")
    x = mx.random.normal((4_718_592,))
    mx.eval(x)
    tic = time.perf_counter()
    for _ in range(5):
        mx.eval(mx.exp(x))
    print(f"mx.exp: {x.size * 5 / (time.perf_counter() - tic) / 1e6:.0f} M elements/s")
    print(f"MLX buffer cache after the run: {mx.get_cache_memory() / MB:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
