"""Stop and resume a job or a run: `mlxlora queue stop|resume` and the Runs tab's s and r.

A running job is stopped as the studio always stopped a run: its STOP file, read at a step's
end, so the run checkpoints and can resume. Imports no mlx, torch or textual.
"""

from __future__ import annotations

from pathlib import Path

from mlxlora import names, queue
from mlxlora.diagnosis import MEMORY_STOP
from mlxlora.errors import RunError
from mlxlora.events import RunFailed, RunFinished, RunStarted, read_events_of
from mlxlora.queue import Job, short_id
from mlxlora.runs import RunPaths, check_resumable, find_run, is_locked, run_status, runs_named


def stop(job: Job) -> str:
    """Stop a job: a queued one leaves the queue; a running one's run checkpoints and stops
    after its current step. Returns what was done, in words."""
    if job.state == "queued":
        try:
            queue.remove(job.id)
            return f"took {short_id(job.id)} ({job.name}) off the queue"
        except queue.NotQueued as exc:  # the runner claimed it meanwhile
            job = exc.job
    if job.state != "running":
        if job.run_dir:  # a later job of its run may be running or queued
            return stop_run(Path(job.run_dir))
        raise RunError(f"job {short_id(job.id)} ({job.name}) is {job.state}; nothing to stop")
    queue.ask_stop(job.id)  # the runner hands it on once the child's run started
    run = RunPaths(Path(job.run_dir)) if job.run_dir else None
    if run and is_locked(run):  # also when the runner is gone and cannot hand it on
        run.stop_request.touch()
    return _stopping(job.name)


def _stopping(name: str) -> str:
    return f"stopping {name} after its current step (checkpoint kept)"


def stop_run(path: Path) -> str:
    """Stop a run: the job running or queued for it (`stop`), else its training process."""
    paths = RunPaths(Path(path))
    pending = queue.jobs_of(paths.root)
    if pending:
        return stop(min(pending, key=lambda j: j.state != "running"))
    if is_locked(paths):  # trained outside the queue (`mlxlora train`)
        paths.stop_request.touch()
        return _stopping(paths.root.name)
    status = run_status(read_events_of(paths.events, RunStarted, RunFinished, RunFailed), False)
    raise RunError(f"{paths.root.name}: {status}, neither running nor queued; nothing to stop")


def stop_named(ref: str) -> str:
    """`stop` a job, or `stop_run` a run, by what a user types: a job's id or name, a run's
    name or directory. A job queued or running comes first; a run's ended jobs (a resume's
    name is its run's) never hide the run."""
    job = queue.lookup(ref, states=queue.LIVE)
    if job is not None:
        return stop(job)
    try:
        path = find_run(ref)
    except RunError:
        path = None
    if path is not None:
        return stop_run(path)
    job = queue.lookup(ref)  # an ended job: says so
    if job is not None:
        return stop(job)
    raise RunError(
        f"{ref}: no job or run with that id or name (see `mlxlora queue list` and "
        "`mlxlora runs list`)"
    )


def resume_named(ref: str) -> Job:
    """`resume` a run by what a user types. A name several runs share (a config trained
    again) means the one of them that can resume, where only one can."""
    matches = runs_named(names.normalize(ref))
    if len(matches) > 1:  # else find_run's answer, or its one-line refusal
        resumable = [p for p in matches if _resume_refusal(RunPaths(p)) is None]
        if len(resumable) == 1:
            return resume(resumable[0])
    return resume(find_run(ref))


def resume(path: Path) -> Job:
    """Queue a resume of a stopped, interrupted or failed run; one the memory budget stopped
    resumes refitted (`--fit`), as its failure advises. Refused for a run that is running or
    waiting in the queue already, finished, or without a checkpoint."""
    paths = RunPaths(Path(path))
    if refusal := _resume_refusal(paths):
        raise RunError(refusal)
    endings = read_events_of(paths.events, RunFailed, RunFinished)
    failed = endings[-1] if endings and isinstance(endings[-1], RunFailed) else None
    return queue.add_resume(paths.root, fit=bool(failed and failed.reason.startswith(MEMORY_STOP)))


def _resume_refusal(paths: RunPaths) -> str | None:
    """Why the run cannot resume now, or None."""
    try:
        check_resumable(paths)
    except RunError as exc:
        return str(exc)
    pending = queue.jobs_of(paths.root)
    if pending or is_locked(paths):
        state = pending[0].state if pending else "running"
        return f"{paths.root.name}: {state} already; nothing to resume"
    return None
