"""`mlxlora generate`: a model's greedy answer to one prompt, optionally through an adapter."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate an answer from a model, optionally with a trained adapter",
        description="Greedy generation from a model (with its chat template unless --raw). "
        "Examples: mlxlora generate --model builtin:smollm2-135m --prompt 'Hello'; "
        "mlxlora generate --adapter RUN --prompt 'Hello' (uses the run's model).",
    )
    p.add_argument(
        "--model",
        metavar="REF",
        help="builtin:NAME, ollama:NAME[:TAG], a .gguf file, a model directory or an HF repo id "
        "(default: the model of the --adapter run)",
    )
    p.add_argument("--prompt", required=True, help="the user message ('-' reads stdin)")
    p.add_argument(
        "--adapter",
        metavar="RUN",
        help="a run (name prefix or directory: its latest adapter) or an adapter directory",
    )
    p.add_argument("--max-tokens", type=int, default=100, help="new tokens at most (default 100)")
    p.add_argument("--system", help="a system message")
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
        answer = evaluate.generate(**_request(args))
        print(answer, flush=True)  # exactly the new text (a trailing newline added)
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
    from mlxlora.errors import ConfigError

    if args.max_tokens < 1:
        raise ConfigError([f"--max-tokens must be at least 1 (got {args.max_tokens})"], "generate")
    return {
        "model_ref": args.model,
        "prompt": sys.stdin.read() if args.prompt == "-" else args.prompt,
        "adapter": args.adapter,
        "max_tokens": args.max_tokens,
        "system": args.system,
        "raw": args.raw,
    }
