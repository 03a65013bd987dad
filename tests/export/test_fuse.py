"""`mlxlora fuse`: the merged model is the base plus the adapter, loads in mlx-lm and
transformers (same logits), and bad runs are refused on one line with nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from export_helpers import hf_tokenizer, mlx_logits, train_run

from mlxlora.errors import ExportError, RunError
from mlxlora.export.fuse import fuse_run
from mlxlora.runs import RunPaths


def test_fused_model_equals_base_plus_adapter(in_tiny_home, tmp_path):
    from mlxlora.models.resolve import resolve_model

    run = in_tiny_home
    out = fuse_run(run, tmp_path / "fused")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    base = resolve_model("builtin:tiny")
    tok = hf_tokenizer(out)
    ids = tok.encode("What is the capital of France? 日本の首都は東京です。")
    assert ids == hf_tokenizer(base).encode("What is the capital of France? 日本の首都は東京です。")
    chat = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    fused = mlx_logits(out, ids)
    tuned = mlx_logits(base, ids, adapter=RunPaths(run).adapters)
    plain = mlx_logits(base, ids)
    assert np.abs(fused - tuned).max() < 1e-4
    assert np.abs(fused - plain).max() > 1e-2  # the adapter is in there
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


@pytest.mark.slow
def test_4bit_base_stays_4bit_unless_dequantized(
    in_tiny_home, tmp_path, quickstart_data, monkeypatch
):
    """A 4-bit base's merge is quantized again only where that keeps most of the adapter's
    update (mlx_fuse.KEEP_QUANTIZED_LOSS), else written as float weights; the flags force
    either."""
    from mlx_lm.convert import convert

    import mlxlora.backends.mlx_fuse as mlx_fuse
    from mlxlora.models.resolve import resolve_model

    q4 = tmp_path / "tiny-4bit"
    convert(str(resolve_model("builtin:tiny")), mlx_path=str(q4), quantize=True, q_group_size=32)
    run = train_run(os.environ["MLXLORA_HOME"], tmp_path / "run", quickstart_data, str(q4), 2)
    warnings = []
    kept = fuse_run(run, tmp_path / "kept", dequantize=False, warn=warnings.append)
    floats = fuse_run(run, tmp_path / "floats", dequantize=True, warn=warnings.append)
    loss = _requantization_loss(q4, kept, floats, run)
    assert len(warnings) == 1 and f"by {loss:.0%} of" in warnings[0]  # the quantized fuse's
    assert json.loads((kept / "config.json").read_text())["quantization"]["bits"] == 4
    assert "quantization" not in json.loads((floats / "config.json").read_text())
    # by default: kept at 4 bits where that keeps most of the update (this one: ~8% lost)
    assert loss < mlx_fuse.KEEP_QUANTIZED_LOSS
    little = fuse_run(run, tmp_path / "little", warn=warnings.append)
    assert f"by {loss:.0%} of" in warnings[-1] and "--dequantize" in warnings[-1]
    assert json.loads((little / "config.json").read_text())["quantization"]["bits"] == 4
    monkeypatch.setattr(mlx_fuse, "KEEP_QUANTIZED_LOSS", loss / 2)  # and where it loses more
    auto = fuse_run(run, tmp_path / "auto", warn=warnings.append)
    assert "quantization" not in json.loads((auto / "config.json").read_text())
    assert "written as float weights" in warnings[-1] and f"by {loss:.0%} of" in warnings[-1]
    ids = hf_tokenizer(q4).encode("The capital of France is Paris.")
    tuned = mlx_logits(q4, ids, adapter=RunPaths(run).adapters)
    assert np.abs(mlx_logits(floats, ids) - tuned).max() < 1e-4  # exactly base + adapter
    # kept at 4 bits: each merged layer is the float merge quantized again, bits and groups kept
    import mlx.core as mx

    packed = mx.load(str(kept / "model.safetensors"))
    merged = mx.load(str(floats / "model.safetensors"))
    layer = "model.layers.1.self_attn.k_proj"
    q, scales, biases = mx.quantize(merged[f"{layer}.weight"], group_size=32, bits=4)
    assert mx.array_equal(packed[f"{layer}.weight"], q)
    assert mx.allclose(packed[f"{layer}.scales"], scales) and mx.allclose(
        packed[f"{layer}.biases"], biases
    )
    assert (kept / "model.safetensors").stat().st_size < (
        floats / "model.safetensors"
    ).stat().st_size / 3


def _requantization_loss(base, kept, floats, run) -> float:
    """|kept - floats| / |floats - base| over the adapted layers, read from the files."""
    import mlx.core as mx

    def dense(folder):
        weights = {}
        for file in folder.glob("*.safetensors"):
            weights.update(mx.load(str(file)))
        return weights

    def weight(tensors, layer):
        if f"{layer}.scales" not in tensors:
            return tensors[f"{layer}.weight"].astype(mx.float32)
        return mx.dequantize(
            tensors[f"{layer}.weight"], tensors[f"{layer}.scales"], tensors[f"{layer}.biases"],
            group_size=32, bits=4,
        )  # fmt: skip

    lora = mx.load(str(RunPaths(run).adapters / "adapters.safetensors"))
    adapted = {name.rsplit(".", 1)[0] for name in lora}  # ...q_proj.lora_a -> ...q_proj
    b, k, f = dense(base), dense(kept), dense(floats)
    error = sum(mx.sum((weight(k, m) - weight(f, m)) ** 2).item() for m in adapted)
    update = sum(mx.sum((weight(f, m) - weight(b, m)) ** 2).item() for m in adapted)
    return (error / update) ** 0.5


def _runs_like(run, tmp_path, name):
    copy = tmp_path / name
    shutil.copytree(run, copy)
    return copy


def test_runs_that_cannot_be_fused_are_refused_on_one_line(in_tiny_home, tmp_path):
    run = in_tiny_home
    no_adapter = _runs_like(run, tmp_path, "no-adapter")
    shutil.rmtree(no_adapter / "adapters")
    failed = _runs_like(run, tmp_path, "failed")
    with open(failed / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"type": "run_failed", "time": 1.0, "reason": "loss is nan"}) + "\n")
    running = _runs_like(run, tmp_path, "running")
    (running / ".lock").write_text(str(os.getpid()))
    cut_header, cut_weights = (_runs_like(run, tmp_path, n) for n in ("cut-header", "cut-weights"))
    weights = [c / "adapters" / "adapters.safetensors" for c in (cut_header, cut_weights)]
    os.truncate(weights[0], 100)  # copies cut short: in the header, in the tensors
    os.truncate(weights[1], weights[1].stat().st_size - 100)
    cases = {
        no_adapter: "no adapter saved",
        failed: "the run failed",
        running: "still training",
        tmp_path: "not a run directory",
        cut_header: "adapters.safetensors: cut short (100 bytes; its header alone takes",
        cut_weights: "adapters.safetensors: cut short (",
    }
    for path, words in cases.items():
        with pytest.raises(ExportError) as err:
            fuse_run(path, tmp_path / "out")
        assert words in str(err.value) and "\n" not in str(err.value)
        assert not (tmp_path / "out").exists()


def test_interrupted_fuse_leaves_nothing(in_tiny_home, tmp_path, monkeypatch):
    import mlxlora.backends.mlx_fuse as mlx_fuse

    def disk_full(model_dir, adapter, out, dequantize=None):
        (out / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mlx_fuse, "fuse_adapter", disk_full)
    with pytest.raises(OSError):
        fuse_run(in_tiny_home, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_fuse_command(tiny_run, tmp_path):
    home, run = tiny_run
    env = {**os.environ, "MLXLORA_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-m", "mlxlora", "fuse", run.name, "--out", str(tmp_path / "m")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "m") and (tmp_path / "m" / "config.json").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "mlxlora", "fuse", str(tmp_path / "m")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bad.returncode == RunError.exit_code  # a model directory is not a run
    assert bad.stderr.startswith("mlxlora: error: ") and bad.stderr.count("\n") == 1


def test_fuse_command_json_names_the_directory_and_its_files(tiny_run, tmp_path):
    """What the studio's Fuse dialog reads: the directory and each file's size."""
    home, run = tiny_run
    env = {**os.environ, "MLXLORA_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-m", "mlxlora", "fuse", run.name, "--out", str(tmp_path / "m"),
         "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["out"] == str(tmp_path / "m")
    written = {f.name: f.stat().st_size for f in (tmp_path / "m").iterdir()}
    kept = {k: v for k, v in written.items() if k != ".mlxlora-output.json"}  # the marker
    assert result["files"] == kept
    assert "config.json" in result["files"] and "model.safetensors" in result["files"]


def test_transformers_loads_the_fused_model_with_the_same_logits(in_tiny_home, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    out = fuse_run(in_tiny_home, tmp_path / "fused")
    ids = hf_tokenizer(out).encode("What is the capital of France? 日本の首都は東京です。")
    model = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(logits - mlx_logits(out, ids)).max() < 1e-3


def _state(folder) -> dict:
    """Every path under `folder` (hidden ones included) with its bytes, to see nothing changed."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def test_an_out_that_is_not_an_earlier_fuse_output_is_refused_on_one_line(in_tiny_home, tmp_path):
    home = in_tiny_home.parents[1]
    run = _runs_like(in_tiny_home, tmp_path, "テスト実行")  # a run outside the workspace
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "keep me"}\n')
    cases = {
        mine: "exists and is not an earlier `mlxlora fuse` output",
        data: "is a file, not a directory",
        run: "is a run directory",
        run / "adapters" / "model": f"is inside the run directory {run}",
        home / "runs" / "model": "is in the workspace's runs folder",
        home / "datasets": "is in the workspace's datasets folder",
        home: "contains the workspace's runs folder",
    }
    before, workspace = _state(tmp_path), _state(home)
    for out, words in cases.items():
        with pytest.raises(ExportError) as err:
            fuse_run(run, out)
        assert words in str(err.value) and "\n" not in str(err.value), out
        assert str(err.value).startswith(f"{out}: ")
    assert _state(tmp_path) == before and _state(home) == workspace  # nothing moved or removed


def test_fuse_command_refuses_the_runs_own_directory(tiny_run, tmp_path):
    home, trained = tiny_run
    run = _runs_like(trained, tmp_path, "テスト実行")
    before = _state(run)
    env = {**os.environ, "MLXLORA_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-m", "mlxlora", "fuse", str(run), "--out", str(run)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert out.returncode == ExportError.exit_code
    assert out.stderr.splitlines() == [
        f"mlxlora: error: {run}: is a run directory; choose another --out directory"
    ]
    assert _state(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["テスト実行"]


def test_an_earlier_fuse_output_is_replaced_but_not_another_commands(in_tiny_home, tmp_path):
    from mlxlora.outputs import OUTPUT_MARKER

    out = fuse_run(in_tiny_home, tmp_path / "model")
    assert json.loads((out / OUTPUT_MARKER).read_text())["command"] == "fuse"
    assert fuse_run(in_tiny_home, out) == out
    # a marker from before markers listed their files: its directory is replaced whole
    (out / OUTPUT_MARKER).write_text(json.dumps({"command": "fuse"}))
    (out / "stale.bin").write_bytes(b"old")
    assert fuse_run(in_tiny_home, out) == out
    assert not (out / "stale.bin").exists() and (out / "config.json").is_file()
    (out / OUTPUT_MARKER).write_text(json.dumps({"command": "export"}))
    with pytest.raises(ExportError, match="not an earlier `mlxlora fuse` output"):
        fuse_run(in_tiny_home, out)
    (out / OUTPUT_MARKER).unlink()  # an HF model directory like any other: not clearly ours
    with pytest.raises(ExportError, match="not an earlier `mlxlora fuse` output"):
        fuse_run(in_tiny_home, out)
    # the default place, <run>/fused, holds only what fuse wrote there, marker or not
    run = _runs_like(in_tiny_home, tmp_path, "older")
    (run / "fused").mkdir()
    (run / "fused" / "config.json").write_text("{}")
    assert fuse_run(run) == run / "fused" and (run / "fused" / OUTPUT_MARKER).is_file()


def test_an_earlier_fuse_output_that_the_user_added_to_or_edited_is_kept(in_tiny_home, tmp_path):
    out = fuse_run(in_tiny_home, tmp_path / "融合モデル")
    (out / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # Finder showed the folder: no user data
    assert fuse_run(in_tiny_home, out) == out and not (out / ".DS_Store").exists()
    (out / "NOTES.md").write_text("私のメモ", "utf-8")
    with pytest.raises(ExportError, match="NOTES.md in it was added or changed after"):
        fuse_run(in_tiny_home, out)
    assert (out / "NOTES.md").read_text("utf-8") == "私のメモ"
    (out / "NOTES.md").unlink()
    config = out / "config.json"
    config.write_text(config.read_text().replace('"llama"', '"llama" '))  # a user's edit
    with pytest.raises(ExportError, match="config.json in it was added or changed after"):
        fuse_run(in_tiny_home, out)
    assert '"llama" ' in config.read_text()


def test_the_fused_directory_has_the_permissions_the_umask_gives(in_tiny_home, tmp_path):
    import stat

    old = os.umask(0o027)
    try:
        out = fuse_run(in_tiny_home, tmp_path / "shared")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # not tempfile's 0700
    for path in out.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o750 if path.is_dir() else 0o640), path


def test_a_bitsandbytes_base_is_refused_on_one_line_by_fuse_and_export(
    home, tmp_path, quickstart_data, capsys
):
    """A torch run on a bitsandbytes base (QLoRA): fuse told its user to train on backend
    torch, which they had; `export --adapter-only` ended in mlx-lm's traceback listing 84
    parameters. Both read the base with MLX: each says so on one line."""
    pytest.importorskip("bitsandbytes")
    from mlxlora.cli import main
    from tests.engine.test_torch_backend import bnb_4bit_tiny

    model = bnb_4bit_tiny(tmp_path / "tiny-bnb-4bit")
    run = tmp_path / "量子化モデル_torch"
    train_run(home, run, quickstart_data, str(model), steps=2, backend="torch")
    for args in (["fuse", str(run)], ["export", str(run), "--ollama", "qlora", "--adapter-only"]):
        assert main(args) != 0
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == (
            f"mlxlora: error: {model}: a bitsandbytes 4-bit base cannot be fused or exported:"
            " both read its weights with MLX, which cannot load it; a run trained on its float"
            " model can be"
        )
