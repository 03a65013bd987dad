"""`mlxlora doctor`: what this machine will train with, in one screen (or `--json`)."""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path

# peft and bitsandbytes: backend torch trains through PEFT, QLoRA through bitsandbytes; doctor
# listed torch alone, so a torch run failing on either left it unasked
PACKAGES = (
    "mlx",
    "mlx-lm",
    "transformers",
    "torch",
    "peft",
    "bitsandbytes",
    "tokenizers",
    "huggingface-hub",
    "textual",
)


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check the backend, device, memory and workspace")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect() -> dict:
    """Everything doctor reports, as plain data."""
    from mlxlora import __version__
    from mlxlora.backends import blas
    from mlxlora.errors import MlxloraError
    from mlxlora.machine import disk_free, total_memory, training_device
    from mlxlora.models.resolve import hub_cache_dir, hub_offline
    from mlxlora.runs import home

    report: dict = {
        "mlxlora": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
    }
    try:
        report.update(learn_device())
    except MlxloraError as exc:  # no backend installed: still report the rest
        report.update(backend="none", backend_error=str(exc), **device_facts(None))
    # Asked after describe(): the backend has imported mlx by now, with whatever BLAS it got.
    report["blas"] = blas.blas_in_use()
    report["versions"] = {name: version(name) for name in PACKAGES}
    report["memory_total_bytes"] = total_memory()
    report["training_budget_bytes"] = training_device().budget  # a CUDA card's own memory
    ws = home()
    report["workspace"] = str(ws)
    report["workspace_problem"] = workspace_problem(ws)
    report["workspace_disk_free_bytes"] = disk_free(ws)
    report["hf_cache"] = str(hub_cache_dir())
    report["hf_offline"] = hub_offline()
    return report


def workspace_problem(ws: Path) -> str | None:
    """Why no command can keep anything in `ws`: it, or the nearest part of it that exists, is
    a file (every command that writes stops there); None when it is or can be a directory."""
    existing = next(p for p in (ws, *ws.parents) if p.exists())
    if existing.is_dir():
        return None
    what = "it is a file" if existing == ws else f"{existing} is a file"
    return f"{what}, not a directory: set MLXLORA_HOME to a directory"


def learn_device() -> dict:
    """The backend `auto` picks and its device, in doctor's keys, taken as this process's
    training device (machine.learn_training_device); raises what select.describe raises."""
    from mlxlora import machine
    from mlxlora.backends import select

    info = select.describe("auto")
    facts = {"backend": info.name, **device_facts(info)}
    machine.learn_training_device(facts)
    return facts


def device_facts(info) -> dict:
    """What a BackendInfo says of its device, in doctor's keys: what
    machine.learn_training_device takes (from a child's report, or here)."""
    return {
        "device": info.device if info else None,
        "dtype": info.dtype if info else None,
        "attention": info.attention if info else None,
        "evaluation": info.evaluation if info else None,
        "device_budget_bytes": info.memory_budget_bytes if info else None,
    }


def machine_rows(report: dict) -> list[tuple[str, str]]:
    """(label, value) rows of what runs the training: versions, backend, device, BLAS."""
    backend = report["backend"]
    if report.get("backend_error"):
        backend += f" ({report['backend_error']})"
    rows = [
        ("mlxlora", report["mlxlora"]),
        ("python", report["python"]),
        ("platform", report["platform"]),
        ("backend (auto)", backend),
        ("device", report["device"] or "-"),
        ("dtype", report["dtype"] or "-"),
        ("BLAS", report["blas"]),
    ]
    return rows + [(name, v) for name, v in report["versions"].items()]


def render(report: dict) -> list[tuple[str, str]]:
    """Every row `mlxlora doctor` prints: the machine, its memory, the workspace."""
    from mlxlora.memory import fmt_bytes

    def size(n):
        return fmt_bytes(n) if n is not None else "unknown"

    problem = report["workspace_problem"]
    gpu, note = report["device_budget_bytes"], ""
    if gpu:  # a Mac plans with 3/4 of unified memory; a CUDA card's budget is its memory
        mac = report["platform"].startswith("Darwin")
        note = f" (Metal recommends {size(gpu)})" if mac else " (the GPU's memory)"
    return machine_rows(report) + [
        ("memory", size(report["memory_total_bytes"])),
        ("training budget", size(report["training_budget_bytes"]) + note),
        ("workspace", report["workspace"] + (f" ({problem})" if problem else "")),
        ("disk free", size(report["workspace_disk_free_bytes"])),
        ("HF cache", report["hf_cache"] + (" (offline)" if report["hf_offline"] else "")),
    ]


def run(args) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # a path folds whole at 80 columns, never cut to "…"
    for key, value in render(report):
        missing = value == "not installed" and key in ("mlx", "mlx-lm")
        style = "red" if missing or (key == "workspace" and report["workspace_problem"]) else ""
        table.add_row(key, f"[{style}]{value}[/]" if style else value)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160, file=sys.stdout)
    console.print(table)
    return 0
