"""The training memory estimate against MLX's measured peak, over issue 11's matrix.

    python benchmarks/memory_matrix.py                 # the whole matrix (~GBs, long)
    python benchmarks/memory_matrix.py --thin          # a slice that stays under ~6 GB
    python benchmarks/memory_matrix.py --quick         # five cells, one step each
    python benchmarks/memory_matrix.py --axes          # one more cell per axis, one step each
    python benchmarks/memory_matrix.py --fit           # SmolLM2 4 x 1024 fitted to 2/4/8 GB
    python benchmarks/memory_matrix.py --unfused       # a GPU's attention rule, on the CPU
    python benchmarks/memory_matrix.py --torch         # the torch backend (its CPU peak)
    python benchmarks/memory_matrix.py --largest       # 4 x 2048, 8 x 2048 on 8 of 30 layers
    python benchmarks/memory_matrix.py --rebuilt       # 2 x 4096, 1 x 8192 checkpointed, ...
    python benchmarks/memory_matrix.py --case '{...}'  # one case (what each subprocess runs)

Each case runs in a fresh subprocess: the MLX backend loads the model as a run would
(MLXBackend.load with the case's config), trains `steps` optimizer steps on synthetic batches
of `max_length` random tokens, every position labelled (the estimate's worst case), and
prints the estimate (memory.estimate on the shape run_memory.memory_check builds) and
mx.get_peak_memory() over the whole process (loading included, as the run summary reports).
Models: SmolLM2-135M (builtin:smollm2-135m, vocab 49,152), the same quantized to 4 bits and
kept quantized, and a random qwen2 model with Qwen2.5's vocabulary (151,936) and a small
hidden size (256, 4 layers).

`--unfused` trains with mx.fast.scaled_dot_product_attention instead of the CPU's blocked
attention: on a CPU it is the same unfused graph Metal trains with (MLX falls back to it while
differentiating), so the "unfused" rule of memory.ATTENTION_MODES is measured here in float32.
With MLX_BFS_MAX_WIDTH set above 1 (MLX's default, 20, is what a GPU keeps) the cases run
breadth-first and are estimated with the breadth-first rules.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import random_models  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
QWEN_LAYOUT = {
    "model_type": "qwen2",
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 1024,
    "vocab_size": 151936,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1e6,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}
# SmolLM2-135M's layout with random weights, for cells that SmolLM2 at its 30 layers would
# take past this machine's memory: `smollm2-layers-N` keeps N of them
SMOLLM2_LAYOUT = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1e5,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}
GB = 1e9


def model_dir(name: str, cache: Path) -> Path:
    """The model directory of a case's model name, built into `cache` on first use."""
    from mlxlora.models.resolve import resolve_model

    if name in ("smollm2", "smollm2-4bit"):  # the GGUF converts to a 4-bit MLX model
        return resolve_model("builtin:smollm2-135m")
    if name == "tiny":
        return resolve_model("builtin:tiny")
    dest = cache / name
    if (dest / "config.json").exists():
        return dest
    if name == "qwen-layout":
        return random_models.random_model(QWEN_LAYOUT, dest)
    if name.startswith("smollm2-layers-"):
        layers = int(name.removeprefix("smollm2-layers-"))
        return random_models.random_model({**SMOLLM2_LAYOUT, "num_hidden_layers": layers}, dest)
    raise SystemExit(f"unknown model {name}")


def case_config(case: dict) -> dict:
    return {
        "model": case["model_dir"],
        "backend": case.get("backend", "mlx"),
        # SmolLM2's GGUF converts to 4 bits: float32 weights unless the case keeps them
        "quantized_base": "keep" if case["model"].endswith("4bit") else "dequantize",
        "data": {"dataset": "x", "max_length": case["max_length"]},
        "lora": {
            "rank": case["rank"],
            "alpha": 2.0 * case["rank"],
            "dropout": 0.0,
            "target_modules": case["targets"],
        },
        "training": {
            "batch_size": case["batch"],
            "grad_accumulation": case.get("accum", 1),
            "grad_checkpoint": case["ckpt"],
            "loss_chunk_rows": case.get("chunk", 0),
            "seed": 0,
        },
    }


def run_case(case: dict) -> dict:
    """One case in this process: (estimate breakdown, measured peak) as a dict."""
    from mlxlora.backends import mlx as backend_mod  # noqa: I001  (loads OpenBLAS before mlx)
    import mlx.core as mx
    import numpy as np

    from dataclasses import replace

    from mlxlora import config, memory
    from mlxlora.backends.base import Batch
    from mlxlora.models.info import model_info
    from mlxlora.run_memory import train_shape

    if case.get("unfused"):  # mx.fast's attention, as on a GPU
        backend_mod.use_blocked_attention = lambda model: False
    cfg = config.from_dict(case_config(case))
    if cfg.backend == "torch":
        from mlxlora.backends.torch import TorchBackend

        backend = TorchBackend()
    else:
        backend = backend_mod.MLXBackend()
    backend.load(Path(case["model_dir"]), cfg)
    info = model_info(case["model_dir"])
    shape = train_shape(cfg, backend, case["max_length"])
    if case.get("unfused"):
        shape = replace(shape, attention="unfused")
    est = memory.estimate(info, shape, weights=backend.weight_bytes())
    rng = np.random.default_rng(0)
    B, L = case["batch"], case["max_length"]
    vocab = info["vocab_size"]
    losses = []
    for step in range(case.get("steps", 2)):
        for micro in range(case.get("accum", 1)):
            tokens = rng.integers(0, vocab, size=(B, L + 1)).astype(np.int32)
            batch = Batch(tokens, np.ones((B, L), bool), B * L)
            losses.append(backend.accumulate(batch, seed=step * 64 + micro))
        backend.update(1e-4, 1.0)
    return {
        "estimate": est.total,
        "breakdown": est.breakdown(),
        # MLX's allocator peak; torch on a CPU: the process's resident peak since loading
        "measured": mx.get_peak_memory() if cfg.backend == "mlx" else backend.peak_memory_bytes(),
        "losses": losses,
    }


def measure(case: dict, cache: Path) -> dict:
    """run_case in a fresh subprocess (so no peak or buffer cache carries over)."""
    case = {**case, "model_dir": str(model_dir(case["model"], cache))}
    out = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise SystemExit(f"case {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def matrix(thin: bool) -> list[dict]:
    """Issue 11's matrix; `thin` keeps the cells under ~6 GB on this CPU (float32)."""
    cases = []
    base = {"model": "smollm2", "rank": 16, "targets": ALL_LINEAR[:6], "accum": 1}
    batches, lengths = ((1, 2, 4), (256, 1024)) if thin else ((1, 2, 4, 8), (256, 512, 1024, 2048))
    for b, length, ckpt in itertools.product(batches, lengths, (False, True)):
        if thin and b * length > 2048 and not ckpt:
            continue
        cases.append({**base, "batch": b, "max_length": length, "ckpt": ckpt})
    for rank, targets in itertools.product((8, 64), (ATTENTION, ALL_LINEAR)):
        if thin and rank == 8:
            continue
        cases.append(
            {**base, "rank": rank, "targets": targets, "batch": 2, "max_length": 512, "ckpt": False}
        )
    cases.append({**base, "batch": 1, "max_length": 512, "ckpt": False, "accum": 4})
    for model in ("qwen-layout", "smollm2-4bit"):
        for b, length, ckpt in (
            (1, 512, False),
            (2, 1024, False),
            (2, 1024, True),
            (4, 2048, True),
        ):
            if thin and b * length > 2048 and not ckpt:
                continue
            cases.append({**base, "model": model, "batch": b, "max_length": length, "ckpt": ckpt})
    return cases


def quick() -> list[dict]:
    """Five cells, one optimizer step each: what a loaded 2-core machine measures in minutes."""
    base = {"rank": 16, "targets": ALL_LINEAR[:6], "steps": 1}
    cells = [
        ("smollm2", 2, 512, False),
        ("smollm2", 4, 1024, True),
        ("smollm2-4bit", 1, 512, False),
        ("qwen-layout", 1, 512, False),
        ("qwen-layout", 2, 1024, True),
    ]
    return [{**base, "model": m, "batch": b, "max_length": n, "ckpt": c} for m, b, n, c in cells]


def axes() -> list[dict]:
    """Past --quick, each axis of the matrix once at a size a shared 2-core machine affords:
    length 2048, batch 8, rank 64 attention-only, rank 8 all linear, accumulation, and the two
    builtin:tiny cells of the CI test."""
    base = {"model": "smollm2", "rank": 16, "targets": ALL_LINEAR[:6], "steps": 1}
    return [
        {**base, "batch": 1, "max_length": 2048, "ckpt": True},
        {**base, "batch": 8, "max_length": 256, "ckpt": False},
        {**base, "rank": 64, "targets": ATTENTION, "batch": 2, "max_length": 512, "ckpt": False},
        {**base, "rank": 8, "targets": ALL_LINEAR, "batch": 2, "max_length": 512, "ckpt": False},
        {**base, "batch": 1, "max_length": 512, "ckpt": False, "accum": 4},
        {**base, "model": "tiny", "rank": 8, "batch": 2, "max_length": 256, "ckpt": False},
        {**base, "model": "tiny", "rank": 8, "batch": 4, "max_length": 512, "ckpt": True},
    ]


def unfused() -> list[dict]:
    """Cells without checkpointing, where the unfused rule counts every layer's
    probabilities: SmolLM2 (9 heads, 30 layers) at 512-2048 and the GQA qwen layout."""
    base = {"model": "smollm2", "rank": 16, "targets": ALL_LINEAR[:6], "steps": 1, "ckpt": False}
    cells = [("smollm2", 2, 512), ("smollm2", 4, 512), ("smollm2", 1, 1024), ("smollm2", 2, 1024)]
    cells += [("smollm2", 1, 2048), ("qwen-layout", 2, 1024), ("qwen-layout", 2, 2048)]
    return [{**base, "model": m, "batch": b, "max_length": n, "unfused": True} for m, b, n in cells]


def largest() -> list[dict]:
    """The whole matrix's two largest cells, SmolLM2 4 x 2048 and 8 x 2048 without
    checkpointing (estimates 24 and 47 GB at its 30 layers), on its layout with 8 layers: what
    grows with the layers (saved activations, attention) is counted per layer, and what does
    not (weights aside, the loss chunks) is the same. 8 x 1024, measured at 30 layers
    (1.09), is the control: the shallow model must read the ratio the whole one did."""
    base = {"model": "smollm2-layers-8", "rank": 16, "targets": ALL_LINEAR[:6], "steps": 1}
    cells = [(8, 1024), (4, 2048), (8, 2048)]
    return [{**base, "batch": b, "max_length": n, "ckpt": False} for b, n in cells]


def rebuilt() -> list[dict]:
    """Checkpointed SmolLM2 where the block rebuilt in backward outgrows the loss (its
    attention at 4096 and 8192 tokens a sequence), and with loss chunks set smaller by hand."""
    base = {"model": "smollm2", "rank": 16, "targets": ALL_LINEAR[:6], "steps": 1, "ckpt": True}
    cells = [{**base, "batch": 2, "max_length": 4096}, {**base, "batch": 1, "max_length": 8192}]
    return cells + [{**base, "batch": 4, "max_length": 1024, "chunk": rows} for rows in (64, 170)]


def torch_cells() -> list[dict]:
    """The torch backend on this CPU: SmolLM2 with and without checkpointing, and builtin:tiny.
    Its measured peak is the process's resident one, glibc's heap included (benchmarks/README:
    run under MALLOC_MMAP_THRESHOLD_=131072 for the live peak)."""
    base = {"backend": "torch", "rank": 16, "targets": ALL_LINEAR[:6], "steps": 2}
    cells = [("smollm2", 2, 512), ("smollm2", 4, 1024), ("tiny", 4, 512)]
    return [
        {**base, "model": m, "batch": b, "max_length": n, "ckpt": ckpt}
        for m, b, n in cells
        for ckpt in (False, True)
    ]


def fitted(budget_gb: float) -> dict:
    """SmolLM2 at 4 x 1024 (r16, q/k/v/o/gate/up) as training.fit chooses it for a budget."""
    from mlxlora import config
    from mlxlora.backends import select
    from mlxlora.run_memory import fit_config

    case = {
        "model": "smollm2",
        "rank": 16,
        "targets": ALL_LINEAR[:6],
        "batch": 4,
        "max_length": 1024,
        "ckpt": False,
        "steps": 1,
    }
    data = case_config({**case, "model_dir": "builtin:smollm2-135m"})
    data["training"]["memory_budget"] = f"{budget_gb}GB"
    cfg = config.from_dict(data)
    cfg, event = fit_config(cfg, model_dir("smollm2", Path(".")), select.create("mlx"))
    t = cfg.training
    return {
        **case,
        "batch": t.batch_size,
        "accum": t.grad_accumulation,
        "ckpt": t.grad_checkpoint,
        "chunk": t.loss_chunk_rows,
        "fit": event.to_dict(),
        "budget": int(budget_gb * GB),
    }


def step_losses(case: dict, result: dict) -> list[float]:
    """Each optimizer step's loss: the mean of its micro-batches' (every position labelled,
    every micro-batch as long, so each counts the same)."""
    accum = case.get("accum", 1)
    micro = result["losses"]
    return [sum(micro[i : i + accum]) / accum for i in range(0, len(micro), accum)]


def fit_table(budgets: list[float], cache: Path) -> None:
    """Each budget's fitted configuration measured, and its step losses against the unfitted
    run's (the same effective batch on the same tokens: the same math)."""
    unfitted = {**fitted(max(budgets)), "batch": 4, "accum": 1, "ckpt": False, "chunk": 0}
    reference = step_losses(unfitted, measure({**unfitted, "steps": 2}, cache))
    print(f"unfitted {describe(unfitted)}: step losses {', '.join(f'{x:.5f}' for x in reference)}")
    print("| budget | fitted | estimate GB | measured GB | under budget | step losses | max diff |")
    print("|---|---|---:|---:|---|---|---:|")
    for gb in budgets:
        case = {**fitted(gb), "steps": 2}
        r = measure(case, cache)
        losses = step_losses(case, r)
        diff = max(abs(a - b) for a, b in zip(losses, reference, strict=True))
        chunk = f" chunk {case['chunk']}" if case["chunk"] else ""
        print(
            f"| {gb} GB | {describe(case)}{chunk} | {r['estimate'] / GB:.2f} | "
            f"{r['measured'] / GB:.2f} | {r['measured'] <= case['budget']} | "
            f"{', '.join(f'{x:.5f}' for x in losses)} | {diff:.1e} |",
            flush=True,
        )


def describe(case: dict) -> str:
    targets = "attn" if case["targets"] == ATTENTION else f"{len(case['targets'])} linear"
    targets += ", unfused attention" if case.get("unfused") else ""
    targets += ", torch" if case.get("backend") == "torch" else ""
    accum = f" x{case['accum']} acc" if case.get("accum", 1) > 1 else ""
    targets += f", {case['chunk']}-row loss chunks" if case.get("chunk") else ""
    return (
        f"{case['model']} | {case['batch']} x {case['max_length']}{accum} | "
        f"{'on' if case['ckpt'] else 'off'} | r{case['rank']} {targets}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", help="run one case (JSON) here and print its result as JSON")
    p.add_argument("--thin", action="store_true", help="the slice that stays under ~6 GB")
    p.add_argument("--quick", action="store_true", help="five cells, one step each")
    p.add_argument("--axes", action="store_true", help="one more cell per axis, one step each")
    p.add_argument("--unfused", action="store_true", help="a GPU's attention rule, on the CPU")
    p.add_argument("--torch", action="store_true", help="the torch backend's cells")
    p.add_argument("--largest", action="store_true", help="the two largest cells, 8 layers")
    p.add_argument("--rebuilt", action="store_true", help="checkpointed, the rebuilt block large")
    p.add_argument(
        "--fit",
        nargs="*",
        type=float,
        metavar="GB",
        help="SmolLM2 4 x 1024 fitted to these budgets (default 2 4 8)",
    )
    p.add_argument("--cache", type=Path, default=Path("/tmp/mlxlora-memory-matrix"))
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0
    if args.fit is not None:
        fit_table(args.fit or [2, 4, 8], args.cache)
        return 0
    print("| model | batch x length | ckpt | LoRA | estimate GB | measured GB | ratio |")
    print("|---|---|---|---|---:|---:|---:|")
    ratios = []
    chosen = {
        "quick": quick,
        "axes": axes,
        "unfused": unfused,
        "torch": torch_cells,
        "largest": largest,
        "rebuilt": rebuilt,
    }
    picked = next((cells for flag, cells in chosen.items() if getattr(args, flag)), None)
    cases = picked() if picked else matrix(args.thin)
    for case in cases:
        r = measure(case, args.cache)
        ratio = r["estimate"] / r["measured"]
        ratios.append(ratio)
        print(
            f"| {describe(case)} | {r['estimate'] / GB:.2f} | {r['measured'] / GB:.2f} | "
            f"{ratio:.2f} |",
            flush=True,
        )
    print(
        f"\nratio estimate/measured: min {min(ratios):.2f}, max {max(ratios):.2f} "
        f"(goal: 0.95 <= ratio <= 1.15)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
