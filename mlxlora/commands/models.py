"""`mlxlora models`: the builtin models, GGUF models in Ollama's store, and recommended hub
models with their estimated training memory and what fits where."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

from mlxlora import machine
from mlxlora.memory import TrainShape, fmt_bytes
from mlxlora.models.listing import (
    builtin_rows,
    builtin_tiny_info,
    ollama_rows,
    on_a_mac,
    params_text,
    rows,
)

HUB_PREFIX = "mlx-community/"


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="recommended models and whether training them fits in memory",
        description="Recommended hub models with their estimated LoRA training memory "
        "(rank 8 on q_proj/v_proj over all layers, or a config's LoRA) and whether that fits "
        "on this machine and on 16 / 24 / 32 GB M4 MacBook Airs (budget: 3/4 of unified "
        "memory).",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="estimate for this config's LoRA (rank, target modules, layers), batch, "
        "accumulation, max length and checkpointing; the options below change it",
    )
    p.add_argument(
        "--batch-size", type=int, help="sequences per batch (default 4, or the config's)"
    )
    p.add_argument(
        "--max-length", type=int, help="tokens per sequence (default 2048, or the config's)"
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


def _shape(args) -> TrainShape:
    """The shape to estimate: a config's (the tutorial's level-3 LoRA, r16 on six
    projections, which the defaults' r8 on q/v under-counted), then the options."""
    shape = TrainShape()
    if args.config:
        from mlxlora import config

        shape = TrainShape.from_config(config.load(args.config))
    given = {"batch_size": args.batch_size, "max_length": args.max_length}
    shape = replace(shape, **{key: value for key, value in given.items() if value is not None})
    return replace(shape, grad_checkpoint=args.grad_checkpoint or shape.grad_checkpoint)


def run(args) -> int:
    shape = _shape(args)
    if machine.maybe_cuda():  # torch may train on the GPU: ask the backend (imports it)
        from mlxlora.commands.doctor import learn_device

        try:
            learn_device()
        except Exception:  # noqa: BLE001 - a broken torch or CUDA install: the CPU's guess
            pass
    b, models = rows(shape)
    tiny = on_a_mac(builtin_tiny_info(), shape)
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

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160, file=sys.stdout)  # a file or a pager: the full table
    _print_local(console, shape, builtins, local)
    table = _table(shape, b, models, compact=False)
    unlimited = console.options.update_width(10_000)
    if console.measure(table, options=unlimited).maximum > console.width:
        table = _table(shape, b, models, compact=True)
    console.print(table)
    here = (
        " (this machine: float32 on CPU, shown where it does not fit)"
        if machine.training_device().on_cpu
        else ""
    )
    console.print(
        f"[dim]train mem: weights + LoRA/Adam + activations + chunked-loss logits, bf16{here}. "
        "Budget: 3/4 of unified memory on a Mac. Too big? See one shape's estimate here with "
        "--batch-size 1 --max-length 1024 --grad-checkpoint, then train with --fit "
        "(the same effective batch in micro-batches that fit, with accumulation and "
        "checkpointing chosen for this machine's memory).[/]"
    )
    return 0


def _print_local(console, shape: TrainShape, builtins: list[dict], local: dict) -> None:
    """The builtin models and Ollama's, in columns whose descriptions wrap to the terminal."""
    from rich.table import Table

    console.print("[bold]Built in[/] (model: ...)")
    grid = Table.grid(padding=(0, 2), pad_edge=True)
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(ratio=1)
    for row in builtins:
        state = "[green]installed[/]" if row["installed"] else "[yellow]not installed[/]"
        grid.add_row(
            f" {row['id']}",
            params_text(row["params"]),
            f"~{fmt_bytes(row['train_bytes_this_machine'])} here",
            f"{row['description']}; {state}",
        )
    console.print(grid, highlight=False)
    for row in builtins:
        if not row["installed"]:  # a command to copy: never broken across lines
            console.print(f"  {row['id']}: {row['install']}", highlight=False, soft_wrap=True)
    console.print(
        f"[dim]  (~: the memory to train it here at batch {shape.batch_size} x "
        f"{shape.max_length})[/]",
        highlight=False,
    )
    console.print(f"[bold]Ollama[/] (model: ollama:NAME:TAG) — store {local['store']}")
    if not local["models"]:
        why = "no models" if local["exists"] else "not found (set OLLAMA_MODELS)"
        console.print(f"  {why}; `ollama pull NAME` adds one", highlight=False)
    for row in local["models"]:
        console.print(f"  {row['id']:<40} {fmt_bytes(row['size_bytes']):>9}", highlight=False)
    console.print()


def _targets_text(shape: TrainShape) -> str:
    """`q/v, all layers`, `q/v/k/o/gate/up, the last 8 layers`."""
    modules = "/".join(t.removesuffix("_proj") for t in shape.lora_targets)
    layers = "all layers" if shape.lora_layers < 0 else f"the last {shape.lora_layers} layers"
    return f"{modules}, {layers}"


def _table(shape: TrainShape, budgets: dict, models: list[dict], compact: bool):
    """The recommended models: every fact, or (`compact`, for a terminal too narrow for that)
    the model's name, size, memory and marks; the HF id, quantization and download are in
    `--json` and the full table."""
    from rich.table import Table

    title = (
        f"Recommended models — LoRA r{shape.lora_rank} on {_targets_text(shape)}, "
        f"batch {shape.batch_size} x {shape.max_length} tokens"
        + (", grad checkpointing" if shape.grad_checkpoint else "")
    )
    mem = f"train mem\n{shape.batch_size} x {shape.max_length}"
    if compact:
        sizes = ", ".join(  # an entry is never broken across lines
            f"{n.replace('this machine', 'here')} {fmt_bytes(v)}".replace(" ", "\u00a0")
            for n, v in budgets.items()
            if v is not None
        )
        table = Table(
            title=title,
            title_justify="left",
            caption=f"budgets: {sizes}" if sizes else None,
            caption_justify="left",
            box=None,
            pad_edge=False,
            collapse_padding=True,
        )
        table.add_column(f"model: {HUB_PREFIX}...", no_wrap=True)
        table.add_column("params", justify="right", no_wrap=True)
        table.add_column(mem, justify="right", no_wrap=True)
        for name in budgets:
            label = name.replace("this machine", "here").replace(" Mac", "\nMac")
            table.add_column(label, justify="center", no_wrap=True)
        for r in models:
            table.add_row(
                r["id"].removeprefix(HUB_PREFIX),
                params_text(r["params"]),
                fmt_bytes(r["train_bytes"]),
                *(_fit_cell(r, name) for name in budgets),
            )
        return table
    table = Table(title=title, title_justify="left")
    table.add_column("model (model: ...) / original HF id", no_wrap=True)
    table.add_column("params", justify="right")
    table.add_column("quant")
    table.add_column("download", justify="right")
    table.add_column(mem, justify="right")
    for name, budget in budgets.items():
        label = name if budget is None else f"{name}\n({fmt_bytes(budget)})"
        table.add_column(label, justify="center")
    for r in models:
        table.add_row(
            f"{r['id']}\n[dim]{r['hf_id']}[/]",
            params_text(r["params"]),
            r["quant"],
            fmt_bytes(r["download_bytes"]),
            fmt_bytes(r["train_bytes"]),
            *(_fit_cell(r, name) for name in budgets),
        )
    return table
