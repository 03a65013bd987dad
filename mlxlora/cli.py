"""The `mlxlora` command. Each subcommand lives in `mlxlora/commands/<name>.py` and registers
itself; this module only builds the parser and turns user errors into one line and an exit code.

Imports no mlx, torch or textual at module level, so `mlxlora --help` is instant.
"""

from __future__ import annotations

import argparse
import sys

from mlxlora import __version__
from mlxlora.commands import data, doctor, generate, models, runs, train
from mlxlora.errors import MlxloraError

COMMANDS = (train, data, runs, generate, models, doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlxlora",
        description="LoRA fine-tuning studio: train, inspect and export adapters.",
    )
    parser.add_argument("--version", action="version", version=f"mlxlora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except MlxloraError as exc:
        print(f"mlxlora: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mlxlora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
