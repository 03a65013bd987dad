"""Runs killed with -9 at the worst moments: a resume recovers everything and continues as
if nothing had happened (builtin:tiny, a child process killed from inside at a set point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mlxlora import engine
from mlxlora.events import RunStarted, Step, read_events
from mlxlora.runs import RunPaths
from tests.engine.test_train import make_config

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
OVERRIDES = ("training.max_steps=9", "training.eval_every=3")

# Trains the run in argv[1] from the config JSON in argv[2] and kills itself (-9) where
# argv[3] says: "best-swap", once the old best/ is aside and before the new one lands;
# "step-5", once step 5 is written.
TRAIN_AND_DIE = """
import json, os, signal, sys
from pathlib import Path
from mlxlora import config, engine

run, cfg, where = Path(sys.argv[1]), config.from_dict(json.loads(sys.argv[2])), sys.argv[3]
real = os.replace
def replace(src, dst):
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
    assert subprocess.run(args, env=ENV).returncode == -9


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


def test_a_run_killed_before_its_first_regular_checkpoint_resumes_from_step_0(
    home, quickstart_data, tmp_path
):
    full, part = RunPaths(tmp_path / "full"), RunPaths(tmp_path / "part")
    overrides = ("training.max_steps=8",)  # eval_every 0: the first regular one at the end
    engine.train(make_config(quickstart_data, *overrides), full.root)
    train_and_die(make_config(quickstart_data, *overrides), part.root, "step-5")

    summary = engine.train(None, part.root, resume=True)
    (resumed,) = [e for e in read_events(part.events) if isinstance(e, RunStarted)][1:]
    assert resumed.resumed_from_step == 0
    assert summary["steps"] == 8
    assert session_losses(part) == session_losses(full)  # the same numbers, bit for bit
