"""`mlxlora generate`: a model's greedy answer to one prompt, optionally through an adapter."""

from __future__ import annotations

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
    p.set_defaults(func=run)


def run(args) -> int:
    from mlxlora import evaluate
    from mlxlora.errors import ConfigError

    if args.max_tokens < 1:
        raise ConfigError([f"--max-tokens must be at least 1 (got {args.max_tokens})"], "generate")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    answer = evaluate.generate(
        args.model,
        prompt,
        adapter=args.adapter,
        max_tokens=args.max_tokens,
        system=args.system,
        raw=args.raw,
    )
    print(answer, flush=True)  # exactly the new text (a trailing newline added)
    return 0
