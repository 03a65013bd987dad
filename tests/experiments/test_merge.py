"""`mlxlora merge`: the weighted sum of LoRA updates, back to a rank by SVD."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlxlora import merge
from mlxlora.backends.mlx_adapters import load_arrays, save_arrays
from mlxlora.cli import main
from mlxlora.runs import read_json


def updates(adapter: Path) -> dict[str, np.ndarray]:
    """Each layer's dW = scale * lora_a @ lora_b, as the adapter's files say."""
    arrays = load_arrays(adapter / "adapters.safetensors")
    scale = read_json(adapter / "adapter_config.json")["lora_parameters"]["scale"]
    modules = {k.removesuffix(".lora_a") for k in arrays if k.endswith(".lora_a")}
    return {m: scale * arrays[f"{m}.lora_a"] @ arrays[f"{m}.lora_b"] for m in modules}


def perturbed(run: Path, out: Path, seed: int = 1) -> Path:
    """A second adapter of the same base and targets: the run's with random factors."""
    shutil.copytree(run / "adapters", out, ignore=shutil.ignore_patterns("best", "checkpoints"))
    rng = np.random.default_rng(seed)
    arrays = load_arrays(out / "adapters.safetensors")
    save_arrays(
        out / "adapters.safetensors",
        {k: rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in arrays.items()},
    )
    return out


def test_an_adapter_merged_with_itself_at_half_weights_is_itself(ws, tmp_path, capsys):
    out = tmp_path / "同じ"
    # weights typed with an IME's comma (、): refused as "expected numbers like 0.5,0.5" before
    weights = ["--weights", "0.5、0.5"]
    assert main(["merge", "基準", "基準", *weights, "--rank", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "over all 28 layers" in printed  # 4 blocks x 7 projections of builtin:tiny
    result = merge.merge(["基準", "基準"], [0.5, 0.5], 8, tmp_path / "again")
    assert result.error < 1e-6 and max(result.layer_errors.values()) < 1e-6
    original, merged = updates(ws[0] / "adapters"), updates(out)
    assert original.keys() == merged.keys() and len(merged) == 28
    for module, delta in original.items():
        np.testing.assert_allclose(merged[module], delta, atol=1e-6 * np.abs(delta).max())
    cfg = read_json(out / "adapter_config.json")
    assert cfg["lora_parameters"]["rank"] == 8 and cfg["base_model"] == "builtin:tiny"


def test_cut_rank_reports_the_dropped_share(ws, tmp_path):
    other = perturbed(ws[0], tmp_path / "other")
    full = merge.merge([str(ws[0]), str(other)], [0.7, 0.3], 16, tmp_path / "full")
    cut = merge.merge([str(ws[0]), str(other)], [0.7, 0.3], 2, tmp_path / "cut")
    assert full.error < 1e-6
    assert 0.05 < cut.error < 1  # random rank-8 factors: rank 2 keeps only part of the sum
    expected = {m: 0.7 * u for m, u in updates(ws[0] / "adapters").items()}
    for m, u in updates(other).items():
        expected[m] += 0.3 * u
    got = updates(tmp_path / "cut")
    # two layers: a dense SVD each (multi-threaded BLAS is slow on a crowded CI machine)
    for m in ("model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"):
        want = expected[m]
        s = np.linalg.svd(want, compute_uv=False)
        best = np.sqrt((s[2:] ** 2).sum()) / np.sqrt((s**2).sum())  # Eckart-Young
        assert cut.layer_errors[m] == pytest.approx(best, rel=1e-4)
        assert np.linalg.norm(got[m] - want) / np.linalg.norm(want) == pytest.approx(best, rel=1e-3)


def test_merged_adapter_logits_equal_the_sum_of_updates(ws, tmp_path):
    import mlx.core as mx
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    other = perturbed(ws[0], tmp_path / "other")
    out = tmp_path / "merged"
    merge.merge([str(ws[0]), str(other)], [0.6, 0.4], 16, out)
    model_dir = read_json(ws[0] / "summary.json")["model_dir"]
    merged_model, _ = load(model_dir, adapter_path=str(out))
    # expected: both adapters side by side as one rank-16 LoRA (their updates summed exactly)
    model, _ = load(model_dir)
    model.freeze()
    params = read_json(ws[0] / "adapters" / "adapter_config.json")["lora_parameters"]
    linear_to_lora_layers(model, 4, {**params, "rank": 16, "scale": 1.0})
    a1, a2 = (load_arrays(p / "adapters.safetensors") for p in (ws[0] / "adapters", other))
    s1, s2 = params["scale"], params["scale"]
    weights = {}
    for key in a1:
        if key.endswith("lora_a"):
            weights[key] = np.concatenate([0.6 * s1 * a1[key], 0.4 * s2 * a2[key]], axis=1)
        else:
            weights[key] = np.concatenate([a1[key], a2[key]], axis=0)
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=False)
    tokens = mx.array([[1, 5, 9, 14, 3, 7, 2, 11]])
    want, got = model(tokens), merged_model(tokens)
    base, _ = load(model_dir)
    moved = float(mx.abs(want - base(tokens)).max())
    assert moved > 1e-3  # the updates change the logits ...
    assert float(mx.abs(got - want).max()) < 1e-4 * max(1.0, float(mx.abs(want).max()))


def test_merged_adapter_generates_without_naming_the_model(ws, tmp_path, capsys):
    out = tmp_path / "ensemble"
    assert main(["merge", "基準", "rank4", "--rank", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["generate", "--adapter", str(out), "--prompt", "hi", "--max-tokens", "3"]) == 0
    assert main(["merge", "基準", "rank4", "--rank", "4", "--out", str(out)]) == 5  # not twice
    assert "exists and is not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"base_model": "builtin:smollm2-135m"}, "its base model (builtin:smollm2-135m) differs"),
        ({"num_layers": 2}, "its adapted layers (num_layers) (2) differs"),
        ({"lora_parameters": {"keys": ["self_attn.q_proj"]}}, "its targets"),
    ],
)
def test_adapters_of_other_bases_or_targets_are_refused_in_one_line(
    ws, tmp_path, capsys, change, message
):
    other = tmp_path / "other"
    shutil.copytree(ws[0] / "adapters", other, ignore=shutil.ignore_patterns("best", "checkpoints"))
    cfg = read_json(other / "adapter_config.json")
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    cfg.pop("model", None) if "base_model" in change else None
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    code = main(["merge", "基準", str(other), "--rank", "8", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 5 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_a_run_still_training_is_refused_in_one_line(ws, tmp_path, capsys):
    from mlxlora.runs import RunPaths, run_lock

    live = shutil.copytree(ws[0], tmp_path / "live")
    with run_lock(RunPaths(live)):  # what a training process holds
        code = main(["merge", str(live), "rank4", "--rank", "8", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert (
        code == 5
        and err == f"mlxlora: error: {live}: the run is still training; merge it when it ends\n"
    )
    assert not (tmp_path / "x").exists()


def test_a_failed_run_is_refused_in_one_line(ws, tmp_path, capsys):
    """fuse and export refuse a failed run; merge took its adapters/ as if it had trained."""
    from mlxlora.events import EventWriter, RunFailed
    from mlxlora.runs import RunPaths

    failed = shutil.copytree(ws[0], tmp_path / "failed")
    with EventWriter(RunPaths(failed).events) as events:
        events.emit(RunFailed(reason="loss became NaN", step=3))
    code = main(["merge", str(failed), "rank4", "--rank", "8", "--out", str(tmp_path / "x")])
    said = f"mlxlora: error: {failed}: the run failed; there is no trained adapter to merge\n"
    assert code == 5 and capsys.readouterr().err == said
    assert not (tmp_path / "x").exists()


def test_an_adapter_cut_short_is_refused_in_one_line(ws, tmp_path, capsys):
    skip = shutil.ignore_patterns("best", "checkpoints")
    cut = shutil.copytree(ws[1] / "adapters", tmp_path / "cut", ignore=skip)
    weights = cut / "adapters.safetensors"
    os.truncate(weights, weights.stat().st_size - 1)
    code = main(["merge", "基準", str(cut), "--rank", "8", "--out", str(tmp_path / "x")])
    said = f"mlxlora: error: {weights}: cut short ({weights.stat().st_size} bytes of "
    assert code == 5 and capsys.readouterr().err.startswith(said)
    assert not (tmp_path / "x").exists()


def test_an_adapter_config_cut_short_is_refused_in_one_line(ws, tmp_path, capsys):
    """It merged as if the config were empty: the merge lost the scale and num_layers, and
    generate with it failed on an AttributeError traceback."""
    skip = shutil.ignore_patterns("best", "checkpoints")
    cut = shutil.copytree(ws[1] / "adapters", tmp_path / "cut", ignore=skip)
    config = cut / "adapter_config.json"
    config.write_text('{"model": ')
    code = main(["merge", str(cut), str(cut), "--rank", "8", "--out", str(tmp_path / "x")])
    said = f"mlxlora: error: {config}: not a JSON object; the adapter cannot be read\n"
    assert code == 5 and capsys.readouterr().err == said
    assert not (tmp_path / "x").exists()


def test_weights_must_match_the_adapters(ws, tmp_path, capsys):
    code = main(
        ["merge", "基準", "rank4", "--weights", "1", "--rank", "4", "--out", str(tmp_path / "x")]
    )
    assert code == 2 and "give 2 finite numbers" in capsys.readouterr().err


def test_an_out_in_a_run_or_the_workspace_or_a_file_is_refused_in_one_line(ws, tmp_path, capsys):
    import os

    home = Path(os.environ["MLXLORA_HOME"])
    run = shutil.copytree(ws[0], tmp_path / "a-run")  # a run outside the workspace
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "keep me"}\n')
    cases = {
        run: "is a run directory",
        run / "merged": f"is inside the run directory {run}",
        home / "runs" / "merged": "is in the workspace's runs folder",
        home / "datasets" / "merged": "is in the workspace's datasets folder",
        data: "is a file, not a directory",
    }
    for out, words in cases.items():
        code = main(["merge", "基準", "--rank", "4", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 5 and words in err and len(err.strip().splitlines()) == 1, (out, err)
    assert not (run / "merged").exists() and not (home / "runs" / "merged").exists()
    assert not (home / "datasets" / "merged").exists()
    assert data.read_text() == '{"text": "keep me"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-run", "train.jsonl"]


def test_the_merged_adapter_has_the_permissions_the_umask_gives(ws, tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        result = merge.merge(["基準"], [1.0], 4, tmp_path / "shared")
    finally:
        os.umask(old)
    assert stat.S_IMODE(result.out.stat().st_mode) == 0o750  # not tempfile's 0700
    for path in result.out.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


def test_the_try_it_line_is_a_command_that_pastes():
    """A merged adapter named with a space: the printed command quotes its path."""
    import shlex

    from mlxlora.commands.merge import summary_lines

    result = {
        "sources": ["a", "b"],
        "rank": 8,
        "out": "/tmp/ws/merged/基本実験 v2-merged",
        "error": 1e-3,
        "layer_errors": {"layers.0.q_proj": 1e-3},
    }
    command = summary_lines(result)[-1].removeprefix("try it: ")
    assert shlex.split(command)[3] == "/tmp/ws/merged/基本実験 v2-merged"


def test_merged_torch_runs_load_in_peft_as_in_mlx_lm(ws, tmp_path):
    """A torch run's adapter config carries PEFT's keys: the merge kept the first run's rank
    and alpha there (PEFT's scale 4 on weights of scale 1) and wrote no PEFT weights."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    import mlx.core as mx
    from mlx_lm.utils import load
    from transformers import AutoModelForCausalLM

    from mlxlora import config, engine
    from tests.experiments.conftest import TINY

    cfg = config.load(TINY, ["backend=torch", "lora.rank=4", "training.max_steps=2"])
    run = Path(engine.train(cfg, tmp_path / "torch-run")["adapter"]).parent
    out = tmp_path / "merged"
    merge.merge([str(run), str(perturbed(run, tmp_path / "other"))], [0.5, 0.5], 4, out)

    model_dir = read_json(run / "summary.json")["model_dir"]
    tokens = [1, 5, 9, 14, 3, 7, 2, 11]
    mlx_model, _ = load(model_dir, adapter_path=str(out))
    want = np.array(mlx_model(mx.array([tokens])))[0]
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tuned = peft.PeftModel.from_pretrained(hf, out).eval()
    with torch.no_grad():
        got = tuned(torch.tensor([tokens])).logits[0].numpy()
        with tuned.disable_adapter():
            plain = tuned(torch.tensor([tokens])).logits[0].numpy()
    assert np.abs(want - plain).max() > 1e-2  # the merged update changes the logits
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
