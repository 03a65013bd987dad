"""`mlxlora adapter convert`: an adapter in mlx-lm's layout or PEFT's, written in both."""

from __future__ import annotations

from pathlib import Path

from mlxlora.commands import actions, path_arg


def register(sub) -> None:
    p = sub.add_parser("adapter", help="convert LoRA adapters between mlx-lm and PEFT")
    convert = actions(p, "adapter_command").add_parser(
        "convert",
        help="write an adapter directory (mlx-lm or PEFT layout) in both layouts",
        description="Read SOURCE (adapters.safetensors or adapter_model.safetensors, with "
        "adapter_config.json) and write TARGET holding both layouts: mlx_lm --adapter-path "
        "and PeftModel.from_pretrained both load it.",
    )
    convert.add_argument(
        "source", type=path_arg, help="an adapter directory, or a run (name, prefix or directory)"
    )
    convert.add_argument("target", type=path_arg, help="a new directory")
    convert.add_argument(
        "--layers",
        type=int,
        help="the base model's layer count (PEFT source: counts mlx-lm's num_layers from it; "
        "default: the highest adapted layer + 1)",
    )
    convert.set_defaults(func=run_convert)


def adapter_source(source: Path) -> Path:
    """SOURCE, or the adapter of the run it names, as every other command takes a run (a run's
    name or directory was refused with "no adapter_config.json")."""
    from mlxlora.runs import RunPaths, find_run, is_run_dir

    if source.is_dir() and not is_run_dir(source):
        return source  # an adapter directory: convert says what it lacks, if anything
    return RunPaths(find_run(str(source))).adapters


def run_convert(args) -> int:
    from mlxlora.adapters_convert import convert

    layout = convert(adapter_source(args.source), args.target, args.layers)
    other = "PEFT" if layout == "mlx" else "mlx-lm"
    print(f"{args.target}: {layout} adapter written with its {other} copy")
    return 0
