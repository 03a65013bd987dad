"""The queue's runner: the one detached process that works the queue (`queue.py`), a job at a
time, and the closing of the jobs of a runner that died.

    runner.lock   an flock held by the one runner: two apps never start a job twice, and a
                  runner that dies releases it with its process
    gate.lock     held for a moment by whoever tries runner.lock (`_gate`)

A job's training child is recorded by its pid and start time (`procs`): after a reboot its
pid may name another process, which must not keep the queue waiting for ever. Imports no
mlx, torch or textual.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from mlxlora import procs
from mlxlora.events import RunFailed, RunFinished, RunStarted, parse, read_events_of
from mlxlora.queue import Job, _path, _save, _stored_jobs, jobs, root, stop_request
from mlxlora.runs import RunPaths, is_locked, run_status

IDLE_EXIT_SEC = 3.0  # a runner waits this long for a new job before it exits


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


def stalled() -> str | None:
    """Why queued jobs wait with no runner to train them (one that died as it started says
    why in runner.log: its last line), or None while a runner works or nothing waits."""
    if not any(j.state == "queued" for j in jobs()) or runner_alive():
        return None
    log = root() / "runner.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    said = f"; it last said ({log}): {last}" if last else ""
    return f"no runner is working the queue{said}; `mlxlora queue work` runs it here"


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
        job.pid, job.pid_start = child.pid, procs.started_at(child.pid)
        _save(job)
        for line in child.stdout:
            event = parse(line)
            if isinstance(event, RunStarted):
                started, job.run_dir = event, str(Path(event.run_dir).resolve())
                _save(job)
            finished = event if isinstance(event, RunFinished) else finished
            if started and stop_request(job.id).exists():  # after the run cleared its STOP
                RunPaths(Path(job.run_dir)).stop_request.touch()
                stop_request(job.id).unlink()
        job.exit_code = child.wait()
    stopped = finished is not None and finished.stopped
    state = "stopped" if stopped else "done" if job.exit_code == 0 else "failed"
    error = _error_line(log, job.exit_code) if state == "failed" else None
    if error and job.config:  # the queue's copy of the config: a file the user never named
        error = error.removeprefix(f"{job.config}: ")
    _finish(job, state, error)


def _error_line(log: Path, exit_code: int) -> str | None:
    """The child's one-line `mlxlora: error: ...`, the signal that killed it, or the last
    line it wrote."""
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    errors = [ln for ln in lines if ln.startswith("mlxlora: error: ")]
    if errors:
        return errors[-1].removeprefix("mlxlora: error: ")
    if exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:  # a real-time signal has no name
            return f"killed by signal {-exit_code}"
    return lines[-1] if lines else None


def _finish(job: Job, state: str, error: str | None) -> None:
    running = _path(job.id, "running")
    job.state, job.error, job.finished = state, error, time.time()
    _save(job)
    running.unlink(missing_ok=True)
    stop_request(job.id).unlink(missing_ok=True)


def close_cut_off() -> bool:
    """Close the jobs of a runner that died (True if any), unless a runner lives."""
    with _no_runner() as free:
        return free and _close_orphans(wait=False)


def _close_orphans(wait: bool) -> bool:
    """Jobs left in running/ by a runner that died (the caller holds the runner lock). A
    child still training is waited for (the runner: one job at a time, always) or left
    running (a reader); a dead one's job ends as its run did, and the run is resumable."""
    closed = False
    for job in (j for j in _stored_jobs() if j.state == "running"):
        if wait:
            while _training(job) and _holds_its_run(job):
                time.sleep(1.0)
        elif _training(job):
            continue  # a reader's look: it is still training
        _finish(job, *_cut_off_ending(job))
        closed = True
    return closed


def _training(job: Job) -> bool:
    """Whether the job's training child still runs: its pid alive, not a zombie, and not
    reused since (a job recorded without the child's start time: started before the job
    file was last written)."""
    if not job.pid:
        return False
    try:
        written = _path(job.id, "running").stat().st_mtime
    except FileNotFoundError:
        return False  # closed meanwhile
    return procs.owner_alive(job.pid, job.pid_start, written)


def _holds_its_run(job: Job) -> bool:
    """Whether the job's run is locked, as its child holds it while it trains: where a
    child's start time cannot be read, a pid taken over by a process that lives on must not
    keep the runner waiting for ever."""
    return not job.run_dir or is_locked(RunPaths(Path(job.run_dir)))


def _cut_off_ending(job: Job) -> tuple[str, str | None]:
    """The state and message of a job whose runner died while it ran: its run's own ending
    where the run has one (a stop, a failure's reason), else that it was cut off."""
    if not job.run_dir:
        return "failed", "the runner stopped before this job started a run; queue it again"
    paths = RunPaths(Path(job.run_dir))
    endings = read_events_of(paths.events, RunStarted, RunFinished, RunFailed)
    status = run_status(endings, False)
    if status in ("finished", "stopped"):
        return "done" if status == "finished" else "stopped", None
    if status == "failed":  # the run's last word is its RunFailed
        return "failed", endings[-1].reason
    return "failed", "the runner stopped while this job ran; resume its run"
