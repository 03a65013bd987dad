"""`mlxlora fuse`: merge a run's adapter into its base model as a normal HF-format directory."""

from __future__ import annotations

import json
import signal
import sys

from mlxlora.commands import path_arg


def register(sub) -> None:
    p = sub.add_parser(
        "fuse",
        help="merge a run's adapter into its base model (an HF-format model directory)",
        description="Merge the run's final adapter into the base weights and write a model "
        "directory (safetensors, config.json, tokenizer files with the chat template) that "
        "mlx-lm and transformers load. A quantized base keeps its bits unless quantizing the "
        "merge again would round most of the adapter away (then the weights are float). "
        "Example: mlxlora fuse my-run --out ./my-model",
    )
    p.add_argument("run", metavar="RUN", help="a run (name, name prefix or directory)")
    p.add_argument(
        "--out",
        type=path_arg,
        metavar="DIR",
        help="where to write the model (default: RUN/fused); only an earlier fuse "
        "that nobody added to or edited is replaced",
    )
    weights = p.add_mutually_exclusive_group()
    weights.add_argument(
        "--dequantize",
        action="store_true",
        help="write float weights even when quantizing the merge again would lose little",
    )
    weights.add_argument(
        "--keep-quantized",
        action="store_true",
        help="keep a quantized base's bits even when quantizing the merge again rounds most "
        "of the adapter away",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"out": DIR, "files": {name: bytes}, "warnings": [...]} (the studio reads it)',
    )
    p.set_defaults(func=run)


def run(args) -> int:

    from mlxlora.export.fuse import fuse_run
    from mlxlora.outputs import OUTPUT_MARKER
    from mlxlora.runs import find_run

    # SIGTERM (the studio's Cancel) unwinds like Ctrl-C, so the temporary directory is removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    warnings = []
    out = fuse_run(
        find_run(args.run),
        args.out.expanduser() if args.out else None,
        True if args.dequantize else False if args.keep_quantized else None,
        warnings.append,
    )
    if args.json:
        files = {f.name: f.stat().st_size for f in sorted(out.iterdir()) if f.is_file()}
        files.pop(OUTPUT_MARKER, None)
        result = {"out": str(out), "files": files, "warnings": warnings}
        print(json.dumps(result, ensure_ascii=False), flush=True)
    else:
        for text in warnings:
            print(f"warning: {text}", file=sys.stderr, flush=True)
        print(out, flush=True)
    return 0
