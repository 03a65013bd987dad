"""The workspace and run directories.

A run is a directory: `config.yaml` (resolved), `events.jsonl`, `adapters/` (latest adapter,
`best/`, `checkpoints/step-NNNNNNN/`), `summary.json`. Anything that shows a run reads only that
directory. Imports no mlx, torch or textual.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from mlxlora import names, procs
from mlxlora.errors import RunError
from mlxlora.events import (
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    read_events,
)

# What an adapter directory holds (mlx-lm's layout: `mlx_lm.generate --adapter-path DIR`).
ADAPTER_FILES = ("adapters.safetensors", "adapter_config.json")
# Written beside them by the torch backend: the same adapter for `PeftModel.from_pretrained`.
PEFT_ADAPTER_FILE = "adapter_model.safetensors"


def home() -> Path:
    """The workspace: `$MLXLORA_HOME`, default `~/.mlxlora`."""
    return Path(os.environ.get("MLXLORA_HOME", Path.home() / ".mlxlora")).expanduser()


def runs_root() -> Path:
    return home() / "runs"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def best(self) -> Path:
        return self.adapters / "best"

    @property
    def checkpoints(self) -> Path:
        return self.adapters / "checkpoints"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def eval(self) -> Path:
        """What `mlxlora eval` measured (evaluate.evaluate_run)."""
        return self.root / "eval.json"

    @property
    def evals(self) -> Path:
        """The evaluations a later one replaced as eval.json, kept as `STAMP-DATASET.json`."""
        return self.root / "evals"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def stop_request(self) -> Path:
        """Touching this file asks a running job to checkpoint and stop (used by the TUI)."""
        return self.root / "STOP"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:07d}"

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.checkpoints.glob("step-*")) if self.checkpoints.exists() else []
        return found[-1] if found else None


def new_run_dir(name: str, parent: Path | None = None) -> Path:
    """A fresh, unique run directory named `<name>-<YYYYmmdd-HHMMSS>`, the name NFC-normalised.

    The name keeps its letters in any language (`医療専門知識モデル_v1-20261125-093000`), so
    `find_run` finds the run by the name the user gave.
    """
    problem = names.name_problem(name)
    if problem:
        raise RunError(f"run name {name!r}: {problem}")
    parent = parent or runs_root()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        candidate = parent / (f"{names.normalize(name)}-{stamp}" + (f"-{i}" if i else ""))
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise RunError(f"could not create a run directory under {parent}")


def check_new_run_dir(path: Path) -> None:
    """Refuse a `--run-dir` that is not new or empty: a run directory belongs to one run."""
    if not path.exists():
        return
    if not path.is_dir():
        raise RunError(f"{path}: not a directory; choose another --run-dir")
    if (path / "config.yaml").exists() or (path / "events.jsonl").exists():
        if run_status(read_events(path / "events.jsonl"), locked=False) == "finished":
            raise RunError(f"{path}: already holds a finished run; choose another --run-dir")
        raise RunError(
            f"{path}: already holds a run; continue it with `{resume_command(path)}` "
            "or choose another --run-dir"
        )
    if any(path.iterdir()):
        raise RunError(f"{path}: not empty; choose a new or empty --run-dir")


def unfinished(paths: RunPaths, verb: str) -> str | None:
    """Why the run's final adapter cannot be taken to `verb` (fuse, export, merge): while it
    trains it is one of its checkpoints, replaced as it goes, and a failed run trained none.
    None for a run that ended otherwise."""
    if is_locked(paths):
        return f"{paths.root}: the run is still training; {verb} it when it ends"
    if run_status(read_events(paths.events), locked=False) == "failed":
        return f"{paths.root}: the run failed; there is no trained adapter to {verb}"
    return None


def check_resumable(paths: RunPaths) -> None:
    """Refuse to resume a run that has finished or has no checkpoint to continue from."""
    if not paths.config.is_file():
        raise RunError(f"{paths.root}: not a run directory (no config.yaml)")
    if run_status(read_events(paths.events), locked=False) == "finished":
        raise RunError(
            f"{paths.root}: this run has finished (completed or early-stopped); nothing to "
            "resume; start a new run to train more"
        )
    if paths.latest_checkpoint() is None:
        raise RunError(f"{paths.root}: no checkpoint to resume from; start a new run")


def resume_command(path: Path) -> str:
    """The command that resumes the run in `path`: by name in the workspace, else by path."""
    in_workspace = path.resolve().parent == runs_root().resolve()
    return f"mlxlora train --resume {shlex.quote(path.name if in_workspace else str(path))}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_prefix(name: str) -> str:
    """The prefix of a temporary sibling of `name`: it names the process writing it, so a
    later sweep (sweep_temps) tells a killed writer's leftover from a live one's work."""
    return f".{name}.{os.getpid()}-"


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary sibling directory; on success it replaces `final` in one rename.

    A replaced `final` goes aside for a moment into `.NAME.old.*/NAME`: a process killed
    right then leaves it there, and restore_aside puts it back. The files reach the disk
    before the rename, and the rename before this returns: after a power loss `final` is the
    old or the new directory whole, never a new name over empty files."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=temp_prefix(final.name)))
    try:
        yield tmp
        _sync_tree(tmp)
        if final.exists():  # aside into a fresh folder: never over a sibling of the user's
            aside = Path(
                tempfile.mkdtemp(dir=final.parent, prefix=temp_prefix(f"{final.name}.old"))
            )
            os.replace(final, aside / final.name)
            os.replace(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _sync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):  # files before their directories
        _sync(path)
    _sync(root)


def _sync(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync records the names in it; some
    file systems refuse it for directories, which then record them on their own)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _temps(parent: Path, name_pattern: str) -> list[tuple[Path, int | None, bool]]:
    """(path, writer pid or None for a name written before temps carried one, is an aside)
    of the temporary siblings of the names `name_pattern` matches, as atomic_dir names them
    (`.NAME.PID-xxxxxxxx`, `.NAME.old.PID-xxxxxxxx`)."""
    shape = re.compile(rf"\.(?:{name_pattern})(?P<old>\.old)?\.(?:(?P<pid>\d+)-)?[a-z0-9_]{{8}}")
    found = []
    for path in parent.iterdir() if parent.is_dir() else ():
        match = shape.fullmatch(path.name)
        if match:
            pid = int(match["pid"]) if match["pid"] else None
            found.append((path, pid, bool(match["old"])))
    return found


def restore_aside(final: Path, *, held: bool = False) -> bool:
    """Put back a `final` directory that atomic_dir had moved aside when its process was
    killed: `final` missing, its last complete version in `.NAME.old.*/NAME` of a writer that
    is gone (or any writer's, where the caller holds the lock every writer holds). True when
    it restored one."""
    if final.exists():
        return False
    asides = [
        path / final.name
        for path, pid, old in _temps(final.parent, re.escape(final.name))
        if old and _left_behind(path, pid, held) and (path / final.name).is_dir()
    ]
    if not asides:
        return False
    newest = max(asides, key=lambda p: p.parent.stat().st_mtime)  # the one moved aside last
    try:
        os.replace(newest, final)
    except OSError:  # another reader restored it first
        return final.exists()
    with suppress(OSError):  # the aside directory, empty now
        newest.parent.rmdir()
    return True


def _left_behind(path: Path, pid: int | None, held: bool) -> bool:
    """Whether the temporary `path` written by `pid` (None: by a version that did not name
    its writer) is no live process's work: its writer is gone, or the pid names a process
    started after it was written."""
    if held:
        return True
    try:
        written = path.lstat().st_mtime
    except FileNotFoundError:  # another sweep took it
        return False
    return pid is not None and not procs.owner_alive(pid, written=written)


def sweep_temps(parent: Path, name_pattern: str, *, held: bool = False) -> None:
    """Remove the temporary siblings (atomic_dir's, an import's) that a killed process left
    in `parent` for the names `name_pattern` matches: those whose writer is gone, or all of
    them where the caller holds the lock every writer of them holds (`held`: a resumed run
    for its own adapters)."""
    for path, pid, _ in _temps(parent, name_pattern):
        if _left_behind(path, pid, held):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def recover_run(paths: RunPaths) -> None:
    """Undo what a killed training process left half-done in its run: best/ put back from
    where a swap had moved it, the temporary directories of its adapters removed. Only by the
    process that holds the run's lock (a resume), the one writer of these."""
    restore_aside(paths.best, held=True)
    sweep_temps(paths.adapters, re.escape(paths.best.name), held=True)
    sweep_temps(paths.checkpoints, r"step-\d{7}", held=True)


@contextmanager
def run_lock(paths: RunPaths):
    """Hold the run directory for one training process; a stale lock (its process gone, or
    its pid now another process's) is taken over."""
    if not paths.root.is_dir():
        raise RunError(f"{paths.root}: no such run directory")
    pid = _lock_owner(paths)
    if pid and pid != os.getpid():
        raise RunError(f"{paths.root}: run is in use by process {pid}")
    paths.lock.write_text(procs.stamp())
    try:
        yield
    finally:
        paths.lock.unlink(missing_ok=True)


def _lock_owner(paths: RunPaths) -> int | None:
    """The pid of the live process that holds the run's lock (`PID START`, or `PID` as
    written before locks recorded the start), or None."""
    try:
        text, written = paths.lock.read_text(), paths.lock.stat().st_mtime
        pid, *start = text.split()
        pid, started = int(pid), float(start[0]) if start else None
    except (OSError, ValueError):  # none, or half-written
        return None
    return pid if procs.owner_alive(pid, started, written) else None


def is_locked(paths: RunPaths) -> bool:
    """A live process holds the run (a lock left by a killed one does not count)."""
    return _lock_owner(paths) is not None


def running_runs(root: Path | None = None) -> list[Path]:
    """Run directories of the workspace whose training process is alive now."""
    root = root or runs_root()
    found = root.iterdir() if root.is_dir() else ()
    return sorted(p for p in found if is_locked(RunPaths(p)))


def run_status(events: list[Event], locked: bool) -> str:
    last = next(
        (e for e in reversed(events) if isinstance(e, (RunFinished, RunFailed, RunStarted))), None
    )
    if isinstance(last, RunFinished):
        return "stopped" if last.stopped else "finished"
    if isinstance(last, RunFailed):
        return "failed"
    if isinstance(last, RunStarted):
        return "running" if locked else "interrupted"
    return "new"


def read_json(path: Path) -> dict:
    """A JSON object file (summary.json, eval.json), or {} when missing, half-written or not
    an object: a face shows what it can instead of failing on one bad file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_run_dir(path: Path) -> bool:
    """A run's directory: its config.yaml (common in a user's project folder too) beside its
    events, lock or adapters."""
    return (path / "config.yaml").is_file() and any(
        (path / name).exists() for name in ("events.jsonl", ".lock", "adapters")
    )


# `<name>-<YYYYmmdd-HHMMSS>`, with `-N` when two runs of one name start in the same second.
_STAMPED = re.compile(
    r"(?P<name>.+)-\d{4}(?P<month>\d\d)(?P<day>\d\d)-(?P<hour>\d\d)(?P<minute>\d\d)\d\d(?:-\d+)?"
)


def given_name(path: Path) -> str:
    """The name the user gave a workspace run: its directory name without the time stamp."""
    found = _STAMPED.fullmatch(path.name)
    return found["name"] if found else path.name


def started_text(path: Path) -> str:
    """When a workspace run started, from its directory's time stamp: `11-26 15:39` ("" when
    it has none)."""
    found = _STAMPED.fullmatch(path.name)
    return f"{found['month']}-{found['day']} {found['hour']}:{found['minute']}" if found else ""


def find_run(ref: str) -> Path:
    """A run by directory, or in the workspace by its full directory name, the name the user
    gave it (NFC-normalised), or a unique prefix of its directory name.

    Names are compared as text, never as patterns: a `[` or `*` in a reference is a character.
    """
    path = Path(ref).expanduser()
    if (path / "config.yaml").is_file():
        return path
    if os.sep in ref or ref.startswith("~"):  # a path (a name never holds a separator)
        problem = "not a run directory (no config.yaml)" if path.exists() else "no such directory"
        raise RunError(f"{ref}: {problem}")
    ref = names.normalize(ref)
    matches = runs_named(ref)
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = ", ".join(m.name for m in matches[:5])
        more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
        raise RunError(
            f"{ref}: {len(matches)} runs match ({shown}{more}); give the full directory name"
        )
    raise RunError(f"{ref}: no such run (see `mlxlora runs list`)")


def runs_named(ref: str) -> list[Path]:
    """The workspace's runs a name means: the one with that directory name, else those the
    user gave that name, else those whose directory name begins with it."""
    root = runs_root()
    found = (
        sorted(p for p in root.iterdir() if (p / "config.yaml").is_file()) if root.is_dir() else []
    )
    for matches in (
        [p for p in found if p.name == ref],
        [p for p in found if given_name(p) == ref],
        [p for p in found if ref and p.name.startswith(ref)],
    ):
        if matches:
            return matches
    return []
