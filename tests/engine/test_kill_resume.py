"""Runs killed with -9 at the worst moments: a resume recovers everything and continues as
if nothing had happened (builtin:tiny, a child process killed from inside at a set point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlxlora import engine
from mlxlora.cli import main
from mlxlora.events import RunStarted, Step, read_events
from mlxlora.runs import RunPaths
from mlxlora.runview import RunView
from tests.engine.test_train import make_config

OVERRIDES = ("training.max_steps=9", "training.eval_every=3")

# Trains the run in argv[1] from the config JSON in argv[2] and kills itself (-9) where
# argv[3] says: "best-swap", once the old best/ is aside and before the new one lands;
# "step-5", once step 5 is written; "checkpoint-6", after step 6's evaluation, before its
# checkpoint lands.
TRAIN_AND_DIE = """
import json, os, signal, sys
from pathlib import Path
from mlxlora import config, engine

run, cfg, where = Path(sys.argv[1]), config.from_dict(json.loads(sys.argv[2])), sys.argv[3]
real = os.replace
def replace(src, dst):
    if where == "checkpoint-6" and Path(dst).name == "step-0000006":
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
    if where == "best-swap" and Path(dst).parent.name.startswith(".best.old."):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace

def at_step(event):
    if where == "step-5" and getattr(event, "step", None) == 5 and event.type == "step":
        os.kill(os.getpid(), signal.SIGKILL)
engine.train(cfg, run, listeners=[at_step])
"""


def train_and_die(cfg, run, where: str) -> None:
    args = [sys.executable, "-c", TRAIN_AND_DIE, str(run), json.dumps(cfg.to_dict()), where]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # the test's MLXLORA_HOME
    assert subprocess.run(args, env=env).returncode == -9


def hidden(paths: RunPaths) -> list[str]:
    return [p.name for d in (paths.adapters, paths.checkpoints) for p in d.glob(".*")]


def test_a_kill_inside_the_swap_of_best_loses_no_best_and_leaves_nothing(
    home, quickstart_data, tmp_path
):
    full, part = RunPaths(tmp_path / "full"), RunPaths(tmp_path / "part")
    engine.train(make_config(quickstart_data, *OVERRIDES), full.root)
    train_and_die(make_config(quickstart_data, *OVERRIDES), part.root, "best-swap")
    assert not part.best.exists() and hidden(part)  # the old best only in `.best.old.*`

    summary = engine.train(None, part.root, resume=True)
    assert hidden(part) == []
    assert summary["best_adapter"] == str(part.best)
    assert summary["best_step"] == json.loads(full.summary.read_text())["best_step"]
    weights = "adapters.safetensors"
    assert (part.best / weights).read_bytes() == (full.best / weights).read_bytes()


def session_losses(paths: RunPaths) -> dict[int, float]:
    """Step -> loss as the run's last session recorded them."""
    events = read_events(paths.events)
    last_start = max(i for i, e in enumerate(events) if isinstance(e, RunStarted))
    return {e.step: e.loss for e in events[last_start:] if isinstance(e, Step)}


def shown_evals(run, capsys) -> list[int]:
    """The steps of the evaluations `runs show` lists."""
    capsys.readouterr()
    assert main(["runs", "show", str(run), "--json"]) == 0
    return [e["step"] for e in json.loads(capsys.readouterr().out)["evals"]]


def test_a_run_killed_before_its_first_regular_checkpoint_resumes_from_step_0(
    home, quickstart_data, tmp_path, capsys
):
    full, part = RunPaths(tmp_path / "full"), RunPaths(tmp_path / "part")
    overrides = ("training.max_steps=8",)  # eval_every 0: the first regular one at the end
    engine.train(make_config(quickstart_data, *overrides), full.root)
    train_and_die(make_config(quickstart_data, *overrides), part.root, "step-5")
    assert part.latest_checkpoint() == part.checkpoint(0)
    assert not (part.adapters / "adapters.safetensors").exists()  # none trained to show yet

    summary = engine.train(None, part.root, resume=True)
    (resumed,) = [e for e in read_events(part.events) if isinstance(e, RunStarted)][1:]
    assert resumed.resumed_from_step == 0
    assert summary["steps"] == 8
    assert session_losses(part) == session_losses(full)  # the same numbers, bit for bit
    assert shown_evals(part.root, capsys) == [0, 8]  # the baseline once: the resume redid it


def test_what_a_resume_trained_again_is_shown_once(home, quickstart_data, tmp_path, capsys):
    part = RunPaths(tmp_path / "part")
    cfg = make_config(quickstart_data, "training.max_steps=12", "training.eval_every=3")
    train_and_die(cfg, part.root, "checkpoint-6")  # steps 4-6 and the eval at 6 recorded
    engine.train(None, part.root, resume=True)  # from step 3: records them again

    events = read_events(part.events)
    assert [e.step for e in events if isinstance(e, Step)].count(5) == 2
    assert shown_evals(part.root, capsys) == [0, 3, 6, 9, 12]
    view = RunView(part.root)  # what the studio's Runs and Compare tabs and compare show
    view.add(events)
    assert list(view.train.x) == list(range(1, 13))
    assert [e.step for e in view.evals] == [0, 3, 6, 9, 12]
    kept = {e.step: e.tokens_per_sec for e in events if isinstance(e, Step)}  # the last of each
    assert view.mean_tokens_per_sec == pytest.approx(sum(kept.values()) / 12)
