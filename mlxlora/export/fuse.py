"""Merge a run's adapter into its base model: a normal HF-format directory (safetensors,
config.json, tokenizer files with the chat template) that mlx-lm and transformers load.

The merge itself is mlx-lm's (`fuse()` of its LoRA layers, in `mlxlora.backends.mlx_fuse`);
this module checks the run, picks the adapter and the output place (refusing one that is not
an earlier fuse output), and writes atomically (a temporary sibling directory renamed into
place). Imports no mlx at module level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlxlora.atomic import restore_aside
from mlxlora.errors import ExportError
from mlxlora.models.info import safetensors_problem
from mlxlora.outputs import check_output_dir, output_dir
from mlxlora.runs import ADAPTER_FILES, RunPaths, unfinished

FUSED_DIR = "fused"  # the default output: <run>/fused


@dataclass(frozen=True)
class ExportSource:
    """What an export starts from: the run, its final adapter and its base model reference."""

    run: Path
    adapter: Path
    model_ref: str


def export_source(run: Path) -> ExportSource:
    """The run's final adapter and model, or ExportError (one line) when the run cannot be
    exported: not a run, still running, failed, or no adapter saved."""
    from mlxlora import config

    paths = RunPaths(Path(run))
    if not paths.config.is_file():
        raise ExportError(f"{paths.root}: not a run directory (no config.yaml)")
    if refusal := unfinished(paths, "export"):
        raise ExportError(refusal)
    restore_aside(paths.best)  # the run's best/, where a killed swap left it aside
    if not all((paths.adapters / f).is_file() for f in ADAPTER_FILES):
        raise ExportError(
            f"{paths.root}: no adapter saved (nothing in {paths.adapters}); train it first"
        )
    weights = paths.adapters / ADAPTER_FILES[0]
    if problem := safetensors_problem(weights):
        raise ExportError(f"{weights}: {problem}; the adapter cannot be read")
    return ExportSource(paths.root, paths.adapters, config.load(paths.config).model)


def fuse_run(
    run: Path,
    out: Path | None = None,
    dequantize: bool | None = None,
    warn: Callable[[str], None] = lambda text: None,
) -> Path:
    """Write the run's base model with its final adapter merged in to `out` (default
    `<run>/fused`) and return that directory. A quantized base: `dequantize` True writes float
    weights, False keeps its bits and group size, None keeps them unless quantizing the merge
    again would round most of the adapter away (mlx_fuse.KEEP_QUANTIZED_LOSS); `warn` gets a
    line saying what the re-quantization did or would have done. An existing `out` is
    replaced only when it is an earlier fuse output (outputs.check_output_dir)."""
    from mlxlora.models.resolve import resolve_model

    source = export_source(run)
    default = source.run / FUSED_DIR
    out = Path(out) if out is not None else default
    check_output_dir(out, "fuse", default=default, error=ExportError)
    model_dir = resolve_model(source.model_ref, progress=False)
    from mlxlora.backends.mlx_fuse import fuse_adapter

    with output_dir(out, "fuse") as tmp:
        fused = fuse_adapter(model_dir, source.adapter, tmp, dequantize=dequantize)
    if fused.requantization_loss is not None:
        warn(requantized_warning(fused.requantization_loss, fused.dequantized))
    return out


def requantized_warning(loss: float, dequantized: bool) -> str:
    if dequantized:  # auto, for a merge quantizing again would have lost
        return (
            f"the base is quantized, but quantized again the fused weights would differ from "
            f"base + adapter by {loss:.0%} of the adapter's update: they are written as float "
            "weights (--keep-quantized keeps the base's bits)"
        )
    return (
        f"the fused weights are quantized again like the base: they differ from base + "
        f"adapter by {loss:.0%} of the adapter's update; --dequantize writes float weights "
        "that hold it exactly"
    )
