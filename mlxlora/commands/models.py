"""`mlxlora models`: the builtin models, GGUF models in Ollama's store, and recommended hub
models with their estimated training memory and what fits where."""

from __future__ import annotations

import json
import sys

from mlxlora import machine
from mlxlora.memory import TrainShape, estimate, fmt_bytes
from mlxlora.models.listing import (
    builtin_rows,
    builtin_tiny_info,
    ollama_rows,
    params_text,
    rows,
)


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
        here = fmt_bytes(row["train_bytes_this_machine"])
        console.print(
            f"  {row['id']:<22} {params_text(row['params']):>6}  ~{here} to train here "
            f"({batch})  {row['description']}; {state}",
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
            params_text(r["params"]),
            r["quant"],
            fmt_bytes(r["download_bytes"]),
            fmt_bytes(r["train_bytes"]),
            *(_fit_cell(r, name) for name in b),
        )
    console.print(table)
    here = (
        ""
        if machine.is_apple_silicon()
        else " (this machine: float32 on CPU, shown where it does not fit)"
    )
    console.print(
        f"[dim]train mem: weights + LoRA/Adam + activations + chunked-loss logits, bf16{here}. "
        "Budget: 3/4 of unified memory on a Mac. Too big? See the estimate with "
        "--batch-size 1 --max-length 1024 --grad-checkpoint here, then train with "
        "--set training.batch_size=1 --set training.grad_accumulation=4 "
        "--set data.max_length=1024 --set training.grad_checkpoint=true.[/]"
    )
    return 0
