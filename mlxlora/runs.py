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
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlxlora import names, procs
from mlxlora.atomic import restore_aside, sweep_temps
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
    return f"mlxlora train --resume {run_argument(path)}"


def run_argument(path: Path) -> str:
    """The run in `path` as a command takes it, quoted: by name in the workspace, else by
    path."""
    in_workspace = path.resolve().parent == runs_root().resolve()
    return shlex.quote(path.name if in_workspace else str(path))


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


def model_dir_of(paths: RunPaths, summary: dict) -> str | None:
    """The model directory the run trained on (`summary`: its summary.json), as its adapter's
    config names it: the published adapter's, else its latest checkpoint's (a run that ended
    at step 0, failed or stopped, published none: step 0's adapter is untrained)."""
    latest = paths.latest_checkpoint()
    for adapter in (paths.adapters, latest):
        if adapter and (found := read_json(adapter / "adapter_config.json").get("model")):
            return found
    return summary.get("model_dir")


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


def refuse_blank(ref: str) -> None:
    """Refuse a blank run reference: as a path, "" would be the working directory."""
    if not names.normalize(ref):
        raise RunError("the run name is blank (see `mlxlora runs list`)")


def find_run(ref: str) -> Path:
    """A run by directory, or in the workspace by its full directory name, the name the user
    gave it (NFC-normalised), or a unique prefix of its directory name.

    Names are compared as text, never as patterns: a `[` or `*` in a reference is a character.
    """
    refuse_blank(ref)
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
    raise RunError(f"{ref}: no such run ({_alike(ref)}see `mlxlora runs list`)")


def _workspace_runs() -> list[Path]:
    root = runs_root()
    return (
        sorted(p for p in root.iterdir() if (p / "config.yaml").is_file()) if root.is_dir() else []
    )


def _alike(ref: str) -> str:
    """`did you mean 実験2? ` for 実験２ (an IME's full-width digit) or another case: a run
    whose name or directory name reads as `ref` does; else nothing."""
    typed = names.folded(ref)
    if not typed:  # a blank reference begins every name: it means none of them
        return ""
    found = _workspace_runs()
    meant = [given_name(p) for p in found if names.folded(given_name(p)) == typed]
    meant += [p.name for p in found if names.folded(p.name).startswith(typed)]
    return f"did you mean {meant[0]}? " if meant else ""


def runs_named(ref: str) -> list[Path]:
    """The workspace's runs a name means: the one with that directory name, else those the
    user gave that name, else those whose directory name begins with it."""
    found = _workspace_runs()
    for matches in (
        [p for p in found if p.name == ref],
        [p for p in found if given_name(p) == ref],
        [p for p in found if ref and p.name.startswith(ref)],
    ):
        if matches:
            return matches
    return []
