"""`mlxlora eval RUN`: a trained run's held-out loss, perplexity and scored answers, tuned and
(with --base) base side by side; written to eval.json in the run directory."""

from __future__ import annotations

import json
import math
import sys

from mlxlora.commands import nonblank_arg
from mlxlora.evaluate import Sampling
from mlxlora.fmt import NONE, answer, counted


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a trained run on held-out data (loss, perplexity, scored answers)",
        description="Validation loss and perplexity on the run's validation split (or "
        "--dataset), and greedy answers to its questions scored against the references: "
        "domain-term recall, token F1, exact match, answer length, safety, and the answers' "
        "self-consistency against --consistency K sampled answers (K extra generations per "
        "question; docs/metrics.md). Writes eval.json in the run directory. "
        "Example: mlxlora eval my-run --base",
    )
    p.add_argument("run", help="run name (or unique prefix) or directory")
    p.add_argument(
        "--dataset",
        type=nonblank_arg,
        metavar="D",
        help="a stored dataset or a file (default: the run's val split)",
    )
    p.add_argument("--base", action="store_true", help="also measure the untrained base model")
    p.add_argument("--max-records", type=int, metavar="N", help="only the first N records")
    p.add_argument("--max-tokens", type=int, default=128, help="new tokens per answer (128)")
    p.add_argument(
        "--terms",
        type=nonblank_arg,  # blank measured no term recall, as 'none' does, without a word
        default="medical",
        help="term list for term recall: a bundled list (medical) or a file; 'none' for none",
    )
    default = Sampling()
    p.add_argument(
        "--consistency",
        type=int,
        default=default.samples,
        metavar="K",
        help="answers sampled per question for the consistency score: K extra generations "
        f"each ({default.samples}; 0: no score)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=default.temperature,
        help=f"temperature of those samples ({default.temperature:g})",
    )
    p.add_argument(
        "--seed", type=int, help="seed of the first sample, +1 each (the run's training.seed)"
    )
    p.add_argument("--json", action="store_true", help="print eval.json")
    p.set_defaults(func=run)


def run(args) -> int:
    from mlxlora.config import MAX_SEED
    from mlxlora.errors import ConfigError
    from mlxlora.evaluate import evaluate_run

    for flag, value in (("--max-tokens", args.max_tokens), ("--max-records", args.max_records)):
        if value is not None and value < 1:
            raise ConfigError([f"{flag} must be at least 1 (got {value})"], "eval")
    for flag, value in (("--consistency", args.consistency), ("--temperature", args.temperature)):
        if not 0 <= value < math.inf:  # nan sampled "at temperature nan" as if it were one
            raise ConfigError([f"{flag} must be 0 or more (got {value})"], "eval")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:  # mx.random.seed refuses it
        raise ConfigError([f"--seed must be 0 to {MAX_SEED} (got {args.seed})"], "eval")
    result = evaluate_run(
        args.run,
        dataset=args.dataset,
        base=args.base,
        max_records=args.max_records,
        max_tokens=args.max_tokens,
        terms=None if args.terms == "none" else args.terms,
        sampling=Sampling(args.consistency, args.temperature, args.seed),
        say=lambda message: print(f"eval: {message}", file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print_result(result)
    return 0


def print_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from mlxlora.scoring import score_rows

    console = Console(highlight=False, soft_wrap=True)
    records = counted(result["records"], "record")  # "1 records" for --max-records 1
    table = Table(title=f"{result['dataset']} ({result['split']}, {records})")
    sampling = result.get("consistency")
    if sampling:
        samples = counted(sampling["samples"], "sampled answer")
        table.caption = (
            f"consistency: {samples} per question at temperature "
            f"{sampling['temperature']:g}, seeds from {sampling['seed']}"
        )
    for column in ("measure", "tuned", "base"):
        table.add_column(column)
    for row in score_rows(result):
        table.add_row(*row)
    console.print(table)
    for a in result["answers"]:
        console.print(f"[bold]Q:[/] {_line(a['prompt'])}")
        for who in ("reference", "tuned", "base"):
            if a.get(who) is not None:
                # a model's blank answer said as generate and runs show say it, not as `—`
                text = a[who] if who == "reference" else answer(a[who])
                console.print(f"  {who}: {_line(text)}")


def _line(text: str) -> str:
    """An answer on one line, markup escaped; NONE for an empty one."""
    from rich.markup import escape

    return escape(" ".join(text.split())) or NONE
