"""Stopping and resuming through the queue, and what the queue says of a job that ended
badly: a real runner (`queue_runner.ensure_runner`) training builtin:tiny."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from mlxlora import config, queue, queue_runner
from mlxlora.cli import main
from mlxlora.events import Step, read_events
from mlxlora.runlist import list_runs
from mlxlora.runs import RunPaths

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # `queue list` keeps each job on one line


def tiny_yaml(name: str, steps: int = 80) -> str:
    sets = [f"name={name}", f"training.max_steps={steps}", "training.eval_every=4"]
    return config.load(TINY, sets).to_yaml()


def wait_until(condition, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out")


def job_named(name: str) -> queue.Job | None:
    return next((j for j in queue.jobs() if j.name == name), None)


def checkpointed(name: str) -> queue.Job | None:
    """The job once its run has written a checkpoint (something to resume from)."""
    job = job_named(name)
    run = RunPaths(Path(job.run_dir)) if job and job.run_dir else None
    return job if run and run.latest_checkpoint() else None


def listed(capsys) -> dict[str, str]:
    """`queue list`: each job's name -> its row."""
    assert main(["queue", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    return {line.split()[1]: line for line in lines if line[:1].strip()}


def losses(run_dir: str) -> list[float]:
    return [e.loss for e in read_events(RunPaths(Path(run_dir)).events) if isinstance(e, Step)]


def test_stop_and_resume_through_the_queue_end_as_an_uninterrupted_run(home, capsys):
    for name in ("再開する実験", "通しの実験", "取り消す実験"):
        queue.add_train(tiny_yaml(name), name)
    assert queue_runner.ensure_runner()
    wait_until(lambda: checkpointed("再開する実験"))

    assert main(["queue", "stop", "取り消す実験"]) == 0  # queued: off the queue, never run
    assert "off the queue" in capsys.readouterr().out
    assert main(["queue", "stop", "再開する実験"]) == 0  # running: stops with a checkpoint
    assert "stopping 再開する実験 after its current step" in capsys.readouterr().out
    stopped = wait_until(
        lambda: job_named("再開する実験").state == "stopped" and job_named("再開する実験")
    )
    assert stopped.exit_code == 0 and stopped.error is None
    run = Path(stopped.run_dir)
    assert 0 < len(losses(stopped.run_dir)) < 80
    assert "stopped" in listed(capsys)["再開する実験"].split()

    assert main(["queue", "resume", run.name]) == 0
    assert "resume " + run.name in capsys.readouterr().out
    assert main(["queue", "resume", run.name]) == 5  # queued already: not twice
    assert "queued already; nothing to resume" in capsys.readouterr().err
    wait_until(lambda: [j.state for j in queue.jobs()] == ["stopped", "done", "done"])
    assert job_named("取り消す実験") is None
    whole = job_named("通しの実験").run_dir
    assert len(losses(whole)) == 80
    assert losses(str(run)) == losses(whole)  # the final loss, and every step's before it
    assert sorted(r.status for r in list_runs()) == ["finished", "finished"]
    assert main(["queue", "stop", run.name]) == 5
    assert "finished, neither running nor queued; nothing to stop" in capsys.readouterr().err


def test_a_killed_runners_job_shows_cut_off_without_a_new_runner(home, capsys):
    queue.add_train(tiny_yaml("孤児", steps=400), "孤児")
    assert queue_runner.ensure_runner()
    job = wait_until(lambda: checkpointed("孤児"))
    os.kill(os.getpgid(job.pid), signal.SIGKILL)  # the runner leads the child's process group
    wait_until(lambda: not queue_runner.runner_alive())
    # the child, its reader gone, stops at a step's end; no runner comes to close its job
    cut = wait_until(lambda: job_named("孤児").state != "running" and job_named("孤児"))
    assert (cut.state, cut.error) == ("stopped", None)  # as its run ended: no error
    assert not queue_runner.runner_alive()
    row = listed(capsys)["孤児"]
    assert " stopped " in row and Path(cut.run_dir).name in row and "runner" not in row
    assert main(["queue", "rm", "孤児"]) == 5
    assert "is stopped, not queued; `mlxlora queue clear`" in capsys.readouterr().err


def test_a_killed_training_child_is_a_failed_job_that_clear_forgets(home, capsys):
    queue.add_train(tiny_yaml("殺す", steps=400), "殺す")
    assert queue_runner.ensure_runner()
    job = wait_until(lambda: checkpointed("殺す"))
    os.kill(job.pid, signal.SIGKILL)
    failed = wait_until(lambda: job_named("殺す").state == "failed" and job_named("殺す"))
    assert (failed.exit_code, failed.error) == (-9, "killed by SIGKILL")
    row = listed(capsys)["殺す"]
    assert "failed (exit -9)" in row and "killed by SIGKILL" in row
    assert [r.status for r in list_runs()] == ["interrupted"]
    assert main(["queue", "clear"]) == 0
    assert "cleared 1 finished job" in capsys.readouterr().out and queue.jobs() == []


def test_a_readers_look_at_the_runner_lock_never_keeps_a_runner_from_starting(home):
    """`queue list` (and the studio, twice a second) holds the runner lock for a moment to
    see whether a runner lives; a job queued meanwhile still gets its runner."""
    queue.add_train(tiny_yaml("look", steps=2), "look")
    looking, release = threading.Event(), threading.Event()

    def look():
        with queue_runner._no_runner():
            looking.set()
            release.wait(5)

    reader = threading.Thread(target=look)
    reader.start()
    looking.wait(5)
    threading.Timer(0.3, release.set).start()
    assert queue_runner.ensure_runner()  # waits for the look, then starts
    reader.join()
    wait_until(lambda: [j.state for j in queue.jobs()] == ["done"])


def test_stop_and_resume_refuse_what_they_cannot_do(home, capsys):
    assert main(["queue", "stop", "何もない"]) == 5
    err = capsys.readouterr().err
    assert "何もない: no job or run with that id or name" in err
    assert main(["queue", "resume", "何もない"]) == 5
    assert "何もない" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["queue", "clear", "--help"])
    assert "done, stopped or failed" in capsys.readouterr().out
