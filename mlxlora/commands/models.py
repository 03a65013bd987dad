"""`mlxlora models`: the builtin models, GGUF models in Ollama's store, and recommended hub
models with their estimated training memory and what fits where."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from mlxlora.memory import (
    GIB,
    TrainShape,
    estimate,
    fmt_bytes,
    is_apple_silicon,
    memory_budget,
    unified_budget,
)
from mlxlora.models import ollama
from mlxlora.models.catalog import CATALOG, find
from mlxlora.models.resolve import BUILTINS, SMOLLM2_INSTALL, find_smollm2_gguf

MAC_SIZES_GB = (16, 24, 32)  # M4 MacBook Air configurations


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="recommended models and whether training them fits in memory",
        description="Recommended hub models with their estimated LoRA training memory "
        "(rank 8 on q_proj/v_proj over all layers) and whether that fits on this machine and "
        "on 16 / 24 / 32 GB M4 MacBook Airs (budget: 3/4 of unified memory).",
    )
    p.add_argument("--batch-size", type=int, default=4, help="sequences per batch (default 4)")
    p.add_argument(
        "--max-length", type=int, default=2048, help="tokens per sequence (default 2048)"
    )
    p.add_argument("--grad-checkpoint", action="store_true", help="estimate with checkpointing")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def budgets() -> dict[str, int | None]:
    """Training budgets by column name: this machine, then the Mac sizes."""
    out: dict[str, int | None] = {"this machine": memory_budget()}
    for gb in MAC_SIZES_GB:
        out[f"{gb} GB Mac"] = unified_budget(gb * GIB)
    return out


def builtin_tiny_info() -> dict:
    from mlxlora.models.builtin import ARCH, VOCAB_SIZE

    h, inter, layers = ARCH["hidden_size"], ARCH["intermediate_size"], ARCH["num_hidden_layers"]
    kv = ARCH["num_key_value_heads"] * h // ARCH["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h
    params = VOCAB_SIZE * h + layers * per_layer + h
    return {
        **ARCH,
        "vocab_size": VOCAB_SIZE,
        "params": params,
        "quantization": None,
        "weight_bytes": params * 4,
    }


def builtin_rows(shape: TrainShape) -> list[dict]:
    """builtin:tiny and builtin:smollm2-135m: size, training memory, installed or how to."""
    tiny = builtin_tiny_info()
    smol = find("HuggingFaceTB/SmolLM2-135M-Instruct")
    smol_file = find_smollm2_gguf()
    return [
        {
            "id": "builtin:tiny",
            "description": BUILTINS["tiny"],
            "params": tiny["params"],
            "train_bytes": estimate(tiny, shape).total,
            "installed": True,
            "install": None,
            "path": None,
        },
        {
            "id": "builtin:smollm2-135m",
            "description": BUILTINS["smollm2-135m"],
            "params": smol.params,
            "train_bytes": estimate(smol.info(), shape).total,
            "installed": smol_file is not None,
            "install": None if smol_file else SMOLLM2_INSTALL,
            "path": str(smol_file) if smol_file else None,
        },
    ]


def ollama_rows() -> dict:
    """The GGUF models in Ollama's local store (manifests only; nothing is converted)."""
    store = ollama.store_dir()
    models = [
        {"id": f"ollama:{e.ref}", "size_bytes": e.size, "path": str(e.gguf_path)}
        for e in ollama.entries(store)
    ]
    return {"store": str(store), "exists": store.is_dir(), "models": models}


def rows(shape: TrainShape) -> tuple[dict[str, int | None], list[dict]]:
    """(budgets, one dict per catalog model) — what the table and --json show."""
    b = budgets()
    # On a Mac the model trains in its own dtype (bf16) with fused attention; elsewhere MLX's
    # CPU backend computes in float32 with unfused attention (every layer keeps its scores).
    here = shape if is_apple_silicon() else replace(shape, dtype_bytes=4, fused_attention=False)
    out = []
    for m in CATALOG:
        mac = estimate(m.info(), shape)
        local = estimate(m.info(), here)
        fits = {
            name: (
                None
                if budget is None
                else (local if name == "this machine" else mac).total <= budget
            )
            for name, budget in b.items()
        }
        out.append(
            {
                "id": m.id,
                "hf_id": m.hf_id,
                "params": m.params,
                "quant": m.quant,
                "download_bytes": m.download_bytes,
                "train_bytes": mac.total,
                "train_bytes_this_machine": local.total,
                "fits": fits,
                "note": m.note,
            }
        )
    return b, out


def _params(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _mark(ok: bool | None) -> str:
    return "?" if ok is None else ("[green]✓[/]" if ok else "[red]✗[/]")


def _fit_cell(row: dict, column: str) -> str:
    """✓/✗ for a budget column; a ✗ on this machine shows its own (float32 on CPU) estimate,
    which is why a model that fits a smaller Mac may not fit here."""
    ok = row["fits"][column]
    if (
        ok is False
        and column == "this machine"
        and row["train_bytes_this_machine"] != row["train_bytes"]
    ):
        return f"{_mark(ok)} {fmt_bytes(row['train_bytes_this_machine'])}"
    return _mark(ok)


def run(args) -> int:
    shape = TrainShape(
        batch_size=args.batch_size, max_length=args.max_length, grad_checkpoint=args.grad_checkpoint
    )
    b, models = rows(shape)
    tiny = estimate(builtin_tiny_info(), shape)
    builtins = builtin_rows(shape)
    local = ollama_rows()
    if args.json:
        print(
            json.dumps(
                {
                    "batch_size": shape.batch_size,
                    "max_length": shape.max_length,
                    "lora": {
                        "rank": shape.lora_rank,
                        "targets": list(shape.lora_targets),
                        "layers": "all",
                    },
                    "grad_checkpoint": shape.grad_checkpoint,
                    "budgets": b,
                    "models": models,
                    "builtin": {
                        "id": "builtin:tiny",
                        "params": builtin_tiny_info()["params"],
                        "train_bytes": tiny.total,
                    },
                    "builtins": builtins,
                    "ollama": local,
                },
                indent=2,
            )
        )
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160, file=sys.stdout)
    batch = f"batch {shape.batch_size} x {shape.max_length}"
    console.print("[bold]Built in[/] (model: ...)")
    for row in builtins:
        state = (
            "[green]installed[/]"
            if row["installed"]
            else f"[yellow]not installed[/]: {row['install']}"
        )
        console.print(
            f"  {row['id']:<22} {_params(row['params']):>6}  ~{fmt_bytes(row['train_bytes'])} "
            f"to train ({batch})  {row['description']}; {state}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"[bold]Ollama[/] (model: ollama:NAME:TAG) — store {local['store']}", soft_wrap=True
    )
    if not local["models"]:
        why = "no models" if local["exists"] else "not found (set OLLAMA_MODELS)"
        console.print(f"  {why}; `ollama pull NAME` adds one", highlight=False, soft_wrap=True)
    for row in local["models"]:
        console.print(f"  {row['id']:<40} {fmt_bytes(row['size_bytes']):>9}", highlight=False)
    console.print()
    table = Table(
        title=f"Recommended models — LoRA r{shape.lora_rank} on q/v, all layers, "
        f"batch {shape.batch_size} x {shape.max_length} tokens"
        + (", grad checkpointing" if shape.grad_checkpoint else ""),
        title_justify="left",
    )
    table.add_column("model (model: ...) / original HF id", no_wrap=True)
    table.add_column("params", justify="right")
    table.add_column("quant")
    table.add_column("download", justify="right")
    table.add_column(f"train mem\n{shape.batch_size} x {shape.max_length}", justify="right")
    for name, budget in b.items():
        label = name if budget is None else f"{name}\n({fmt_bytes(budget)})"
        table.add_column(label, justify="center")
    for r in models:
        table.add_row(
            f"{r['id']}\n[dim]{r['hf_id']}[/]",
            _params(r["params"]),
            r["quant"],
            fmt_bytes(r["download_bytes"]),
            fmt_bytes(r["train_bytes"]),
            *(_fit_cell(r, name) for name in b),
        )
    console.print(table)
    here = (
        "" if is_apple_silicon() else " (this machine: float32 on CPU, shown where it does not fit)"
    )
    console.print(
        f"[dim]train mem: weights + LoRA/Adam + activations + chunked-loss logits, bf16{here}. "
        "Budget: 3/4 of unified memory on a Mac. Too big? See the estimate with "
        "--batch-size 1 --max-length 1024 --grad-checkpoint here, then train with "
        "--set training.batch_size=1 --set training.grad_accumulation=4 "
        "--set data.max_length=1024 --set training.grad_checkpoint=true.[/]"
    )
    return 0
