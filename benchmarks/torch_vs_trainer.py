"""LoRA training throughput and peak memory: mlxlora's torch backend against the stock HF
`Trainer` + PEFT, on the workload of issue 12.

    python benchmarks/torch_vs_trainer.py [--shape llama-3.2-1b|qwen2.5-0.5b|all] [--steps N]
    python benchmarks/torch_vs_trainer.py --tiny        # a small llama on the CPU (tested)
    python benchmarks/torch_vs_trainer.py --sides stock,mlxlora,mlxlora-packed,mlxlora-compiled

Workload: the model's real architecture with random weights (seed 0; bf16 on CUDA, float32 on
a CPU), LoRA rank 16 alpha 32 on q/k/v/o/gate/up, batch 8, random token sequences of random
length 64-1024 (tiny: 16-128), every token after the first a target, learning rate 1e-4,
gradient clipping at 1.0 (the Trainer's default), one pass over batch x steps sequences.

* stock: `transformers.Trainer` (SDPA attention, per-batch right padding by a plain collator
  with -100 labels on padding, its own shuffled order), PEFT's `get_peft_model`.
* mlxlora: `TorchBackend` driven as the engine drives it: `batching.batch_order` (batches of
  similar length, so little padding), `collate`, `accumulate`, `update`, as `mlxlora train`
  runs it: padded rows with no attention mask (causal attention alone: right padding is never
  attended to, and SDPA can take its flash kernel).
* mlxlora-packed: each batch as one row of its sequences back to back, no padding, position
  ids restarting per sequence (transformers turns them into a block-diagonal mask for SDPA).

* mlxlora-compiled: mlxlora with `training.compile` (torch.compile of each transformer block,
  Inductor, dynamic shapes); its compilation happens in the warm-up step, outside the timing.
* mlxlora-cudnn: mlxlora with SDPA free to take its cuDNN kernel (torch's choice on Hopper),
  which the backend avoids: it builds a plan for every new sequence length, and here every
  batch has one (2026-11-26, H200: the 1B shape 17.3k tokens/s with it, 29.9k without).
* mlxlora-fp32lora: mlxlora with PEFT's default precision for the LoRA products (each adapted
  layer's input cast up to the float32 LoRA weights, no autocast), which the backend avoids on
  a half-precision base (torch_peft.half_precision_forward); the same as mlxlora on a CPU.
* mlxlora-plainnorm: mlxlora with transformers' own RMSNorm (~8 kernels forward, ~12 backward)
  instead of torch's rms_norm (torch_fused.fuse_rms_norms; one kernel each way on CUDA).
* mlxlora-unsynced: mlxlora with a step's loss and gradient norm never read back (a run
  reads them once the next step is queued, each a wait for the GPU): not a run (a run
  reports them and stops on a NaN), but the bound on what that reading costs. Its step
  times are the host's.
* mlxlora-profiled: mlxlora's first PROFILED_STEPS timed steps under torch.profiler (not a
  speed figure); prints the operators that took the most device time and the device time a
  step holds. Few steps: on an H200, 20 profiled steps of the 1B shape did not finish in 85 s.
* mlxlora-compiled-profiled: the same profile of the compiled step (which attention kernel
  the compiled blocks run, whether graphs are compiled again).

Each side runs in its own subprocess (peaks never mix), after untimed warm-up steps (the
longest batch and the shortest: torch.compile builds its graph for the first length it sees
and a dynamic one at the second, both before the timing); a side
that fails or passes --side-timeout is reported as such and the others still run.
Effective tokens/s: the real (non-padding) tokens of every sequence over the timed wall time.
Peak memory: CUDA `max_memory_allocated`; on a CPU the process's peak RSS (includes Python).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import random_models, step_times  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]
BATCH, RANK, ALPHA, LR = 8, 16, 32, 1e-4
SIDES = (
    "stock",
    "mlxlora",
    "mlxlora-packed",
    "mlxlora-compiled",
    "mlxlora-cudnn",
    "mlxlora-fp32lora",
    "mlxlora-plainnorm",
    "mlxlora-unsynced",
    "mlxlora-profiled",
    "mlxlora-compiled-profiled",
)
PROFILED_STEPS = 3
SHAPES = {
    "llama-3.2-1b": random_models.LLAMA_3_2_1B,
    "qwen2.5-0.5b": random_models.QWEN2_5_0_5B,
    "tiny": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1536,
        "tie_word_embeddings": True,
    },
}


def device_and_dtype():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def build_model(shape: str, dest: Path) -> None:
    """The shape's architecture with random weights (seed 0), HF format, builtin:tiny's
    tokenizer (the sequences are token ids; the backend only needs one to load)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mlxlora.models.resolve import resolve_model

    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    device, dtype = device_and_dtype()
    with device:  # random init on the GPU where there is one: a 1B model in seconds
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(dest)
    tokenizer_dir = resolve_model("builtin:tiny", progress=False)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, dest / name)


def sequences(shape: str, steps: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(0)
    low, high = (16, 128) if shape == "tiny" else (64, 1024)
    lengths = rng.integers(low, high + 1, BATCH * steps)
    vocab = SHAPES[shape]["vocab_size"]
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


def peak_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def run_stock(model_dir: Path, seqs: list[list[int]], workdir: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    device, dtype = device_and_dtype()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": ids.masked_fill(mask == 0, -100),
        }

    def trainer(data, steps):
        args = TrainingArguments(
            output_dir=str(workdir / "trainer"),
            per_device_train_batch_size=BATCH,
            max_steps=steps,
            learning_rate=LR,
            bf16=device.type == "cuda",
            use_cpu=device.type == "cpu",
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            remove_unused_columns=False,
            dataloader_num_workers=0,
            seed=0,
            disable_tqdm=True,
        )
        rows = [{"input_ids": s} for s in data]
        return Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)

    by_length = sorted(seqs, key=len)
    for warm_up in (by_length[-BATCH:], by_length[:BATCH]):  # as timed_steps warms mlxlora up
        trainer(warm_up, 1).train()
    reset_peak()
    timed = trainer(seqs, len(seqs) // BATCH)
    tic = time.perf_counter()
    timed.train()
    return timed_result(seqs, tic, padding=None)


def run_mlxlora(model_dir: Path, seqs: list[list[int]], flags: set[str]) -> dict:
    """The mlxlora side; `flags` are its name's parts after mlxlora- (see the docstring)."""
    from mlxlora import config
    from mlxlora.backends import torch_fused, torch_peft
    from mlxlora.backends.torch import TorchBackend
    from mlxlora.data import batching

    cfg = config.from_dict(
        {
            "model": str(model_dir),
            "backend": "torch",
            "data": {"dataset": "benchmark.jsonl"},
            "lora": {"rank": RANK, "alpha": ALPHA, "dropout": 0.0, "target_modules": TARGETS},
            "training": {
                "batch_size": BATCH,
                "learning_rate": LR,
                "grad_clip": 1.0,
                "seed": 0,
                "compile": "compiled" in flags,
            },
        }
    )
    # the sides that undo one of the backend's choices, before load sets them up
    if "cudnn" in flags:  # SDPA as torch picks its kernel
        torch_peft.varying_length_attention = contextlib.nullcontext
    if "plainnorm" in flags:  # transformers' own RMSNorm
        torch_fused.fuse_rms_norms = lambda model: 0
    if "fp32lora" in flags:  # PEFT's own precision for the LoRA products
        torch_peft.half_precision_forward = lambda *_: contextlib.nullcontext
    if "unsynced" in flags:
        leave_reads_on_device()
    backend = TorchBackend(pack="packed" in flags)
    backend.load(model_dir, cfg)
    examples = [batching.Example(tuple(s), 0) for s in seqs]
    order = batching.batch_order(examples, BATCH, 0, 0)

    unread = []

    def step(idx):  # as the engine steps: this step's numbers are read once the next is queued
        loss = backend.accumulate(batching.collate([examples[i] for i in idx]), seed=0)
        norm = backend.update(LR, 1.0)
        for value in unread:
            float(value)
        unread[:] = [loss, norm]

    return timed_steps(step, order, seqs, "packed" in flags, "profiled" in flags)


def leave_reads_on_device() -> None:
    """The mlxlora-unsynced side: a step's loss and gradient norm are never read."""
    from mlxlora.backends.torch import TorchBackend

    TorchBackend._read = lambda self, scalar, divisor=1: 0.0


def timed_steps(step, order: list, seqs: list[list[int]], pack: bool, profile: bool) -> dict:
    """Untimed warm-up steps (the longest batch, then the shortest), then the batches of
    `order`, timed."""
    import torch

    def longest(idx):
        return max(len(seqs[i]) for i in idx)

    for idx in (max(order, key=longest), min(order, key=longest)):
        tic = time.perf_counter()
        step(idx)  # a line each, so that a side cut off by its time limit says where it was
        print(
            f"warm-up step of {longest(idx)} tokens: {time.perf_counter() - tic:.1f} s, "
            f"{compiled_graphs()} graphs compiled",
            file=sys.stderr,
            flush=True,
        )
    reset_peak()
    profiler = profiled() if profile else contextlib.nullcontext()
    order = order[:PROFILED_STEPS] if profile else order
    trained = [seqs[i] for idx in order for i in idx]
    graphs_before = compiled_graphs()
    tic = time.perf_counter()
    padded, step_ends = 0, []
    with profiler:
        for idx in order:
            padded += len(idx) * max(len(seqs[i]) for i in idx)
            step(idx)  # reads the numbers of the step before it (as a run does)
            step_ends.append(time.perf_counter())
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    real = sum(len(s) for s in trained)
    result = timed_result(trained, tic, padding=0.0 if pack else 1 - real / padded)
    # a slow compiled side: graphs compiled again in the timed steps, or slow steps throughout?
    result["step_seconds"] = [b - a for a, b in zip([tic, *step_ends[:-1]], step_ends, strict=True)]
    result["graphs_compiled_while_timed"] = compiled_graphs() - graphs_before
    if profile:
        print_profile(profiler, result["seconds"], len(order))
    return result


def compiled_graphs() -> int:
    """How many graphs torch.compile has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def profiled():
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device_and_dtype()[0].type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    return profile(activities=activities)


def print_profile(profiler, seconds: float, steps: int) -> None:
    """The operators with the most self device time (CPU time without a GPU), and the device
    time a step holds: against the unprofiled step's time, how long the GPU waits for Python."""
    events = profiler.key_averages()
    device = "device" if device_and_dtype()[0].type == "cuda" else "cpu"
    key = f"self_{device}_time_total"
    print(events.table(sort_by=key, row_limit=30))
    busy = busy_seconds(events, device)
    print(
        f"{device} busy {busy:.3f} s of {seconds:.2f} s profiled wall ({busy / seconds:.0%}),"
        f" {busy / steps:.3f} s a step"
    )


def busy_seconds(events, device: str) -> float:
    """The device's own time in a profile. On a GPU each kernel's time appears twice, as the
    kernel and as the self device time of the operator that launched it: only kernels count
    (as the profiler's own table total counts them)."""
    from torch.autograd import DeviceType

    if device == "cpu":
        return sum(e.self_cpu_time_total for e in events) / 1e6
    kernels = (e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
    return sum(e.self_device_time_total for e in kernels) / 1e6


def timed_result(seqs, tic: float, padding: float | None) -> dict:
    seconds = time.perf_counter() - tic
    tokens = sum(len(s) for s in seqs)
    return {
        "tokens_per_sec": tokens / seconds,
        "seconds": seconds,
        "tokens": tokens,
        "peak_bytes": peak_bytes(),
        "padding_fraction": padding,
    }


def child(args) -> None:
    seqs = json.loads(Path(args.data).read_text())
    if args.side == "stock":
        result = run_stock(Path(args.model_dir), seqs, Path(args.data).parent)
    else:
        flags = set(args.side.split("-")[1:])  # mlxlora-compiled-profiled: both
        result = run_mlxlora(Path(args.model_dir), seqs, flags)
    print("RESULT " + json.dumps(result), flush=True)


def run_side(side: str, model_dir: Path, data: Path, timeout: float) -> dict:
    """The side's result, or {"error": why} when it failed or ran past `timeout` seconds."""
    command = [sys.executable, __file__, "--child", side, "--model-dir", str(model_dir)]
    command += ["--data", str(data)]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as cut:
        stderr = cut.stderr.decode() if isinstance(cut.stderr, bytes) else cut.stderr or ""
        warm_ups = "; ".join(x for x in stderr.splitlines() if x.startswith("warm-up step"))
        return {"error": f"ran past {timeout:.0f} s" + (f" ({warm_ups})" if warm_ups else "")}
    if out.returncode != 0:
        print(f"{side} failed:\n{out.stderr[-4000:]}", file=sys.stderr)
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    lines = out.stdout.splitlines()
    if side.endswith("profiled"):
        print("\n".join(x for x in lines if not x.startswith("RESULT ")))
    line = next(x for x in lines if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def step_spread(result: dict) -> str:
    """The median and slowest timed step, and the graphs compiled among them (mlxlora sides)."""
    graphs = result.get("graphs_compiled_while_timed")
    compiled = f", {graphs} graphs compiled while timed" if graphs else ""
    return step_times.spread(result.get("step_seconds", [])) + compiled


def bench_shape(shape: str, steps: int, sides: list[str], workdir: Path, timeout: float):
    model_dir = workdir / shape
    build_model(shape, model_dir)
    data = workdir / f"{shape}.json"
    seqs = sequences(shape, steps)
    data.write_text(json.dumps(seqs))
    print(f"\n{shape}: {steps} steps of batch {BATCH} ({sum(map(len, seqs))} real tokens)")
    results = {}
    for side in sides:  # each line as its side ends: a run cut short keeps what it measured
        results[side] = r = run_side(side, model_dir, data, timeout)
        if "error" in r:
            print(f"  {side:16s} {r['error']}", flush=True)
            continue
        pad = "" if r["padding_fraction"] is None else f", padding {r['padding_fraction']:.0%}"
        print(
            f"  {side:16s} {r['tokens_per_sec']:10.1f} tok/s  peak {r['peak_bytes'] / 1e9:6.3f} GB"
            f"  ({r['seconds']:.1f} s{pad}{step_spread(r)})",
            flush=True,
        )
    summary = {"shape": shape, **results}
    stock = results.get("stock", {"error": "not run"})
    for side, r in results.items():
        if side == "stock" or "error" in r or "error" in stock:
            continue
        speed = r["tokens_per_sec"] / stock["tokens_per_sec"]
        memory = r["peak_bytes"] / stock["peak_bytes"]
        key = "" if side == "mlxlora" else side.removeprefix("mlxlora-") + "_"
        summary[f"{key}speed_ratio"], summary[f"{key}memory_ratio"] = speed, memory
        print(f"  {side:16s} {speed:6.2f}x speed  {memory:6.2f}x peak memory (vs stock)")
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="all", choices=[*SHAPES, "all"])
    parser.add_argument("--tiny", action="store_true", help="the tiny shape (CPU-friendly)")
    parser.add_argument("--steps", type=int, default=None, help="default 20 (tiny: 3)")
    parser.add_argument(
        "--sides", default="stock,mlxlora", help=f"comma-separated, of {', '.join(SIDES)}"
    )
    parser.add_argument("--side-timeout", type=float, default=1800, help="seconds per side")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=SIDES, dest="side")
    parser.add_argument("--model-dir")
    parser.add_argument("--data")
    args = parser.parse_args(argv)
    if args.side:
        return child(args)
    shapes = ["tiny"] if args.tiny else [s for s in SHAPES if s != "tiny"]
    if args.shape != "all" and not args.tiny:
        shapes = [args.shape]
    device, dtype = device_and_dtype()
    print(f"device {device}, {dtype}; other processes may share this machine")
    sides = args.sides.split(",")
    if not set(sides) <= set(SIDES):
        parser.error(f"--sides: any of {', '.join(SIDES)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="torch-bench-") as tmp:
        for shape in shapes:
            steps = args.steps or (3 if shape == "tiny" else 20)
            results.append(bench_shape(shape, steps, sides, Path(tmp), args.side_timeout))
            if args.json:  # after each shape: a later failure keeps the figures so far
                args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
