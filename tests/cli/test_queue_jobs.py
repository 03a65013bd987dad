"""A queue job's life without training: who owns a running job (a reused pid, a zombie),
how a cut-off job ends, and `queue stop` by a job's or a run's name. Jobs and runs are
written by hand, as the runner and a trainer would leave them."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from mlxlora import config, procs, queue, queue_runner, runcontrol, runs
from mlxlora.cli import main
from mlxlora.events import EventWriter, RunFailed, RunFinished, RunStarted
from tests.conftest import NO_PROC, zombie_pid

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
ME = os.getpid()


STOPPED = RunFinished(step=2, best_val_loss=None, best_step=None, elapsed_sec=1.0, stopped=True)


def stopped_run(name: str, *ends: RunFinished | RunFailed) -> Path:
    """A run at step 2 with its checkpoint, stopped (or ended by `ends`; none: cut off)."""
    path = runs.new_run_dir(name)
    paths = runs.RunPaths(path)
    paths.config.write_text(config.load(TINY, [f"name={name}"]).to_yaml(), encoding="utf-8")
    paths.checkpoint(2).mkdir(parents=True)
    with EventWriter(paths.events) as w:
        w.emit(RunStarted(str(path), "builtin:tiny", "mlx", "cpu", 40, 4, 10, 10, 1, 2, 0.1))
        for end in ends:
            w.emit(end)
    return path


def running(job: queue.Job, pid: int = ME, pid_start: float | None = None) -> queue.Job:
    """`job` claimed by the runner, its child recorded as `pid` started at `pid_start`."""
    claimed = queue_runner._claim_next()
    assert claimed.id == job.id
    claimed.pid, claimed.pid_start = pid, pid_start
    queue._save(claimed)
    return claimed


def state_of(job: queue.Job) -> tuple[str, str | None]:
    found = queue.find(job.id)
    return found.state, found.error


def test_a_job_whose_pid_now_names_another_process_is_closed_and_never_waited_for(home):
    """After a reboot a job's pid names some other process: the next runner waited for it
    for ever, holding the queue, and every face showed the job running."""
    start = procs.started_at(ME)
    reused = running(queue.add_train("{}", "再起動"), pid_start=start - 3600)
    assert state_of(reused) == (
        "failed",
        "the runner stopped before this job started a run; queue it again",
    )
    legacy = running(queue.add_train("{}", "legacy"))  # recorded with its pid only
    os.utime(queue._path(legacy.id, "running"), (start - 3600, start - 3600))
    worked = threading.Thread(target=queue_runner.work, kwargs={"idle_exit": 0}, daemon=True)
    worked.start()
    worked.join(timeout=10)
    assert not worked.is_alive() and state_of(legacy)[0] == "failed"
    live = running(queue.add_train("{}", "live"), pid_start=start)
    assert state_of(live) == ("running", None)  # its child (this process) still trains


def test_a_runner_stops_waiting_for_a_child_whose_run_is_not_held(home, monkeypatch):
    """Where a start time cannot be read, a pid is taken as its child's: a process that
    lives on with it kept the new runner waiting for ever, though no one trained the run."""
    monkeypatch.setattr(procs, "started_at", lambda pid: None)
    job = running(queue.add_resume(stopped_run("止まった", STOPPED)))
    worked = threading.Thread(target=queue_runner.work, kwargs={"idle_exit": 0}, daemon=True)
    worked.start()
    worked.join(timeout=10)
    assert not worked.is_alive() and state_of(job) == ("stopped", None)


@NO_PROC
def test_a_zombie_child_is_not_training(home):
    """A container's pid 1 may reap no orphan: a killed runner's child stays a zombie."""
    with zombie_pid() as pid:
        job = running(queue.add_train("{}", "ゾンビ"), pid=pid, pid_start=procs.started_at(pid))
        assert state_of(job)[0] == "failed"


def test_a_cut_off_job_ends_as_its_run_did(home):
    """A job whose runner died ends with its run's own words: a stop is not an error, and a
    failure keeps its reason (it read 'the runner stopped while this job ran')."""
    memory = RunFailed(reason="memory stop: 9.1 GB of 8 GB", step=2)
    failed = stopped_run("oom", memory)
    halted = stopped_run("halted", STOPPED)
    cut = stopped_run("cut")
    ended = {}
    for path in (failed, halted, cut):
        ended[path] = running(queue.add_resume(path), pid=0)
    assert state_of(ended[failed]) == ("failed", "memory stop: 9.1 GB of 8 GB")
    assert state_of(ended[halted]) == ("stopped", None)
    assert state_of(ended[cut]) == (
        "failed",
        "the runner stopped while this job ran; resume its run",
    )


def test_a_training_child_killed_by_a_real_time_signal_is_a_failed_job(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("", encoding="utf-8")
    realtime = signal.SIGRTMIN + 5  # no name: signal.Signals() refused it, and the runner died
    assert queue_runner._error_line(log, -realtime) == f"killed by signal {int(realtime)}"
    assert queue_runner._error_line(log, -signal.SIGKILL) == "killed by SIGKILL"


def test_queue_stop_a_run_by_name_after_a_stop_and_a_resume(home, capsys):
    """The run's stopped resume job has its name too: `queue stop RUN` was refused, '2 jobs
    match; give the job id'."""
    run = stopped_run("再開", STOPPED)
    earlier = running(queue.add_resume(run))
    queue_runner._finish(earlier, "stopped", None)
    now = running(queue.add_resume(run), pid_start=procs.started_at(ME))
    assert main(["queue", "stop", run.name]) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"stopping {run.name} after its current step (checkpoint kept)"
    )
    assert queue.stop_request(now.id).exists()


def test_a_stop_racing_the_runners_claim_stops_the_running_job(home):
    """Read queued, claimed before it was removed: the stop said 'job X is running, not
    queued; stop it instead (`mlxlora queue stop X`)', the command just run."""
    seen = queue.add_train("{}", "競争")
    claimed = running(seen, pid_start=procs.started_at(ME))
    assert runcontrol.stop(seen) == "stopping 競争 after its current step (checkpoint kept)"
    assert queue.stop_request(claimed.id).exists()


def test_a_run_under_a_symlinked_home_is_matched_to_its_job(home, tmp_path, monkeypatch):
    """A train job records its run as the child gave it (a symlinked home unresolved):
    stop and resume missed the job and called the run interrupted."""
    link = tmp_path / "link"
    link.symlink_to(home)
    monkeypatch.setenv("MLXLORA_HOME", str(link))
    run = stopped_run("リンク", STOPPED)
    job = running(queue.add_train("{}", "リンク"), pid_start=procs.started_at(ME))
    job.run_dir = str(run)  # as `RunStarted.run_dir` gave it, under the link
    queue._save(job)
    assert runcontrol.stop_run(run) == "stopping リンク after its current step (checkpoint kept)"
    assert queue.stop_request(job.id).exists()
    assert [j.id for j in queue.jobs_of(run.resolve())] == [job.id]


def test_jobs_waiting_for_a_runner_that_died_say_why(home, capsys):
    """A runner that died as it started (an install that lost its package) left the jobs
    queued, with nothing anywhere to say so: the studio's Start waited for ever."""
    queue.add_train("{}", "待機")
    assert queue_runner.stalled() == (
        "no runner is working the queue; `mlxlora queue work` runs it here"
    )
    log = queue.root() / "runner.log"
    log.write_text("/usr/bin/python3: No module named mlxlora\n\n")
    why = f"no runner is working the queue; it last said ({log}): "
    assert queue_runner.stalled() == (
        why + "/usr/bin/python3: No module named mlxlora; `mlxlora queue work` runs it here"
    )
    assert main(["queue", "list"]) == 0
    assert "No module named mlxlora; `mlxlora queue work` runs it here" in capsys.readouterr().out
    with queue_runner._lock_file() as f:  # a runner at work: nothing to say
        assert queue_runner._try_lock(f) and queue_runner.stalled() is None
