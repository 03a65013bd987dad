"""`mlxlora adapter convert`: mlx-lm -> both layouts -> (PEFT only) -> mlx-lm gives back the same
tensors and config; bad input is one line."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import load_file, save_file

from mlxlora.cli import main


def mlx_adapter(directory):
    rng = np.random.default_rng(0)
    weights = {}
    shapes = {"self_attn.q_proj": (16, 16), "mlp.up_proj": (16, 40)}
    for layer in (2, 3):
        for module, (n_in, n_out) in shapes.items():
            weights[f"model.layers.{layer}.{module}.lora_a"] = rng.normal(size=(n_in, 4))
            weights[f"model.layers.{layer}.{module}.lora_b"] = rng.normal(size=(4, n_out))
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    directory.mkdir()
    save_file(weights, str(directory / "adapters.safetensors"))
    config = {
        "model": "/models/tiny",
        "fine_tune_type": "lora",
        "num_layers": 2,
        "lora_parameters": {"rank": 4, "scale": 2.5, "dropout": 0.0, "keys": []},
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return weights


def test_convert_both_ways(tmp_path, capsys):
    weights = mlx_adapter(tmp_path / "mlx")
    assert main(["adapter", "convert", str(tmp_path / "mlx"), str(tmp_path / "both")]) == 0
    assert "mlx adapter written with its PEFT copy" in capsys.readouterr().out
    peft = load_file(str(tmp_path / "both" / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.3.mlp.up_proj.lora_B.weight"
    np.testing.assert_array_equal(peft[key], weights["model.layers.3.mlp.up_proj.lora_b"].T)
    config = json.loads((tmp_path / "both" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 10.0 and config["peft_type"] == "LORA"
    assert "model.layers.2.self_attn.q_proj" in config["target_modules"]

    (tmp_path / "peft").mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (tmp_path / "peft" / name).write_bytes((tmp_path / "both" / name).read_bytes())
    args = ["adapter", "convert", str(tmp_path / "peft"), str(tmp_path / "back"), "--layers", "4"]
    assert main(args) == 0
    back = load_file(str(tmp_path / "back" / "adapters.safetensors"))
    assert back.keys() == weights.keys()
    for name, value in weights.items():
        np.testing.assert_array_equal(back[name], value)
    lora = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert lora["num_layers"] == 2 and lora["lora_parameters"]["scale"] == 2.5
    assert lora["lora_parameters"]["keys"] == ["mlp.up_proj", "self_attn.q_proj"]


def test_bad_source_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["adapter", "convert", str(tmp_path / "empty"), str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert err == f"mlxlora: error: {tmp_path / 'empty'}: no adapter_config.json"
    assert not (tmp_path / "out").exists()


def test_a_source_cut_short_is_one_line(tmp_path, capsys):
    """An adapter copied in part: safetensors' SafetensorError or json's JSONDecodeError
    traceback before."""
    mlx_adapter(tmp_path / "mlx")
    weights = tmp_path / "mlx" / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    assert main(["adapter", "convert", str(tmp_path / "mlx"), str(tmp_path / "out")]) == 4
    assert capsys.readouterr().err.startswith(f"mlxlora: error: {weights}: cut short (500 bytes")
    config = tmp_path / "mlx" / "adapter_config.json"
    config.write_text('{"model": ')
    assert main(["adapter", "convert", str(tmp_path / "mlx"), str(tmp_path / "out")]) == 4
    assert capsys.readouterr().err.startswith(f"mlxlora: error: {config}: not valid JSON (")
    assert not (tmp_path / "out").exists()


def test_a_tensor_that_is_not_lora_s_is_one_line(tmp_path, capsys):
    """A DoRA adapter's magnitude vector (PEFT's use_dora) has no mlx-lm form."""
    (tmp_path / "dora").mkdir()
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    weights = {
        f"{prefix}.lora_A.weight": np.zeros((4, 16), np.float32),
        f"{prefix}.lora_B.weight": np.zeros((16, 4), np.float32),
        f"{prefix}.lora_magnitude_vector": np.ones(16, np.float32),
    }
    save_file(weights, str(tmp_path / "dora" / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True}
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps(config))
    assert main(["adapter", "convert", str(tmp_path / "dora"), str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert err == (
        f"mlxlora: error: {prefix}.lora_magnitude_vector: not a PEFT LoRA tensor"
        " (...lora_A.weight|lora_B.weight)"
    )
    assert not (tmp_path / "out").exists()


def test_a_run_converts_by_its_name_or_directory(home, capsys):
    """SOURCE as a run, as every other command takes one: a run's name or directory said "no
    adapter_config.json" (it is in the run's adapters/)."""
    from mlxlora import config, engine
    from mlxlora.runs import RunPaths, runs_root
    from tests.conftest import REPO

    cfg = config.load(REPO / "configs" / "tiny.yaml", ["name=医療モデル", "training.max_steps=2"])
    engine.train(cfg)
    (run,) = runs_root().iterdir()
    trained = load_file(str(RunPaths(run).adapters / "adapters.safetensors"))
    key = "model.layers.0.self_attn.q_proj"
    for source, out in (("医療モデル", home / "by-name"), (str(run), home / "by-directory")):
        assert main(["adapter", "convert", source, str(out)]) == 0
        assert "mlx adapter written with its PEFT copy" in capsys.readouterr().out
        peft = load_file(str(out / "adapter_model.safetensors"))
        assert np.array_equal(
            peft[f"base_model.model.{key}.lora_A.weight"], trained[f"{key}.lora_a"].T
        )
    assert main(["adapter", "convert", "存在しない", str(home / "none")]) != 0
    err = capsys.readouterr().err.strip()
    assert err == "mlxlora: error: 存在しない: no such run (see `mlxlora runs list`)"
