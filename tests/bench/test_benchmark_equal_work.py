"""The speed benchmark refuses to compare sides that trained different weights (issue 7: the
stock side trained the 4-bit SmolLM2 while mlxlora trained a float copy, a '9.6x' that was not
like for like)."""

import importlib.util
from pathlib import Path

import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_vs_mlx_lm.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_vs_mlx_lm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_llama():
    from mlx_lm.models import llama

    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=256,
    )
    mx.random.seed(0)
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model


def result(work):
    return {"work": work, "tokens": 1000, "steps": 3}


def test_a_quantized_side_against_a_float_side_is_refused(bench):
    float_work = bench.trained_weights(tiny_llama())
    quantized = tiny_llama()
    nn.quantize(quantized, group_size=32, bits=4)
    quantized_work = bench.trained_weights(quantized)
    assert quantized_work["quantized_layers"] > 0 and float_work["quantized_layers"] == 0
    with pytest.raises(SystemExit, match="unequal work"):
        bench.check_equal_work(
            "smollm2", {"stock": result(quantized_work), "mlxlora": result(float_work)}
        )


def test_the_same_weights_compare(bench):
    a, b = bench.trained_weights(tiny_llama()), bench.trained_weights(tiny_llama())
    assert a == b
    bench.check_equal_work("smollm2", {"stock": result(a), "mlxlora": result(b)})
    with pytest.raises(SystemExit, match="steps"):
        bench.check_equal_work(
            "smollm2", {"stock": result(a), "mlxlora": {**result(b), "steps": 4}}
        )


def test_the_compiled_side_trains_compiled(bench, home, tmp_path):
    """mlxlora-compiled ran uncompiled until 2026-11-26 (its config left training.compile
    false), so its H200 '1.43x' compared two uncompiled runs, the second with MLX's kernels
    already built. The side now reports what the backend did and refuses a mismatch."""
    import json

    spec = bench.SHAPES["tiny"]
    model_dir, data = bench.prepare("tiny", tmp_path)
    seqs = json.loads(data.read_text())[: 2 * spec["batch_size"]]
    assert bench.run_mlxlora(spec, model_dir, seqs, compiled=True, tiled=False)["compiled"] is True
    assert (
        bench.run_mlxlora(spec, model_dir, seqs, compiled=False, tiled=False)["compiled"] is False
    )


def test_the_depth_first_side_evaluates_depth_first(bench, home, tmp_path, monkeypatch):
    """mlxlora-depthfirst sets MLX_BFS_MAX_WIDTH=1 in its process, as the backend does on a
    CPU: with a breadth-first width set for the benchmark (as a GPU's default is), the plain
    side evaluates breadth-first and the depth-first side does not, and each one's estimate
    counts the order it ran in."""
    from mlxlora.backends.mlx_device import evaluation_order

    monkeypatch.setenv("MLX_BFS_MAX_WIDTH", "20")
    assert evaluation_order("cpu") == "breadth-first" and evaluation_order("gpu (Metal)") == "gpu"
    model_dir, data = bench.prepare("tiny", tmp_path)
    side = bench.run_side("mlxlora-depthfirst", "tiny", model_dir, data, steps=2, timeout=300)
    assert side["evaluation"] == "depth-first"
