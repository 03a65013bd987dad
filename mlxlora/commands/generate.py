"""`mlxlora generate`: a model's answer to one prompt (greedy, or sampled with a seed),
optionally through an adapter, on MLX or torch."""

from __future__ import annotations

import json
import math
import sys

from mlxlora.commands import nonblank_arg


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate an answer from a model, optionally with a trained adapter",
        description="Generation from a model (with its chat template unless --raw), greedy "
        "unless --temperature is above 0. "
        "Examples: mlxlora generate --model builtin:smollm2-135m --prompt 'Hello'; "
        "mlxlora generate --adapter RUN --prompt 'Hello' (uses the run's model).",
    )
    p.add_argument(
        "--model",
        type=nonblank_arg,
        metavar="REF",
        help="builtin:NAME, ollama:NAME[:TAG], a .gguf file, a model directory or an HF repo id "
        "(default: the model of the --adapter run)",
    )
    p.add_argument("--prompt", required=True, help="the user message ('-' reads stdin)")
    p.add_argument(
        "--adapter",
        type=nonblank_arg,
        metavar="RUN",
        help="a run (name prefix or directory: its latest adapter) or an adapter directory",
    )
    p.add_argument("--max-tokens", type=int, default=100, help="new tokens at most (default 100)")
    p.add_argument("--system", help="a system message")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0 answers greedily (the default); above 0 samples, with --seed",
    )
    p.add_argument("--seed", type=int, default=0, help="the sampling seed (default 0)")
    p.add_argument(
        "--backend",
        choices=("auto", "mlx", "torch"),
        help="where to generate (default: the --adapter run's backend, else auto: as training "
        "picks it)",
    )
    p.add_argument(
        "--raw", action="store_true", help="send the prompt as plain text, no chat template"
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help='print JSON lines as the answer comes: {"type": "token", "text": ...} per piece, '
        'then {"type": "done", "text": ..., "prompt_tokens": ..., "generation_tokens": ..., '
        '"tokens_per_sec": ..., "finish_reason": ...}; an error as {"type": "error", ...}',
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from mlxlora import evaluate
    from mlxlora.errors import MlxloraError

    if not args.stream:
        from mlxlora import fmt

        answer = evaluate.generate(**_request(args))
        print(answer, flush=True)  # exactly the new text (a trailing newline added)
        if not answer.strip():  # said on stderr: stdout stays the text a script reads
            print(fmt.answer(answer), file=sys.stderr, flush=True)
        return 0
    try:
        # no download progress bars: a reader of the stream shows its own "loading" state
        for event in evaluate.generate_stream(**_request(args), progress=False):
            print(json.dumps(event), flush=True)  # a reader sees each piece as it comes
    except MlxloraError as exc:
        print(json.dumps({"type": "error", "message": str(exc)}), flush=True)
        raise  # and the usual one-line error and exit code
    return 0


def _request(args) -> dict:
    """evaluate.generate's arguments from the command line, checked."""
    from mlxlora.config import MAX_SEED
    from mlxlora.errors import ConfigError

    if args.max_tokens < 1:
        raise ConfigError([f"--max-tokens must be at least 1 (got {args.max_tokens})"], "generate")
    if not 0 <= args.temperature < math.inf:  # nan sampled from "temperature nan" as if valid
        raise ConfigError(
            [f"--temperature must be a finite number, 0 or more (got {args.temperature})"],
            "generate",
        )
    if not 0 <= args.seed <= MAX_SEED:  # mx.random.seed refused it in a traceback
        raise ConfigError([f"--seed must be 0 to {MAX_SEED} (got {args.seed})"], "generate")
    return {
        "model_ref": args.model,
        "prompt": sys.stdin.read() if args.prompt == "-" else args.prompt,
        "adapter": args.adapter,
        "max_tokens": args.max_tokens,
        "system": args.system,
        "raw": args.raw,
        "temperature": args.temperature,
        "seed": args.seed,
        "backend": args.backend,
    }
