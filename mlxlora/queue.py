"""The job queue: training jobs waiting their turn, worked one at a time by a detached runner.

Runs outlive whoever queued them (the TUI, a sweep): a runner process, started on demand and
detached from the terminal, takes the oldest queued job, runs it as a child `mlxlora train
... --json`, records the run directory it created, and goes on to the next; it exits when the
queue stays empty. Layout under `home()/queue/`:

    queued/<id>.json   waiting, oldest id first (a job's state is the folder it is in: moving a
    running/<id>.json  file is one atomic rename, so a job is claimed, or removed, exactly once)
    done/<id>.json     finished, with the exit code and, for a job that failed before it
                       started a run, the one-line error
    configs/<id>.yaml  a train job's config;  logs/<id>.log  the child's stderr
    runner.lock        an flock held by the one runner: two apps never start a job twice, and
                       a runner that dies releases it with its process

Imports no mlx, torch or textual.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mlxlora import names
from mlxlora.errors import RunError
from mlxlora.events import RunStarted, parse
from mlxlora.procs import pid_alive
from mlxlora.runs import atomic_write_text, home

STATES = ("queued", "running", "done")
IDLE_EXIT_SEC = 3.0  # a runner waits this long for a new job before it exits


@dataclass
class Job:
    """One queued, running or finished job, as `queue list` and the TUI show it."""

    id: str
    name: str
    kind: str  # train | resume
    created: float
    state: str = "queued"
    config: str | None = None  # train: the config file the job runs
    run_dir: str | None = None  # resume: the run; train: known once the child started it
    pid: int | None = None
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
    return root() / state / f"{job_id}.json"


def _save(job: Job) -> None:
    atomic_write_text(_path(job.id, job.state), json.dumps(asdict(job), ensure_ascii=False))


def _load(path: Path) -> Job | None:
    """A job file, or None for a half-written or foreign one (never a crash)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {f.name for f in fields(Job)}
        return Job(**{k: v for k, v in data.items() if k in names})
    except (OSError, ValueError, TypeError):
        return None


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
    """Every job, oldest first."""
    found = []
    for state in STATES:
        folder = root() / state
        if folder.is_dir():
            found += [j for j in map(_load, folder.glob("*.json")) if j and j.state == state]
    return sorted(found, key=lambda j: j.id)


def short_id(job_id: str) -> str:
    """The random tail of a job id (`21a655` of `01795687324370694375-21a655`): what a list
    shows and a user types; the time-stamp head shared by jobs queued together is no use."""
    return job_id.rpartition("-")[2] or job_id


def find(ref: str) -> Job:
    """A job by id, short id, name or unique id prefix; of several, the one still queued; a
    reference that fits several otherwise is refused with them listed (one line)."""
    found = jobs()
    name = names.normalize(ref)
    for matches in (
        [j for j in found if ref in (j.id, short_id(j.id))],
        [j for j in found if names.normalize(j.name) == name],
        [j for j in found if ref and j.id.startswith(ref)],
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
    raise RunError(f"{ref}: no job with that id or name (see `mlxlora queue list`)")


def remove(ref: str) -> Job:
    """Drop a queued job (by id, short id, name or id prefix). A running job is stopped
    through its run, not here; a finished one goes with `clear_finished`."""
    job = find(ref)
    try:
        _path(job.id, "queued").unlink()
    except FileNotFoundError:
        todo = (
            "`mlxlora queue clear` forgets finished jobs"
            if job.state == "done"
            else "stop its run instead (the Runs tab, or touch RUN/STOP)"
        )
        raise RunError(
            f"job {short_id(job.id)} ({job.name}) is {job.state}, not queued; {todo}"
        ) from None
    if job.config:
        Path(job.config).unlink(missing_ok=True)
    return job


def clear_finished() -> list[Job]:
    """Forget the finished (done or failed) jobs with their configs and logs; a queued or
    running job is never touched. Their runs stay (`mlxlora runs rm` deletes a run)."""
    cleared = [j for j in jobs() if j.state == "done"]
    for job in cleared:
        forget(job)
    return cleared


def forget(job: Job) -> None:
    """Forget one finished job (the Runs tab's delete on a failed job's row)."""
    if job.state != "done":
        raise RunError(f"job {short_id(job.id)} ({job.name}) is {job.state}, not finished")
    _path(job.id, "done").unlink(missing_ok=True)
    if job.config:
        Path(job.config).unlink(missing_ok=True)
    (root() / "logs" / f"{job.id}.log").unlink(missing_ok=True)


# --- the runner ------------------------------------------------------------------------


def _lock_file():
    path = root() / "runner.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a+")  # noqa: SIM115 (closed by the callers)


def _try_lock(f) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def runner_lock(inherited_fd: int | None = None):
    """Yield True while this process holds the runner lock, False if another runner does.
    `inherited_fd`: the lock, already held, handed over by `ensure_runner`."""
    with os.fdopen(inherited_fd, "a+") if inherited_fd is not None else _lock_file() as f:
        held = inherited_fd is not None or _try_lock(f)
        yield held


def runner_alive() -> bool:
    with runner_lock() as free:
        return not free


def ensure_runner() -> bool:
    """Start a detached runner when jobs are queued and none is working; True if started.

    The lock is taken here and handed to the runner as an open descriptor, so there is no
    moment in which a second caller could also find the queue without a runner."""
    if not any(j.state == "queued" for j in jobs()):
        return False
    with _lock_file() as f:
        if not _try_lock(f):
            return False
        with open(root() / "runner.log", "a") as err:
            subprocess.Popen(
                [sys.executable, "-m", "mlxlora", "queue", "work", "--lock-fd", str(f.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                pass_fds=(f.fileno(),),
                start_new_session=True,  # outlives the app and its terminal
                cwd=root(),
            )
    return True  # closing our copy leaves the lock with the runner's


def work(idle_exit: float = IDLE_EXIT_SEC, lock_fd: int | None = None) -> int | None:
    """Run queued jobs one at a time, oldest first, until the queue stays empty for
    `idle_exit` seconds. Returns how many jobs ran; None when another runner holds the queue."""
    with runner_lock(lock_fd) as held:
        if not held:
            return None
        _close_orphans()
        ran, idle_since = 0, time.monotonic()
        while True:
            job = _claim_next()
            if job is None:
                if time.monotonic() - idle_since >= idle_exit:
                    return ran
                time.sleep(min(0.5, idle_exit))
                continue
            _run(job)
            ran, idle_since = ran + 1, time.monotonic()


def _claim_next() -> Job | None:
    """Move the oldest queued job to running/ (one rename: a removed job cannot start)."""
    (root() / "running").mkdir(parents=True, exist_ok=True)
    for job in (j for j in jobs() if j.state == "queued"):
        try:
            os.replace(_path(job.id, "queued"), _path(job.id, "running"))
        except FileNotFoundError:
            continue  # removed a moment ago
        job.state = "running"
        return job
    return None


def _run(job: Job) -> None:
    log = root() / "logs" / f"{job.id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as err:
        child = subprocess.Popen(
            job.command(), stdout=subprocess.PIPE, stderr=err, text=True, encoding="utf-8"
        )
        job.pid = child.pid
        _save(job)
        for line in child.stdout:
            event = parse(line) if job.run_dir is None else None
            if isinstance(event, RunStarted):
                job.run_dir = event.run_dir
                _save(job)
        job.exit_code = child.wait()
    job.error = _error_line(log) if job.exit_code else None
    _finish(job)


def _error_line(log: Path) -> str | None:
    """The child's one-line `mlxlora: error: ...`, or the last line it wrote."""
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    errors = [ln for ln in lines if ln.startswith("mlxlora: error: ")]
    if errors:
        return errors[-1].removeprefix("mlxlora: error: ")
    return lines[-1] if lines else None


def _finish(job: Job) -> None:
    running = _path(job.id, "running")
    job.state, job.finished = "done", time.time()
    _save(job)
    running.unlink(missing_ok=True)


def _close_orphans() -> None:
    """Jobs left in running/ by a runner that died. A child still training is waited for (one
    job at a time, always); a dead one's run is interrupted, and resumable."""
    for job in (j for j in jobs() if j.state == "running"):
        while job.pid and pid_alive(job.pid):
            time.sleep(1.0)
        job.error = "the runner stopped while this job ran; resume its run"
        _finish(job)
