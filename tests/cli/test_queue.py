"""The job queue: jobs run one at a time, in order, by one runner, and outlive who queued them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlxlora import config, queue, queue_runner
from mlxlora.cli import main
from mlxlora.events import RunStarted, read_events
from mlxlora.runlist import list_runs
from mlxlora.runs import RunPaths

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"


def tiny_yaml(name: str, **overrides) -> str:
    sets = [f"name={name}", "training.max_steps=2"] + [f"{k}={v}" for k, v in overrides.items()]
    return config.load(TINY, sets).to_yaml()


def test_jobs_run_one_at_a_time_in_order(home):
    first = queue.add_train(tiny_yaml("第一"), "第一")
    second = queue.add_train(tiny_yaml("second"), "second")
    assert [j.state for j in queue.jobs()] == ["queued", "queued"]
    assert queue_runner.work(idle_exit=0) == 2
    done = {j.id: j for j in queue.jobs()}
    assert [done[j.id].state for j in (first, second)] == ["done", "done"]
    assert all(done[j.id].exit_code == 0 and done[j.id].error is None for j in (first, second))
    starts, ends = [], []
    for job in (first, second):
        events = read_events(RunPaths(Path(done[job.id].run_dir)).events)
        starts.append(next(e for e in events if isinstance(e, RunStarted)).time)
        ends.append(events[-1].time)
    assert ends[0] <= starts[1]  # the second started after the first finished
    assert sorted(r.status for r in list_runs()) == ["finished", "finished"]


def test_a_job_that_cannot_start_keeps_its_one_line_error_and_makes_no_run(home):
    queue.add_train(tiny_yaml("broken", **{"data.dataset": "no-such-dataset"}), "broken")
    assert queue_runner.work(idle_exit=0) == 1
    (job,) = queue.jobs()
    assert job.state == "failed" and job.exit_code == 3 and job.run_dir is None
    assert job.error.startswith("data.dataset: unknown dataset 'no-such-dataset'")
    assert list_runs() == []


def test_removed_job_never_starts_and_running_job_cannot_be_removed(home, capsys):
    job = queue.add_train(tiny_yaml("gone"), "gone")
    assert main(["queue", "rm", job.id[:12]]) == 0
    assert queue.jobs() == [] and not Path(job.config).exists()
    assert queue_runner.work(idle_exit=0) == 0
    done = queue.add_train(tiny_yaml("kept"), "kept")
    queue_runner.work(idle_exit=0)
    assert main(["queue", "rm", done.id]) == 5
    assert "is done, not queued; `mlxlora queue clear`" in capsys.readouterr().err


def test_resume_job_continues_a_stopped_run(home, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxlora", "train", str(TINY), "--run-dir", str(run)]
        + ["--set", "training.max_steps=20", "--set", "training.eval_every=2", "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:  # stop it (as the TUI does) after its first checkpoint
        if json.loads(line)["type"] == "checkpoint":
            RunPaths(run).stop_request.touch()
    assert proc.wait(timeout=120) == 0
    assert [r.status for r in list_runs(tmp_path)] == ["stopped"]
    job = queue.add_resume(run)
    assert queue_runner.work(idle_exit=0) == 1
    (done,) = queue.jobs()
    assert (done.id, done.exit_code, done.run_dir) == (job.id, 0, str(run.resolve()))
    assert [r.status for r in list_runs(tmp_path)] == ["finished"]


def test_two_runners_never_start_a_job_twice(home):
    for i in range(3):
        queue.add_train(tiny_yaml(f"job{i}"), f"job{i}")
    cmd = [sys.executable, "-m", "mlxlora", "queue", "work"]
    runners = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = sorted(r.communicate(timeout=300)[0].strip() for r in runners)
    assert outs == ["another runner is working the queue", "ran 3 jobs"]
    assert len(list_runs()) == 3 and all(j.exit_code == 0 for j in queue.jobs())


def test_ensure_runner_starts_a_detached_runner_that_drains_the_queue(home):
    assert queue_runner.ensure_runner() is False  # nothing queued: no runner
    queue.add_train(tiny_yaml("detached"), "detached")
    assert queue_runner.ensure_runner() is True
    assert queue_runner.ensure_runner() is False  # one is working already
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(j.state == "done" for j in queue.jobs()):
        time.sleep(0.5)
    (job,) = queue.jobs()
    assert job.state == "done" and job.exit_code == 0
    while queue_runner.runner_alive() and time.monotonic() < deadline:
        time.sleep(0.5)  # it exits on its own once the queue stays empty
    assert not queue_runner.runner_alive()


def shown_rows(out: str) -> list[str]:
    """The first lines of a listing's rows (a folded cell goes on below, indented)."""
    return [line for line in out.splitlines()[2:] if line[:1].strip()]


def test_queue_list_at_80_columns_shows_whole_ids_that_rm_takes_with_names(
    home, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "80")
    names = ["テスト実験モデル_長い名前_v1", "alpha", "beta", "alpha"]
    queued = [queue.add_train(tiny_yaml(n), n) for n in names]
    assert main(["queue", "list"]) == 0
    rows = shown_rows(capsys.readouterr().out)
    assert "…" not in "".join(rows)
    ids = []
    for job in queued:  # a row names its job whole, on one line, by an id that finds it
        (row,) = [r for r in rows if r.split()[1] == job.name and queue.find(r.split()[0]) == job]
        ids.append(row.split()[0])
    assert len(set(ids)) == 4 and all(len(i) < 12 for i in ids)
    # each queued time whole on its row: `2026-11-27` over `11:10` wrapped (a review finding)
    stamped = [r for r in rows if re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", r)]
    assert len(stamped) == 4, rows

    assert main(["queue", "rm", ids[0]]) == 0
    assert main(["queue", "rm", "beta"]) == 0  # by name
    assert f"removed {ids[2]} (beta)" in capsys.readouterr().out
    assert main(["queue", "rm", "alpha"]) == 5  # two jobs have it: refused, both listed
    (err,) = capsys.readouterr().err.splitlines()
    assert err == (
        f"mlxlora: error: alpha: 2 jobs match ({ids[1]} alpha (queued), {ids[3]} alpha "
        "(queued)); give the job id"
    )
    assert [j.id for j in queue.jobs()] == [queued[1].id, queued[3].id]


def test_queue_clear_forgets_finished_jobs_and_never_a_waiting_or_running_one(home, capsys):
    ok = queue.add_train(tiny_yaml("ok"), "ok")
    bad = queue.add_train(tiny_yaml("bad", **{"data.dataset": "no-such-dataset"}), "bad")
    assert queue_runner.work(idle_exit=0) == 2
    running = queue.add_train(tiny_yaml("running"), "running")
    waiting = queue.add_train(tiny_yaml("waiting"), "waiting")
    with queue_runner.runner_lock() as held:  # as a runner holds the queue while its job runs
        assert held
        claimed = queue_runner._claim_next()  # as the runner takes it and starts its child
        assert claimed.id == running.id
        queue._save(claimed)
        logs = [queue.root() / "logs" / f"{job.id}.log" for job in (ok, bad)]
        assert all(log.exists() for log in logs)
        assert queue.find("ok").id == ok.id
        again = queue.add_train(tiny_yaml("ok"), "ok")  # queued again after it ran
        assert queue.find("ok").id == again.id  # the one a user can still drop
        queue.remove("ok")
        assert main(["queue", "clear"]) == 0
        assert "cleared 2 finished jobs" in capsys.readouterr().out
        assert [(j.id, j.state) for j in queue.jobs()] == [
            (running.id, "running"),
            (waiting.id, "queued"),
        ]
        assert not any(log.exists() for log in logs)
        assert not Path(ok.config).exists() and not Path(bad.config).exists()
        assert Path(running.config).exists() and Path(waiting.config).exists()
        assert [r.status for r in list_runs()] == ["finished"]  # the finished job's run stays
        assert main(["queue", "clear"]) == 0
        assert "cleared 0 finished jobs" in capsys.readouterr().out


def test_queue_add_refuses_a_dataset_that_is_not_there(home, capsys):
    tiny = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
    args = ["queue", "add", tiny, "--set", "data.dataset=存在しない", "--no-start"]
    assert main(args) == 3  # a data error, as `train` gives it
    err = capsys.readouterr().err.strip()
    # the value --set gave, not the file's: said as the config's own problems are
    head = f"mlxlora: error: {tiny} (with --set data.dataset): data.dataset: unknown dataset"
    assert err.startswith(f"{head} '存在しない' (")
    assert queue.jobs() == []


def test_queue_add_refuses_a_val_split_that_leaves_nothing_to_train_on(home, capsys):
    """It was queued, and the job failed when the runner took it."""
    args = ["queue", "add", str(TINY), "--set", "data.val_split=0.999", "--no-start"]
    assert main(args) == 3
    data = REPO / "tutorial" / "data" / "quickstart.jsonl"
    assert capsys.readouterr().err == (
        f"mlxlora: error: {TINY} (with --set data.val_split): {data}: data.val_split=0.999 "
        "sets all 120 records aside for validation, leaving none to train on; lower it or set "
        "data.validation\n"
    )
    assert queue.jobs() == []


def test_queue_resume_by_a_name_several_runs_share_takes_the_one_that_can(home, capsys):
    """Level 2 of the tutorial trains its config more than once: `queue resume NAME` refused
    ("3 runs match") where only one of them could resume; `queue stop NAME` already found it."""
    queue.add_train(tiny_yaml("二回目"), "二回目")  # finished: cannot resume
    queue_runner.work(idle_exit=0)
    cmd = [sys.executable, "-m", "mlxlora", "train", "--json"]
    proc = subprocess.Popen(
        [*cmd, str(TINY), "--set", "name=二回目", "--set", "training.max_steps=20"]
        + ["--set", "training.eval_every=2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    asked = False
    for line in proc.stdout:  # stopped after its first checkpoint: can resume
        # only at the first: the stop writes a checkpoint too, when the run is no longer running
        if not asked and json.loads(line)["type"] == "checkpoint":
            running = next(r.path for r in list_runs() if r.status == "running")
            RunPaths(running).stop_request.touch()
            asked = True
    assert proc.wait(timeout=120) == 0
    stopped = next(r.path for r in list_runs() if r.status == "stopped")
    assert main(["queue", "resume", "二回目", "--no-start"]) == 0
    out = capsys.readouterr().out
    # no runner: it says so and how to run the queue (it said "the runner will take it in turn")
    assert "resume " in out and "no runner is working the queue" in out, out
    assert "`mlxlora queue work` runs it here" in out and "will take it in turn" not in out
    (job,) = [j for j in queue.jobs() if j.state == "queued"]
    assert Path(job.run_dir).resolve() == Path(stopped).resolve()
    assert main(["queue", "resume", "二回目", "--no-start"]) == 5  # queued already: refused
    assert "2 runs match" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["rm", "stop"])
def test_a_blank_job_name_says_so(home, capsys, action):
    """`queue stop ""` said `mlxlora: error: : no job or run with that id or name`, naming
    nothing."""
    queue.add_train(tiny_yaml("waiting"), "waiting")
    assert main(["queue", action, ""]) == 5
    assert capsys.readouterr().err == (
        "mlxlora: error: the job name is blank (see `mlxlora queue list`)\n"
    )
    assert [j.state for j in queue.jobs()] == ["queued"]
