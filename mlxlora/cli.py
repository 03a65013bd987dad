"""The `mlxlora` command. Each subcommand lives in `mlxlora/commands/<name>.py` and registers
itself; this module only builds the parser and turns user errors into one line and an exit code:
an MlxloraError, or a path the file system refuses.

Imports no mlx, torch or textual at module level, so `mlxlora --help` is instant.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

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
from mlxlora.errors import DISK_REFUSED, MlxloraError

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
    except OSError as exc:
        if exc.errno not in _REFUSED_BY_THE_SYSTEM:
            raise
        print(f"mlxlora: error: {_os_problem(exc)}", file=sys.stderr)
        return 1


# A path the user gave that the file system refuses (a file where a directory must go, a
# directory where a file must go, a name too long) or a disk that refuses it: the user's to fix.
_REFUSED_BY_THE_SYSTEM = DISK_REFUSED | {
    errno.EEXIST,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENAMETOOLONG,
}


def _os_problem(exc: OSError) -> str:
    path = exc.filename2 or exc.filename  # a rename names its target second
    if path is None:
        return exc.strerror or str(exc)
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # mkdir(parents=True) met a file
        for part in (Path(path), *Path(path).parents):
            if part.is_file():
                return f"{part}: is a file, where a directory is needed"
    return f"{path}: {exc.strerror}"


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
