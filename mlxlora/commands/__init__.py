"""Subcommands of the `mlxlora` CLI: each module has `register(subparsers)`."""

from argparse import ArgumentTypeError
from pathlib import Path

from mlxlora.errors import ConfigError, DataError, ModelError
from mlxlora.events import RunStarted  # light: the standard library alone, as errors


def actions(parser, dest: str):
    """The ACTION subparsers of a command group: the group alone prints its help (its actions
    and what each does) rather than argparse's 'the following arguments are required'."""
    parser.set_defaults(func=lambda args: parser.print_help() or 0)
    return parser.add_subparsers(dest=dest, metavar="ACTION")


def path_arg(text: str) -> Path:
    """A path argument that refuses a blank one: Path("") is the working directory, where
    `--run-dir ""` trained a run and `--out ""` would write into whatever is there."""
    if not text.strip():
        raise ArgumentTypeError("the path is blank")
    return Path(text)


def nonblank_arg(text: str) -> str:
    """An option's value that refuses a blank one, which read as the option left out:
    `generate --adapter "$RUN"` with RUN unset answered with the base model, and
    `eval --dataset ""` scored the run's own validation split, neither saying so."""
    if not text.strip():
        raise ArgumentTypeError("the value is blank")
    return text


class ConfigFileErrors:
    """Names the config file in what its values are refused for once it has loaded: a dataset
    or model it names that is not there, a value the model refuses. `data.dataset: unknown
    dataset` alone did not say which of a user's YAML files was wrong.

    A context manager around the work that checks or prepares the file's job, and a run's
    listener: once the run has started, its errors are the run's, not the file's.
    """

    def __init__(self, path: str | None, overrides: list[str] = ()):
        from mlxlora.config import source_name

        self.path = path  # None: no file of the user's (a resume runs the run's own config)
        # a value --set gave may be what is refused: said as the config's load says it
        self.source = source_name(path, overrides)
        self.started = False

    def __call__(self, event) -> None:
        if isinstance(event, RunStarted):
            self.started = True

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        named = (ConfigError, DataError, ModelError)
        if not self.path or self.started or not isinstance(exc, named):
            return False
        if isinstance(exc, ConfigError):
            if exc.source.startswith(self.path):  # the load's own: it names the file already
                return False
            raise ConfigError(exc.problems, self.source) from None
        raise type(exc)(f"{self.source}: {exc}") from None
