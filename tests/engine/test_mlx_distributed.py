"""A data-parallel MLX run under `mlx.launch` (ring backend, 2 local CPU processes) trains like
one process with the whole batch: the same losses and gradient norms, one run directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from mlxlora import engine
from mlxlora.events import RunStarted, Step, read_events
from mlxlora.runs import RunPaths
from tests.engine.test_train import make_config


def step_events(run_dir) -> list[Step]:
    return [e for e in read_events(RunPaths(run_dir).events) if isinstance(e, Step)]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mlx.launch") is None, reason="mlx.launch not installed")
def test_two_ring_processes_train_like_one_with_the_whole_batch(home, quickstart_data, tmp_path):
    cfg = make_config(
        quickstart_data,
        "backend=mlx",
        "training.max_steps=4",
        "training.batch_size=4",  # 2 rows a process under mlx.launch
        "training.grad_accumulation=2",
    )
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    two = tmp_path / "two"
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    command = ["mlx.launch", "--backend", "ring", "-n", "2", "--starting-port", "34517"]
    command += [sys.executable, "-m", "mlxlora", "train", str(tmp_path / "job.yaml")]
    command += ["--run-dir", str(two)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    engine.train(cfg, tmp_path / "one")

    got, expected = step_events(two), step_events(tmp_path / "one")
    assert [e.step for e in got] == [1, 2, 3, 4]
    np.testing.assert_allclose([e.loss for e in got], [e.loss for e in expected], rtol=1e-5)
    np.testing.assert_allclose(
        [e.grad_norm for e in got], [e.grad_norm for e in expected], rtol=1e-4
    )
    started = next(e for e in read_events(RunPaths(two).events) if isinstance(e, RunStarted))
    assert started.device == "cpu, 2 processes (mx.distributed)"
    assert not list((tmp_path / "tmp").glob("mlxlora-rank-*"))  # rank 1's scratch is gone
