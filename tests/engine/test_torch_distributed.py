"""A data-parallel run under torchrun on 2 CPU processes (gloo) trains like one process with
the whole batch: the same losses and gradient norms, one run directory written."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

pytest.importorskip("peft")

from mlxlora import engine  # noqa: E402
from mlxlora.events import Step, read_events  # noqa: E402
from mlxlora.runs import RunPaths  # noqa: E402
from tests.engine.test_train import make_config  # noqa: E402


def step_events(run_dir) -> list[Step]:
    return [e for e in read_events(RunPaths(run_dir).events) if isinstance(e, Step)]


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_with_the_whole_batch(home, quickstart_data, tmp_path):
    cfg = make_config(
        quickstart_data,
        "backend=torch",
        "training.max_steps=4",
        "training.batch_size=4",  # 2 rows a process under torchrun
        "training.grad_accumulation=2",
        "training.log_every=1",
    )
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    two = tmp_path / "two"
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command += ["-m", "mlxlora", "train", str(tmp_path / "job.yaml"), "--run-dir", str(two)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count(" summary ") == 1  # the first process's, naming the run
    assert "mlxlora-rank-" not in out.stdout
    engine.train(cfg, tmp_path / "one")

    got, expected = step_events(two), step_events(tmp_path / "one")
    assert [e.step for e in got] == [1, 2, 3, 4]
    np.testing.assert_allclose([e.loss for e in got], [e.loss for e in expected], rtol=1e-5)
    np.testing.assert_allclose(
        [e.grad_norm for e in got], [e.grad_norm for e in expected], rtol=1e-4
    )
    started = next(e for e in read_events(RunPaths(two).events) if e.type == "run_started")
    assert started.device == "cpu, 2 processes (gloo)"
    assert RunPaths(two).summary.exists()
    assert not list((tmp_path / "tmp").glob("mlxlora-rank-*"))  # rank 1's scratch is gone
