"""The job queue: training jobs waiting their turn, worked one at a time by a detached runner.

Runs outlive whoever queued them (the TUI, a sweep): a runner process, started on demand and
detached from the terminal, takes the oldest queued job, runs it as a child `mlxlora train
... --json`, records the run directory it created, and goes on to the next; it exits when the
queue stays empty. Layout under `home()/queue/`:

    queued/<id>.json   waiting, oldest id first (a job's state is the folder it is in: moving a
    running/<id>.json  file is one atomic rename, so a job is claimed, or removed, exactly once)
    done/<id>.json     ended: done, stopped (on request) or failed, with the exit code and
                       the one-line error of a failed job
    configs/<id>.yaml  a train job's config;  logs/<id>.log  the child's stderr
    stops/<id>         a stop asked for a running job, handed to its run once the run started

The runner and its locks are `queue_runner`. Imports no mlx, torch or textual.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mlxlora import names
from mlxlora.atomic import atomic_write_text
from mlxlora.errors import RunError
from mlxlora.runs import home

FOLDERS = ("queued", "running", "done")
ENDED = ("done", "stopped", "failed")  # the states of a job in done/
LIVE = ("queued", "running")


@dataclass
class Job:
    """One queued, running or finished job, as `queue list` and the TUI show it."""

    id: str
    name: str
    kind: str  # train | resume
    created: float
    state: str = "queued"  # queued | running | done | stopped | failed
    config: str | None = None  # train: the config file the job runs
    run_dir: str | None = None  # resume: the run; train: known once the child started it
    # (resolved; a job recorded before that may hold the run's path as the child gave it)
    pid: int | None = None
    pid_start: float | None = None  # when that process started (`procs`: a pid is reused)
    exit_code: int | None = None
    error: str | None = None  # the child's one-line error, when it failed
    finished: float | None = None
    fit: bool = False  # resume: refit to the memory budget (`--fit`)

    def command(self) -> list[str]:
        """The `mlxlora train` child this job runs."""
        base = [sys.executable, "-m", "mlxlora", "train"]
        if self.kind == "resume":
            return [*base, "--resume", str(self.run_dir), *["--fit"] * self.fit, "--json"]
        return [*base, str(self.config), "--json"]


def root() -> Path:
    return home() / "queue"


def _path(job_id: str, state: str) -> Path:
    return root() / ("done" if state in ENDED else state) / f"{job_id}.json"


def _save(job: Job) -> None:
    atomic_write_text(_path(job.id, job.state), json.dumps(asdict(job), ensure_ascii=False))


def _load(path: Path) -> Job | None:
    """A job file, or None for a half-written or foreign one (never a crash)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {f.name for f in fields(Job)}
        job = Job(**{k: v for k, v in data.items() if k in names})
    except (OSError, ValueError, TypeError):
        return None
    if job.state == "done" and (job.exit_code or job.error):
        job.state = "failed"  # recorded before a failed job had a state of its own
    return job


def _new_id() -> str:
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"  # sorts by creation


def add_train(config_yaml: str, name: str) -> Job:
    """Queue a training job from a config's YAML text (`Config.to_yaml()`)."""
    job = Job(id=_new_id(), name=name, kind="train", created=time.time())
    config = root() / "configs" / f"{job.id}.yaml"
    atomic_write_text(config, config_yaml)
    job.config = str(config)
    _save(job)
    return job


def add_resume(run_dir: Path, fit: bool = False) -> Job:
    """Queue `mlxlora train --resume RUN` (`--fit`: refitted to the memory budget) for a
    stopped, interrupted or failed run."""
    run_dir = Path(run_dir).resolve()
    job = Job(id=_new_id(), name=run_dir.name, kind="resume", created=time.time(), fit=fit)
    job.run_dir = str(run_dir)
    _save(job)
    return job


def jobs() -> list[Job]:
    """Every job, oldest first: what `queue list` and the studio show. A job left running by
    a runner that died is closed first, as the next runner would close it, so that no face
    shows it running once its training child is gone too."""
    from mlxlora.queue_runner import close_cut_off  # the runner's half imports this one

    found = _stored_jobs()
    if any(j.state == "running" for j in found) and close_cut_off():
        found = _stored_jobs()
    return found


def _stored_jobs() -> list[Job]:
    found = []
    for state in FOLDERS:
        folder = root() / state
        if folder.is_dir():
            found += [
                j
                for j in map(_load, folder.glob("*.json"))
                if j and _path(j.id, j.state).parent == folder
            ]
    return sorted(found, key=lambda j: j.id)


def short_id(job_id: str) -> str:
    """The random tail of a job id (`21a655` of `01795687324370694375-21a655`): what a list
    shows and a user types; the time-stamp head shared by jobs queued together is no use."""
    return job_id.rpartition("-")[2] or job_id


def find(ref: str) -> Job:
    """A job by id, short id, name or unique id prefix; of several, the one still queued; a
    reference that fits several otherwise is refused with them listed (one line)."""
    job = lookup(ref)
    if job is None:
        raise RunError(f"{ref}: no job with that id or name (see `mlxlora queue list`)")
    return job


def lookup(ref: str, states: tuple[str, ...] = (*LIVE, *ENDED)) -> Job | None:
    """`find`, among the jobs in `states`; None where no job fits."""
    name = names.normalize(ref)
    if not name:  # else the error names nothing: `: no job with that id or name`
        raise RunError("the job name is blank (see `mlxlora queue list`)")
    found = [j for j in jobs() if j.state in states]
    for matches in (
        [j for j in found if ref in (j.id, short_id(j.id))],
        [j for j in found if names.normalize(j.name) == name],
        [j for j in found if j.id.startswith(ref)],
    ):
        waiting = [j for j in matches if j.state == "queued"]
        if len(matches) > 1 and len(waiting) == 1:  # a name queued again after it ran
            return waiting[0]
        if len(matches) == 1:
            return matches[0]
        if matches:
            shown = ", ".join(f"{short_id(j.id)} {j.name} ({j.state})" for j in matches[:5])
            more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
            raise RunError(f"{ref}: {len(matches)} jobs match ({shown}{more}); give the job id")
    return None


class NotQueued(RunError):
    """A job to remove is running or ended (`job`, as read now): each face says what to do."""

    def __init__(self, job: Job):
        self.job = job
        todo = (
            "`mlxlora queue clear` forgets finished jobs"
            if job.state in ENDED
            else f"stop it instead (`mlxlora queue stop {short_id(job.id)}`)"
        )
        super().__init__(f"job {short_id(job.id)} ({job.name}) is {job.state}, not queued; {todo}")


def remove(ref: str) -> Job:
    """Drop a queued job (by id, short id, name or id prefix). A running job is stopped
    (`stop`), not removed; an ended one goes with `clear_finished`."""
    job = find(ref)
    try:
        _path(job.id, "queued").unlink()
    except FileNotFoundError:
        raise NotQueued(lookup(job.id) or job) from None  # it may have moved on meanwhile
    if job.config:
        Path(job.config).unlink(missing_ok=True)
    return job


def clear_finished() -> list[Job]:
    """Forget the ended (done, stopped or failed) jobs with their configs and logs; a queued
    or running job is never touched. Their runs stay (`mlxlora runs rm` deletes a run)."""
    cleared = [j for j in jobs() if j.state in ENDED]
    for job in cleared:
        forget(job)
    return cleared


def forget(job: Job) -> None:
    """Forget one ended job (the Runs tab's delete on a failed job's row)."""
    if job.state not in ENDED:
        raise RunError(f"job {short_id(job.id)} ({job.name}) is {job.state}, not finished")
    _path(job.id, job.state).unlink(missing_ok=True)
    if job.config:
        Path(job.config).unlink(missing_ok=True)
    (root() / "logs" / f"{job.id}.log").unlink(missing_ok=True)


def jobs_of(run: Path, found: list[Job] | None = None, states=LIVE) -> list[Job]:
    """The jobs (of `found`, else of the queue) for the run in `run`, in `states`: the path
    compared resolved, as a symlinked home may give it either way."""
    mine = Path(run).resolve()
    return [
        j
        for j in (jobs() if found is None else found)
        if j.state in states and j.run_dir and Path(j.run_dir).resolve() == mine
    ]


def ask_stop(job_id: str) -> None:
    """Ask a running job to stop: the runner hands it to the job's run (`runcontrol`)."""
    stop_request(job_id).parent.mkdir(parents=True, exist_ok=True)
    stop_request(job_id).touch()


def stop_request(job_id: str) -> Path:
    """Where a stop asked for a running job waits for the runner."""
    return root() / "stops" / job_id
