"""`mlxlora merge RUN RUN ... --rank R --out DIR`: adapters combined into one (ensemble)."""

from __future__ import annotations

import json
import shlex

from mlxlora.commands import path_arg

SHOWN_LAYERS = 5  # the worst-approximated layers printed (--json lists every layer)


def register(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="merge adapters of one base model into one (weighted sum, SVD to a rank)",
        description="Combine LoRA adapters trained on the same base model and targets: the "
        "weighted sum of their updates (scale * lora_a @ lora_b per layer), cut back to rank R "
        "by SVD, with the relative approximation error per layer and overall. The result is an "
        "adapter directory for `mlxlora generate --adapter DIR`.",
    )
    p.add_argument("adapters", nargs="+", metavar="RUN", help="runs or adapter directories")
    p.add_argument("--weights", metavar="W1,W2,...", help="one weight per adapter (default equal)")
    p.add_argument("--rank", type=int, required=True, help="rank of the merged adapter")
    p.add_argument(
        "--out", type=path_arg, required=True, help="new directory for the merged adapter"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from mlxlora import merge

    weights = merge.parse_weights(args.weights, len(args.adapters))
    result = merge.merge(args.adapters, weights, args.rank, args.out)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print("\n".join(summary_lines(result.to_dict())))
    return 0


def summary_lines(result: dict) -> list[str]:
    """What a merge did, from its --json result: the overall error and the worst layers
    (the CLI prints these lines, the TUI's merge dialog shows them)."""
    layers = result["layer_errors"]
    worst = sorted(layers, key=layers.get, reverse=True)[:SHOWN_LAYERS]
    return [
        f"merged {len(result['sources'])} adapters at rank {result['rank']} into {result['out']}",
        f"relative error (Frobenius) over all {len(layers)} layers: {result['error']:.3e}",
        *(f"  {layers[module]:.3e}  {module}" for module in worst),
        f"try it: mlxlora generate --adapter {shlex.quote(result['out'])} --prompt '...'",
    ]
