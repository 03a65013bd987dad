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
    runner.lock        an flock held by the one runner: two apps never start a job twice, and
                       a runner that dies releases it with its process
    gate.lock          held for a moment by whoever tries runner.lock (`_gate`)

Imports no mlx, torch or textual.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mlxlora import names
from mlxlora.errors import RunError
from mlxlora.events import RunFailed, RunFinished, RunStarted, parse, read_events_of
from mlxlora.procs import pid_alive
from mlxlora.runs import RunPaths, atomic_write_text, home, run_status

FOLDERS = ("queued", "running", "done")
ENDED = ("done", "stopped", "failed")  # the states of a job in done/
IDLE_EXIT_SEC = 3.0  # a runner waits this long for a new job before it exits


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
    found = _stored_jobs()
    if any(j.state == "running" for j in found) and _close_cut_off():
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


def lookup(ref: str) -> Job | None:
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
    return None


def remove(ref: str) -> Job:
    """Drop a queued job (by id, short id, name or id prefix). A running job is stopped
    (`stop`), not removed; an ended one goes with `clear_finished`."""
    job = find(ref)
    try:
        _path(job.id, "queued").unlink()
    except FileNotFoundError:
        todo = (
            "`mlxlora queue clear` forgets finished jobs"
            if job.state in ENDED
            else f"stop it instead (`mlxlora queue stop {short_id(job.id)}`)"
        )
        raise RunError(
            f"job {short_id(job.id)} ({job.name}) is {job.state}, not queued; {todo}"
        ) from None
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


def stop_request(job_id: str) -> Path:
    """A stop asked for a running job: the runner hands it to the job's run (`runcontrol`)."""
    path = root() / "stops" / job_id
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --- the runner ------------------------------------------------------------------------


def _lock_file(name: str = "runner.lock"):
    path = root() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a+")  # noqa: SIM115 (closed by the callers)


@contextmanager
def _gate():
    """Held for a moment by whoever tries the runner lock: a reader holding that lock to see
    whether a runner lives is then never taken for a runner by `ensure_runner` or `work`."""
    with _lock_file("gate.lock") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)
        yield


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
    if inherited_fd is not None:
        with os.fdopen(inherited_fd, "a+"):
            yield True
        return
    with _lock_file() as f:
        with _gate():
            held = _try_lock(f)
        yield held


@contextmanager
def _no_runner():
    """Yield True while no runner lives, none starting meanwhile (the gate is held)."""
    with _gate(), _lock_file() as f:
        yield _try_lock(f)


def runner_alive() -> bool:
    with _no_runner() as free:
        return not free


def ensure_runner() -> bool:
    """Start a detached runner when jobs are queued and none is working; True if started.

    The lock is taken here and handed to the runner as an open descriptor, so there is no
    moment in which a second caller could also find the queue without a runner."""
    if not any(j.state == "queued" for j in jobs()):
        return False
    with _gate(), _lock_file() as f:
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
        _close_orphans(wait=True)
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
    started = finished = None
    with open(log, "w", encoding="utf-8") as err:
        child = subprocess.Popen(
            job.command(), stdout=subprocess.PIPE, stderr=err, text=True, encoding="utf-8"
        )
        job.pid = child.pid
        _save(job)
        for line in child.stdout:
            event = parse(line)
            if isinstance(event, RunStarted):
                started, job.run_dir = event, event.run_dir
                _save(job)
            finished = event if isinstance(event, RunFinished) else finished
            if started and stop_request(job.id).exists():  # after the run cleared its STOP
                RunPaths(Path(job.run_dir)).stop_request.touch()
                stop_request(job.id).unlink()
        job.exit_code = child.wait()
    stopped = finished is not None and finished.stopped
    state = "stopped" if stopped else "done" if job.exit_code == 0 else "failed"
    _finish(job, state, _error_line(log, job.exit_code) if state == "failed" else None)


def _error_line(log: Path, exit_code: int) -> str | None:
    """The child's one-line `mlxlora: error: ...`, the signal that killed it, or the last
    line it wrote."""
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    errors = [ln for ln in lines if ln.startswith("mlxlora: error: ")]
    if errors:
        return errors[-1].removeprefix("mlxlora: error: ")
    if exit_code < 0:
        return f"killed by {signal.Signals(-exit_code).name}"
    return lines[-1] if lines else None


def _finish(job: Job, state: str, error: str | None) -> None:
    running = _path(job.id, "running")
    job.state, job.error, job.finished = state, error, time.time()
    _save(job)
    running.unlink(missing_ok=True)
    stop_request(job.id).unlink(missing_ok=True)


def _close_cut_off() -> bool:
    """Close the jobs of a runner that died (True if any), unless a runner lives."""
    with _no_runner() as free:
        return free and _close_orphans(wait=False)


def _close_orphans(wait: bool) -> bool:
    """Jobs left in running/ by a runner that died (the caller holds the runner lock). A
    child still training is waited for (the runner: one job at a time, always) or left
    running (a reader); a dead one's job ends as its run did, and the run is resumable."""
    closed = False
    for job in (j for j in _stored_jobs() if j.state == "running"):
        while wait and job.pid and not _exited(job.pid):
            time.sleep(1.0)
        if job.pid and not _exited(job.pid):
            continue  # a reader's look: it is still training
        _finish(job, *_cut_off_ending(job))
        closed = True
    return closed


def _exited(pid: int) -> bool:
    """The process is gone, or a zombie nobody reaps: a container's pid 1 may reap no orphan,
    and the training child of a killed runner is one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):  # no /proc (macOS, whose launchd reaps), or no such process
        return not pid_alive(pid)


def _cut_off_ending(job: Job) -> tuple[str, str | None]:
    """The state and message of a job whose runner died while it ran."""
    if not job.run_dir:
        return "failed", "the runner stopped before this job started a run; queue it again"
    paths = RunPaths(Path(job.run_dir))
    status = run_status(read_events_of(paths.events, RunStarted, RunFinished, RunFailed), False)
    if status == "finished":
        return "done", None
    return "stopped" if status == "stopped" else "failed", (
        "the runner stopped while this job ran; resume its run"
    )
