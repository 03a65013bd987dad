"""Issue 11 on the real engine and builtin:tiny: the estimate against MLX's measured peak,
fit under a small budget, and fitted micro-batches that take the same steps."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from mlxlora import config, engine
from mlxlora.events import MemoryFit, Step, read_events
from mlxlora.runs import RunPaths
from tests.engine.test_train import make_config

MATRIX = __import__("pathlib").Path(__file__).resolve().parents[2] / "benchmarks/memory_matrix.py"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]


def measure(batch, length, ckpt):
    case = {
        "model": "tiny",
        "batch": batch,
        "max_length": length,
        "ckpt": ckpt,
        "rank": 8,
        "targets": TARGETS,
        "steps": 1,
    }
    sys.path.insert(0, str(MATRIX.parent))
    import memory_matrix

    case["model_dir"] = str(memory_matrix.model_dir("tiny", MATRIX.parent))
    out = subprocess.run(
        [sys.executable, str(MATRIX), "--case", json.dumps(case)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.splitlines()[-1])
    return result["estimate"] / result["measured"]


@pytest.mark.slow
@pytest.mark.parametrize("batch,length", [(2, 256), (1, 1024)])
def test_estimate_within_15_percent_never_5_under(home, batch, length):
    assert 0.95 <= measure(batch, length, ckpt=False) <= 1.15


@pytest.mark.slow
def test_checkpointed_estimate_never_under(home):
    assert measure(4, 512, ckpt=True) >= 0.95  # over-estimates today (1.47 measured)


def test_micro_batches_take_the_same_steps(home, quickstart_data, tmp_path):
    """batch 4 == batch 2 x accumulation 2: same records per step, token-weighted gradient."""
    runs = {}
    for name, micro, accum in (("whole", 4, 1), ("split", 2, 2)):
        cfg = make_config(
            quickstart_data,
            "training.max_steps=4",
            "lora.dropout=0.0",
            f"training.batch_size={micro}",
            f"training.grad_accumulation={accum}",
        )
        engine.train(cfg, tmp_path / name)
        events = read_events(RunPaths(tmp_path / name).events)
        runs[name] = (
            [e.grad_norm for e in events if isinstance(e, Step)],
            load_file(str(tmp_path / name / "adapters" / "adapters.safetensors")),
        )
    np.testing.assert_allclose(runs["whole"][0], runs["split"][0], rtol=1e-4)
    for key, value in runs["whole"][1].items():
        np.testing.assert_allclose(value, runs["split"][1][key], rtol=1e-3, atol=1e-6)


def test_fit_chooses_a_configuration_under_a_small_budget(home, quickstart_data, tmp_path):
    budget = 60_000_000
    cfg = make_config(
        quickstart_data,
        "training.max_steps=3",
        "data.max_length=256",
        "training.fit=auto",
        f"training.memory_budget={budget}B",
        "training.batch_size=8",
    )
    summary = engine.train(cfg, tmp_path / "run")
    fit = next(
        e for e in read_events(RunPaths(tmp_path / "run").events) if isinstance(e, MemoryFit)
    )
    assert fit.fits and fit.estimated_bytes <= budget and fit.changes
    micro = fit.changes.get("training.batch_size", 8)
    assert micro * fit.changes.get("training.grad_accumulation", 1) == 8
    assert summary["peak_memory_gb"] * 1e9 <= budget
    saved = config.load(RunPaths(tmp_path / "run").config)
    assert saved.training.batch_size == micro  # resume trains as fitted
