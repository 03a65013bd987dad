"""User-facing errors. Each maps to an exit code; the CLI prints them on one line, no traceback.

Anything that is not an MlxloraError is our own bug and keeps its traceback, but for an OSError
the machine's disk gave (DISK_REFUSED): that one is the user's to fix, and said on one line.
"""

import errno

# The disk refused a write for a reason of the machine's, not ours: full, over quota, gone
# read-only, or permission taken away.
DISK_REFUSED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class MlxloraError(Exception):
    """Base class for errors the user can fix."""

    exit_code = 1


class ConfigError(MlxloraError):
    """A config file or override is invalid. Lists every problem at once."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        self.source = source
        head = f"{source}: " if len(problems) == 1 else f"{source}: {len(problems)} problems: "
        super().__init__(head + "; ".join(problems))


class DataError(MlxloraError):
    """A dataset file or record is invalid. The message names file, record and field."""

    exit_code = 3


class ModelError(MlxloraError):
    """A model cannot be found, fetched or loaded."""

    exit_code = 4


class RunError(MlxloraError):
    """A run directory is missing, locked, or cannot be resumed."""

    exit_code = 5


class CheckpointUnreadable(RunError):
    """A checkpoint's files are cut short, damaged or missing: what a backend's load_state
    raises for them (anything else it raises is a bug, and says so)."""


class TrainingFailed(MlxloraError):
    """Training stopped on a numerical problem (NaN/inf loss); the last good checkpoint is kept."""

    exit_code = 6


class BackendUnavailable(MlxloraError):
    """The requested backend cannot run on this machine."""

    exit_code = 7


class ExportError(MlxloraError):
    """A run or model cannot be fused or exported (no adapter, failed or running run,
    unsupported architecture, a missing optional package)."""

    exit_code = 8
