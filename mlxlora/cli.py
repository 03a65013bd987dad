"""The `mlxlora` command. Each subcommand lives in `mlxlora/commands/<name>.py` and registers
itself; this module only builds the parser and turns user errors into one line and an exit code.

Imports no mlx, torch or textual at module level, so `mlxlora --help` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlxlora import __version__
from mlxlora.commands import (
    adapter,
    compare,
    data,
    doctor,
    export,
    fuse,
    generate,
    merge,
    models,
    queue,
    runs,
    sweep,
    train,
    tui,
)
from mlxlora.commands import eval as evaluation  # `eval` would hide the builtin
from mlxlora.errors import MlxloraError

COMMANDS = (
    train,
    queue,
    sweep,
    data,
    runs,
    evaluation,
    compare,
    merge,
    generate,
    adapter,
    fuse,
    export,
    models,
    doctor,
    tui,
)


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
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return code
    except BrokenPipeError:
        # The reader went away (`mlxlora models --json | head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a command cut off by a pipe


def _dispatch(argv: list[str] | None) -> int:
    parser = build_parser()
    if argv is None and len(sys.argv) == 1 and tui.interactive():
        argv = ["tui"]  # `mlxlora` alone in a terminal opens the studio
    for arg in sys.argv[1:] if argv is None else argv:
        if problem := _undecodable(arg):
            print(f"mlxlora: error: {problem}", file=sys.stderr)
            return 2
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


def _undecodable(arg: str) -> str | None:
    """Why an argument is no text: bytes that are not UTF-8 (a name typed in a Shift_JIS or
    Latin-1 terminal) reach Python as lone surrogates, which no file, name or config can hold."""
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(arg)
        shown = raw.decode("utf-8", "backslashreplace")
        return (
            f"argument '{shown}' is not UTF-8 text; set the terminal's encoding to UTF-8 "
            "(or rename the file)"
        )
    return None


if __name__ == "__main__":
    raise SystemExit(main())
