"""Runs killed with -9 at the worst moments: a resume recovers everything and continues as
if nothing had happened (builtin:tiny, a child process killed from inside at a set point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mlxlora import engine
from mlxlora.runs import RunPaths
from tests.engine.test_train import make_config

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
OVERRIDES = ("training.max_steps=9", "training.eval_every=3")

# Trains the run in argv[1] from the config JSON in argv[2] and kills itself (-9) where
# argv[3] says: "best-swap", once the old best/ is aside and before the new one lands.
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
engine.train(cfg, run)
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
