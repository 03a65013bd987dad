"""The workspace's runs as the faces list and delete them: a summary of each run read from
its directory in O(1) (however long it trained), and deletion that waits for no job. Imports
no mlx, torch or textual.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlxlora import queue
from mlxlora.errors import RunError
from mlxlora.events import (
    EarlyStop,
    Eval,
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    Step,
    parse,
    read_events_of,
)
from mlxlora.runs import RunPaths, is_locked, is_run_dir, read_json, run_lock, run_status, runs_root
from mlxlora.runview import RunView


@dataclass
class RunInfo:
    """What `runs list` and the TUI show about a run, derived from its directory only."""

    path: Path
    name: str
    status: str  # running | finished | stopped | failed | interrupted | new
    model: str
    step: int
    loss_ema: float | None  # the smoothed loss at the last step, as `train` shows it live
    best_val_loss: float | None
    started: float | None


TAIL_BYTES = 1 << 16  # the end of an events file that holds a run's latest state


def head_and_tail_events(path: Path, tail_bytes: int = TAIL_BYTES) -> tuple[Event | None, list]:
    """(first event, events of the last `tail_bytes`) of an events file, read in O(1).

    Enough for a run's summary however long it trained: run_started comes first, and after a
    run_finished or run_failed nothing is written but a resume's run_started, so the tail holds
    the latest state (a tail without any of the three means the run is in its last start).
    """
    try:
        with open(path, "rb") as f:
            first = parse(f.readline().decode("utf-8", "replace"))
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - tail_bytes))
            chunk = f.read()
    except OSError:
        return None, []
    lines = chunk.split(b"\n")[1 if size > tail_bytes else 0 :]  # the first may be cut
    return first, [e for e in (parse(ln.decode("utf-8", "replace")) for ln in lines) if e]


def run_info(path: Path) -> RunInfo:
    paths = RunPaths(path)
    first, events = head_and_tail_events(paths.events)
    if first is not None and not any(
        isinstance(e, (RunStarted, RunFinished, RunFailed)) for e in events
    ):
        events = [first, *events]  # a long last segment: its run_started is before the tail
    started = first if isinstance(first, RunStarted) else None
    steps = [e for e in events if isinstance(e, Step)]
    status = run_status(events, is_locked(paths))
    if status == "finished" and any(isinstance(e, EarlyStop) for e in events):
        status = "early-stopped"  # as the Runs tab says (runs list said finished)
    return RunInfo(
        path=path,
        name=path.name,
        status=status,
        model=started.model if started else "",
        step=steps[-1].step if steps else 0,
        loss_ema=(steps[-1].loss_ema or steps[-1].loss) if steps else None,
        best_val_loss=best_val_loss(paths, status),
        started=started.time if started else None,
    )


def best_val_loss(paths: RunPaths, status: str) -> float | None:
    """The run's best validation loss: its summary's once a session ended with one, else the
    best of the evaluations so far (a running or killed run has no summary, or an earlier
    session's), folded as the Runs tab folds them; only eval and run_started lines are read."""
    summary = read_json(paths.summary)
    if status in ("finished", "early-stopped", "stopped") and "best_val_loss" in summary:
        return summary["best_val_loss"]
    view = RunView(paths.root)
    view.add(read_events_of(paths.events, RunStarted, Eval))
    return view.best_eval.val_loss if view.best_eval else None


def check_deletable(paths: RunPaths) -> None:
    """RunError unless `paths` is a run that no queued or running job is for (asked before
    a face asks its user, and again when it deletes)."""
    if not is_run_dir(paths.root):  # a project folder with a config.yaml is not a run
        raise RunError(f"{paths.root}: not a run directory (no config.yaml beside its events)")
    waiting = queue.jobs_of(paths.root)
    if waiting:
        job, short = waiting[0], queue.short_id(waiting[0].id)
        todo = f"`mlxlora queue rm {short}` first" if job.state == "queued" else "stop it first"
        raise RunError(f"{paths.root.name}: job {short} is {job.state} for this run; {todo}")


def delete_run(path: Path) -> None:
    """Delete a run directory with its adapters and checkpoints (the CLI's `runs rm` and the
    Runs tab's delete). Refused while a process trains it or a queued job will resume it.

    The run is held (its lock) while it goes, so no training starts in it meanwhile, and it
    is moved aside in one rename first: a listing never shows half a run.
    """
    paths = RunPaths(Path(path))
    check_deletable(paths)
    try:
        with run_lock(paths):
            trash = Path(tempfile.mkdtemp(dir=paths.root.parent, prefix=f".rm-{paths.root.name}."))
            os.replace(paths.root, trash / paths.root.name)
    except RunError as exc:
        raise RunError(f"{exc}; stop it first, then delete it") from None
    shutil.rmtree(trash, ignore_errors=True)


def list_runs(root: Path | None = None) -> list[RunInfo]:
    root = root or runs_root()
    if not root.exists():
        return []
    dirs = [p for p in root.iterdir() if (p / "config.yaml").exists()]
    return sorted((run_info(p) for p in dirs), key=lambda r: r.started or 0, reverse=True)
