"""`mlxlora runs list` and `runs rm` as a user meets them: whole names at 80 columns, the best
validation loss of a run still training (or killed), and deleting a run but never a live one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from rich.cells import cell_len

from mlxlora import config, engine, queue, runlist, runs
from mlxlora.cli import main
from mlxlora.events import Eval, read_events

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
LONG = "テスト実験モデル_長い名前_v1"


def train(name: str, steps: int = 2) -> Path:
    cfg = config.load(TINY, [f"name={name}", f"training.max_steps={steps}"])
    run = runs.new_run_dir(name)
    engine.train(cfg, run)
    return run


def test_runs_list_at_80_columns_keeps_each_name_whole(home, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    trained = [train(LONG), train("alpha")]
    assert main(["runs", "list"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    for run in trained:  # on one line, as `runs show` and `runs rm` take it
        assert any(line.split()[:1] == [run.name] for line in out.splitlines())
    assert max(len(line) for line in out.splitlines()) <= 80
    # beside a long name the other columns no longer fit their words (`finishe d`,
    # `slow_c onverg ence`): each run's facts go under its name, whole
    assert out.count("status finished") == 2 and out.count("model builtin:tiny") == 2


def test_runs_list_at_80_columns_keeps_each_start_s_date_and_time_on_one_line(
    home, capsys, monkeypatch
):
    """Two runs of short Japanese names: `2025-06-15` over `15:06` (a review finding, as
    `data list`'s was)."""
    monkeypatch.setenv("COLUMNS", "80")
    trained = [train("医療v1"), train("医療v2")]
    assert main(["runs", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(any(line.startswith(run.name) for line in lines) for run in trained), lines
    stamped = [line for line in lines if re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", line)]
    assert len(stamped) == 2, lines  # whole, in the row or in the facts under its name
    assert max(cell_len(line) for line in lines) <= 80


def test_runs_list_and_show_say_early_stopped_as_the_runs_tab_does(home, capsys):
    """The tutorial's early-stopping step: the Runs tab said `early-stopped`, `runs list` and
    `runs show` said `finished` (a QA finding)."""
    sets = ["name=早期停止_発動", "training.eval_every=2", "training.max_steps=12"]
    sets += ["training.early_stopping.patience=2", "training.early_stopping.min_delta=100.0"]
    run = runs.new_run_dir("早期停止_発動")
    assert engine.train(config.load(TINY, sets), run)["outcome"] == "early_stop"
    assert main(["runs", "list"]) == 0
    listed = capsys.readouterr().out
    assert main(["runs", "show", run.name]) == 0
    shown = capsys.readouterr().out.splitlines()[0]
    assert shown.startswith(f"{run.name}  early-stopped  step 6"), shown
    assert "status early-stopped" in listed and "best val —" not in listed, listed


def test_runs_list_shows_the_best_val_so_far_of_a_running_then_killed_run(home, capsys):
    child = subprocess.Popen(
        [sys.executable, "-m", "mlxlora", "train", str(TINY), "--json"]
        + ["--set", "name=live", "--set", "training.max_steps=400"]
        + ["--set", "training.eval_every=2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        evals = 0
        for line in child.stdout:
            evals += json.loads(line)["type"] == "eval"
            if evals == 3:
                os.kill(child.pid, signal.SIGSTOP)  # mid-run: it holds the run, writes nothing
                break
        (run,) = runlist.list_runs()
        seen = [
            e.val_loss for e in read_events(runs.RunPaths(run.path).events) if isinstance(e, Eval)
        ]
        assert len(seen) >= 3 and not runs.RunPaths(run.path).summary.exists()
        assert main(["runs", "list", "--json"]) == 0
        (listed,) = json.loads(capsys.readouterr().out)
        assert (listed["status"], listed["best_val_loss"]) == ("running", min(seen))
    finally:
        child.kill()
        child.wait(timeout=60)
    assert main(["runs", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["status"], listed["best_val_loss"]) == ("interrupted", min(seen))
    assert main(["runs", "list"]) == 0
    assert f"{min(seen):.4f}" in capsys.readouterr().out


def test_runs_rm_deletes_a_run_but_never_a_live_or_queued_one(home, capsys):
    kept, gone = train("kept"), train("gone")
    assert main(["runs", "rm", "gon"]) == 5  # a prefix finds a run to show, not to delete
    assert capsys.readouterr().err.strip() == (
        f"mlxlora: error: gon: give the whole name to delete {gone.name}"
    )
    assert main(["runs", "rm", "gone"]) == 0
    assert f"deleted run {gone.name}" in capsys.readouterr().out
    assert not gone.exists() and [r.path for r in runlist.list_runs()] == [kept]
    assert sorted(p.name for p in runs.runs_root().iterdir()) == [kept.name]  # nothing left

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs.RunPaths(kept).lock.write_text(str(sleeper.pid))  # a live process trains it
        assert main(["runs", "rm", kept.name]) == 5
        err = capsys.readouterr().err
        assert f"in use by process {sleeper.pid}; stop it first" in err
    finally:
        sleeper.kill()
        sleeper.wait()
    assert runs.RunPaths(kept).lock.read_text() == str(sleeper.pid)  # left as it was

    job = queue.add_resume(kept)
    assert main(["runs", "rm", str(kept)]) == 5
    short = queue.short_id(job.id)
    assert f"job {short} is queued for this run; `mlxlora queue rm {short}` first" in (
        capsys.readouterr().err
    )
    queue.remove(short)
    assert main(["runs", "rm", str(kept)]) == 0 and runlist.list_runs() == []


def test_runs_rm_never_deletes_a_project_folder_that_has_a_config(home, tmp_path, monkeypatch):
    """A user's folder with a config.yaml (and a workspace run of the same name elsewhere
    or not) is not a run: a bare name looks only in the workspace, a path must be a run."""
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text("name: mine\n")
    (project / "src" / "notes.txt").write_text("precious")
    monkeypatch.chdir(tmp_path)
    assert main(["runs", "rm", "proj"]) == 5
    assert main(["runs", "rm", str(project)]) == 5
    assert (project / "src" / "notes.txt").read_text() == "precious"
