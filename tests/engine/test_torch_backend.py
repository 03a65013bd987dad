"""The torch backend against the MLX one on builtin:tiny, both on the CPU in float32: the same
adapter gives the same logits, the same start and data give the same losses, and the real
engine trains, stops and resumes through it with the run directory MLX would write."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("peft")
pytest.importorskip("mlx_lm")

from mlxlora import adapters_convert, engine  # noqa: E402
from mlxlora.events import Step, read_events  # noqa: E402
from mlxlora.models.resolve import resolve_model  # noqa: E402
from mlxlora.runs import RunPaths  # noqa: E402
from tests.conftest import random_batches  # noqa: E402
from tests.engine.test_train import make_config, steps  # noqa: E402

ALL_TARGETS = "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
# Measured on x86-64 (MLX CPU + OpenBLAS, torch 2.13 CPU): logits differ by < 1e-5; over 6
# steps the losses by <= 5.2e-6 and the gradient norms by <= 1.3e-4 relative. Adam without
# bias correction moves every weight by ~3*lr on its first step whatever the gradient's size,
# so at higher learning rates float noise in tiny gradients grows step by step.
LOGITS_ATOL = 1e-4
LOSS_RTOL = 1e-4
NORM_RTOL = 1e-3


def backends(cfg):
    """(MLX backend, torch backend) loaded for `cfg`, the torch LoRA set to MLX's init."""
    from mlx.utils import tree_flatten

    from mlxlora.backends import torch_peft
    from mlxlora.backends.mlx import MLXBackend
    from mlxlora.backends.torch import TorchBackend

    model_dir = resolve_model(cfg.model, progress=False)
    mlx_backend, torch_backend = MLXBackend(), TorchBackend()
    mlx_backend.load(model_dir, cfg)
    torch_backend.load(model_dir, cfg)
    init = {k: np.array(v) for k, v in tree_flatten(mlx_backend.model.trainable_parameters())}
    torch_peft.load_mlx_weights(torch_backend.model, init)
    return mlx_backend, torch_backend


def test_same_adapter_gives_the_same_logits_in_mlx_and_torch(home, quickstart_data, tmp_path):
    import mlx.core as mx
    import torch
    from mlx_lm.utils import load
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = make_config(quickstart_data, ALL_TARGETS, "lora.num_layers=3")
    mlx_backend, _ = backends(cfg)
    from mlx.utils import tree_flatten

    rng = np.random.default_rng(1)  # a non-zero B, so the adapter changes the logits
    trained = {
        name: rng.normal(0, 0.05, value.shape).astype(np.float32)
        for name, value in tree_flatten(mlx_backend.model.trainable_parameters())
    }
    mlx_backend.model.load_weights([(k, mx.array(v)) for k, v in trained.items()], strict=False)
    mlx_backend.save_adapter(tmp_path / "mlx")
    assert adapters_convert.convert(tmp_path / "mlx", tmp_path / "both") == "mlx"

    model_dir = resolve_model("builtin:tiny", progress=False)
    base, tok = load(str(model_dir), adapter_path=str(tmp_path / "mlx"))
    ids = tok.encode("What is the capital of France? Paris.")
    mlx_logits = np.array(base(mx.array([ids])).astype(mx.float32))
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    plain = hf(torch.tensor([ids])).logits.detach().numpy()
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "both").eval()
    with torch.no_grad():
        torch_logits = peft_model(torch.tensor([ids])).logits.numpy()
    assert np.abs(mlx_logits - plain).max() > 1e-2  # the adapter matters
    np.testing.assert_allclose(torch_logits, mlx_logits, atol=LOGITS_ATOL, rtol=0)

    # and back: the PEFT files alone convert to the mlx-lm tensors we started from
    (tmp_path / "peft").mkdir()
    for name in (adapters_convert.PEFT_WEIGHTS, adapters_convert.CONFIG):
        (tmp_path / "peft" / name).write_bytes((tmp_path / "both" / name).read_bytes())
    assert adapters_convert.convert(tmp_path / "peft", tmp_path / "back", total_layers=4) == "peft"
    from safetensors.numpy import load_file

    back = load_file(str(tmp_path / "back" / adapters_convert.MLX_WEIGHTS))
    assert back.keys() == trained.keys()
    for name, value in trained.items():
        np.testing.assert_array_equal(back[name], value)
    config = json.loads((tmp_path / "back" / adapters_convert.CONFIG).read_text())
    assert config["num_layers"] == 3 and config["lora_parameters"]["scale"] == 2.0


def peft_adapter(directory, **lora):
    """A PEFT adapter on builtin:tiny as PEFT itself saves it, with a non-zero B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        resolve_model("builtin:tiny", progress=False), dtype=torch.float32
    )
    model = get_peft_model(hf, LoraConfig(task_type="CAUSAL_LM", **lora))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    model.save_pretrained(directory)
    return model.eval()


def test_an_rslora_peft_adapter_converts_to_the_same_logits_in_mlx(home, tmp_path):
    """rsLoRA scales by alpha / sqrt(r): converted as alpha / r, mlx-lm's logits moved by
    half the adapter's own change."""
    import mlx.core as mx
    import torch
    from mlx_lm.utils import load

    targets = ["q_proj", "up_proj"]
    tuned = peft_adapter(tmp_path / "peft", r=4, lora_alpha=8, use_rslora=True,
                         target_modules=targets)  # fmt: skip
    assert adapters_convert.convert(tmp_path / "peft", tmp_path / "both") == "peft"

    base_dir = resolve_model("builtin:tiny", progress=False)
    model, tok = load(str(base_dir), adapter_path=str(tmp_path / "both"))
    ids = tok.encode("What is the capital of France? Paris.")
    mlx_logits = np.array(model(mx.array([ids])).astype(mx.float32))[0]
    with torch.no_grad():
        peft_logits = tuned(torch.tensor([ids])).logits[0].numpy()
        with tuned.disable_adapter():
            plain = tuned(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(peft_logits - plain).max() > 1e-2  # the adapter matters
    np.testing.assert_allclose(mlx_logits, peft_logits, atol=LOGITS_ATOL, rtol=0)


def test_a_per_layer_rank_peft_adapter_is_refused(home, tmp_path):
    from mlxlora.errors import ModelError

    peft_adapter(tmp_path / "peft", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                 alpha_pattern={"v_proj": 16})  # fmt: skip
    with pytest.raises(ModelError, match="rank_pattern/alpha_pattern has no mlx-lm form"):
        adapters_convert.convert(tmp_path / "peft", tmp_path / "both")
    assert not (tmp_path / "both").exists()


def test_first_steps_lose_the_same_on_mlx_and_torch(home, quickstart_data):
    cfg = make_config(quickstart_data, ALL_TARGETS, "training.weight_decay=0.01")
    mlx_backend, torch_backend = backends(cfg)
    losses = {"mlx": [], "torch": []}
    norms = {"mlx": [], "torch": []}
    batches = random_batches(2, rows=3)  # seen again every step: it can learn them
    for step in range(6):  # 2 micro-batches a step, clipped (the last not), AdamW
        for name, backend in (("mlx", mlx_backend), ("torch", torch_backend)):
            for i in range(2):
                losses[name].append(backend.accumulate(batches[i], seed=step))
            norms[name].append(backend.update(lr=5e-3, grad_clip=0.5 if step < 5 else 0.0))
    np.testing.assert_allclose(losses["torch"], losses["mlx"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(norms["torch"], norms["mlx"], rtol=NORM_RTOL)
    assert max(losses["mlx"][-4:]) < losses["mlx"][0] - 0.5  # it learned: the steps were not no-ops


def event_shape(run_dir) -> list[tuple[str, tuple[str, ...]]]:
    lines = (RunPaths(run_dir).events).read_text().splitlines()
    return [(e["type"], tuple(sorted(e))) for e in map(json.loads, lines)]


def run_files(run_dir) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def test_engine_trains_stops_and_resumes_on_torch_like_on_mlx(home, quickstart_data, tmp_path):
    overrides = (
        "training.max_steps=8",
        "training.eval_every=4",
        "training.grad_accumulation=2",
        "training.schedule=cosine",
        "training.warmup_steps=2",
        "lora.dropout=0.1",
        "samples=[Hello]",
    )
    torch_cfg = make_config(quickstart_data, *overrides, "backend=torch")
    full, part, mlx_run = tmp_path / "full", tmp_path / "part", tmp_path / "mlx"
    engine.train(torch_cfg, full)
    engine.train(make_config(quickstart_data, *overrides, "backend=mlx"), mlx_run)

    def stop_after_three(event):
        if isinstance(event, Step) and event.step == 3:
            RunPaths(part).stop_request.touch()

    assert engine.train(torch_cfg, part, listeners=[stop_after_three])["steps"] == 3
    engine.train(None, part, resume=True)

    expected, got = steps(full), steps(part)
    assert sorted(got) == list(range(1, 9))
    np.testing.assert_allclose([got[s] for s in got], [expected[s] for s in got], rtol=1e-5)
    losses = list(expected.values())
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3
    started = next(e for e in read_events(RunPaths(full).events) if e.type == "run_started")
    assert started.backend == "torch" and started.device == "cpu"

    # the same events with the same fields and the same files as the MLX run, plus PEFT's
    assert event_shape(full) == event_shape(mlx_run)
    peft = ("", "best/", "checkpoints/step-0000004/", "checkpoints/step-0000008/")
    peft_files = {f"adapters/{d}adapter_model.safetensors" for d in peft}
    assert run_files(full) == run_files(mlx_run) | peft_files


def test_keeping_a_quantized_base_on_torch_is_said_to_be_ignored(
    home, quickstart_data, tmp_path, capsys
):
    """quantized_base=keep on backend torch trained the float copy without a word."""
    from mlxlora.cli import main
    from mlxlora.export.gguf_writer import write_gguf
    from mlxlora.models.resolve import builtin_dir

    resolve_model("builtin:tiny")
    q8 = write_gguf(builtin_dir(), tmp_path / "tiny-q8.gguf", "q8_0")  # MLX-quantized once read
    said = "quantized_base=keep is ignored: backend torch trains MLX-quantized weights from a "
    said += "float copy"
    for keep, backend in (("keep", "torch"), ("auto", "torch"), ("keep", "mlx")):
        sets = [f"model={q8}", f"backend={backend}", f"quantized_base={keep}"]
        cfg = make_config(quickstart_data, *sets, "training.max_steps=1")
        run = tmp_path / f"{keep}-{backend}"
        engine.train(cfg, run)
        started = next(e for e in read_events(RunPaths(run).events) if e.type == "run_started")
        assert (said in started.warnings) == (keep == "keep" and backend == "torch")
    capsys.readouterr()
    args = [f"--set={s}" for s in (f"model={q8}", "backend=torch", "quantized_base=keep")]
    assert main(["train", "configs/tiny.yaml", *args, "--dry-run"]) == 0
    assert f"  warning: {said}" in capsys.readouterr().out.splitlines()


def test_quantized_bases_need_bitsandbytes_or_mlx(tmp_path):
    """MLX-quantized weights with no GGUF to convert float again are refused on one line."""
    from mlxlora.backends.torch_peft import is_bnb_quantized, transformers_dir
    from mlxlora.errors import BackendUnavailable, ModelError

    (tmp_path / "config.json").write_text('{"quantization": {"bits": 4, "group_size": 64}}')
    with pytest.raises(ModelError, match="MLX-quantized weights cannot train with backend torch"):
        transformers_dir(tmp_path)
    bnb = '{"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true}}'
    (tmp_path / "config.json").write_text(bnb)
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(BackendUnavailable, match="install bitsandbytes"):
            is_bnb_quantized(tmp_path)
    else:
        assert is_bnb_quantized(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert not is_bnb_quantized(tmp_path)


def bnb_4bit_tiny(dest):
    """builtin:tiny quantized to 4 bits by transformers' bitsandbytes loader and saved: an HF
    4-bit checkpoint, as the hub's -bnb-4bit models are."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    source = resolve_model("builtin:tiny", progress=False)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=quant)
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(source).save_pretrained(dest)
    return dest


def test_a_bitsandbytes_4bit_base_trains_as_qlora(home, tmp_path):
    """QLoRA where bitsandbytes is installed (its CPU kernels here): the base stays 4-bit under
    PEFT's LoRA layers, the loss falls, and the adapter is PEFT's."""
    pytest.importorskip("bitsandbytes")
    from mlxlora import config
    from mlxlora.backends.torch import TorchBackend

    model_dir = bnb_4bit_tiny(tmp_path / "tiny-bnb-4bit")
    cfg = config.from_dict(
        {"model": str(model_dir), "backend": "torch", "data": {"dataset": "x"}, "lora": {"rank": 8}}
    )
    backend = TorchBackend()
    backend.load(model_dir, cfg)
    linear = type(backend.model.base_model.model.model.layers[0].self_attn.q_proj)
    assert (linear.__module__, linear.__name__) == ("peft.tuners.lora.bnb", "Linear4bit")
    batches, losses = random_batches(2, rows=3), []
    for step in range(6):
        losses += [backend.accumulate(batch, seed=step) for batch in batches]
        backend.update(lr=5e-3, grad_clip=0.5)
    assert max(losses[-2:]) < losses[0] - 0.5
    backend.save_adapter(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / adapters_convert.CONFIG).read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == 8


def test_a_bitsandbytes_base_trains_after_an_evaluation_as_before_it(home, tmp_path):
    """On a CPU bitsandbytes repacks a 4-bit layer for its inference kernel the first time the
    layer runs in eval mode (a run's baseline validation) and computes it with that kernel
    from then on, which has no backward: with LoRA on q and v only (the default targets) no
    LoRA weight got a gradient and every QLoRA run ended in a TypeError at step 1; with more
    targets they got part of theirs. A step after an evaluation has the gradient it had."""
    pytest.importorskip("bitsandbytes")
    from mlxlora import config
    from mlxlora.backends.torch import TorchBackend

    model_dir = bnb_4bit_tiny(tmp_path / "tiny-bnb-4bit")
    cfg = config.from_dict({"model": str(model_dir), "backend": "torch", "data": {"dataset": "x"}})
    backend = TorchBackend()
    backend.load(model_dir, cfg)
    (batch,) = random_batches(1, rows=3)

    def gradient_norm() -> float:
        backend.accumulate(batch, seed=0)
        return backend.update(lr=0.0, grad_clip=0.0)  # lr 0: the weights stay as they are

    before = gradient_norm()
    backend.eval_loss(batch)
    assert before > 0 and gradient_norm() == pytest.approx(before, rel=1e-5)


def test_a_bitsandbytes_base_is_planned_as_the_4_bit_weights_it_loads(home, tmp_path):
    """The memory estimate counted a bitsandbytes checkpoint's packed bytes as parameters
    (half the model's) and planned them as float32 on a CPU: 1.86x what loads (a review
    finding). Now its parameters are the float model's, and its weights what torch loads."""
    pytest.importorskip("bitsandbytes")
    import itertools

    import torch

    from mlxlora import memory_weights
    from mlxlora.backends import torch_peft
    from mlxlora.models.info import model_info

    model_dir = bnb_4bit_tiny(tmp_path / "tiny-bnb-4bit")
    info = model_info(model_dir)
    assert info["params"] == model_info(resolve_model("builtin:tiny", progress=False))["params"]
    assert info["quantization"] == {"bits": 4, "group_size": 64, "method": "bitsandbytes"}
    model, _ = torch_peft.load_base(model_dir, torch.device("cpu"), torch.float32)
    tensors = itertools.chain(model.parameters(), model.buffers())
    loaded = sum(t.numel() * t.element_size() for t in tensors)
    for policy in ("auto", "dequantize"):  # torch keeps it 4-bit whatever the policy
        assert loaded <= memory_weights.planned_weights(info, policy, on_cpu=True) <= 1.1 * loaded


def test_mlx_refuses_a_bitsandbytes_base_on_one_line(home, tmp_path):
    """mlx-lm cannot load a bitsandbytes checkpoint: `mlxlora train` printed 85 lines of its
    unknown parameters. Now one line says which backend trains it."""
    pytest.importorskip("bitsandbytes")
    import subprocess
    import sys

    from mlxlora.backends.mlx_infer import MLXGenerator
    from mlxlora.errors import ModelError

    model_dir = bnb_4bit_tiny(tmp_path / "tiny-bnb-4bit")
    config = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "mlxlora", "train", str(config), "--set", f"model={model_dir}"]
        + ["--set", "backend=mlx", "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 4 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "bitsandbytes 4-bit checkpoint runs on backend torch only" in out.stderr
    assert not (tmp_path / "run").exists()
    with pytest.raises(ModelError, match="bitsandbytes 4-bit"):
        MLXGenerator(model_dir)


def test_packed_batches_lose_and_learn_like_padded_ones(home, quickstart_data, monkeypatch):
    """Packing (no padding, position ids restarting per sequence) gives the padded path's
    loss and gradients: each sequence still attends only to itself. The backend says which
    rows pack (torch_peft.known_packing): transformers' own probe, never asked, reads its
    answer back from the device in every forward pass."""
    from transformers import masking_utils

    from mlxlora.backends.torch import TorchBackend

    asked = []
    probe = masking_utils.find_packed_sequence_indices
    monkeypatch.setattr(
        masking_utils, "find_packed_sequence_indices", lambda ids: asked.append(ids) or probe(ids)
    )

    cfg = make_config(quickstart_data, ALL_TARGETS)
    model_dir = resolve_model(cfg.model, progress=False)
    padded, packed = TorchBackend(), TorchBackend(pack=True)
    padded.load(model_dir, cfg)
    packed.load(model_dir, cfg)
    for name, value in padded.model.state_dict().items():  # the same LoRA init on both
        packed.model.state_dict()[name].copy_(value)
    batch = random_batches(1, rows=4)[0]
    assert batch.padding_fraction > 0.1
    losses = [b.accumulate(batch, seed=0) for b in (padded, packed)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    for a, b in zip(padded._trainable, packed._trainable, strict=True):
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=1e-3, atol=1e-6)
    assert padded.eval_loss(batch) == pytest.approx(packed.eval_loss(batch), rel=1e-5)
    assert not asked


def test_compiled_forward_loses_like_eager(home, quickstart_data, monkeypatch):
    """training.compile: the same losses as the uncompiled model for 3 steps of batches of
    different lengths (graphs with dynamic shapes, shared by the blocks), every block compiled.
    Compiled through dynamo and AOTAutograd with eager kernels: Inductor's C++ build is ~4 min
    here (measured by hand with Inductor: losses within 7.8e-7)."""
    from torch._dynamo.utils import counters

    from mlxlora.backends import torch as torch_backend
    from mlxlora.backends import torch_peft
    from mlxlora.backends.torch import TorchBackend

    monkeypatch.setattr(torch_backend, "COMPILE_BACKEND", "aot_eager")

    model_dir = resolve_model("builtin:tiny", progress=False)
    batches = random_batches(3, rows=3)
    assert len({b.tokens.shape[1] for b in batches}) == 3
    losses, answers, graphs = {}, {}, {}
    for compiled in (False, True):
        cfg = make_config(quickstart_data, ALL_TARGETS, f"training.compile={compiled}")
        backend = TorchBackend()
        backend.load(model_dir, cfg)
        blocks = torch_peft.blocks(backend._causal_lm())
        assert [b._compiled_call_impl is not None for b in blocks] == [compiled] * len(blocks)
        counters.clear()
        losses[compiled] = []
        for step, batch in enumerate(batches):
            losses[compiled].append(backend.accumulate(batch, seed=step))
            backend.update(lr=5e-3, grad_clip=0.5)
        answers[compiled] = backend.generate([{"role": "user", "content": "hi"}], 6)  # eager
        graphs[compiled] = counters["stats"]["unique_graphs"]
    np.testing.assert_allclose(losses[True], losses[False], rtol=0, atol=1e-5)
    assert answers[True] == answers[False]
    # two graphs for every block and batch length: the first block's input (the frozen
    # embedding's output) needs no gradient, the others' do
    assert graphs == {False: 0, True: 2}
    assert losses[True][2] != losses[True][0]  # three different steps


def test_attention_never_takes_cudnns_per_length_plans(home, quickstart_data):
    """Training steps (the checkpointed forward run again in backward too), evaluation and
    generation keep SDPA off cuDNN's kernel, which plans for every new sequence length (the
    1B step ran 1.72x faster without it on an H200). Checked where SDPA chooses: the flag
    inside every attention call."""
    import torch

    from mlxlora.backends import torch_peft
    from mlxlora.backends.torch import TorchBackend

    backend = TorchBackend()
    cfg = make_config(quickstart_data, "training.grad_checkpoint=true")
    backend.load(resolve_model("builtin:tiny", progress=False), cfg)
    blocks = torch_peft.blocks(backend._causal_lm())
    seen = []
    for block in blocks:
        block.self_attn.register_forward_hook(
            lambda *_: seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        )
    batch = random_batches(1, rows=2)[0]
    backend.accumulate(batch, seed=0)
    backend.eval_loss(batch)
    backend.generate([{"role": "user", "content": "hi"}], 3)
    assert len(seen) == len(blocks) * (2 + 1 + 3)  # forward, recompute; eval; 3 tokens
    assert not any(seen)


def test_a_half_precision_base_computes_lora_in_half_precision(home, quickstart_data, monkeypatch):
    """On CUDA the base is bf16: the LoRA weights (and so the optimizer) stay float32, but each
    LoRA product runs in bf16 from the layer's bf16 input under autocast instead of casting
    the input up (PEFT's default; casts and float32 GEMMs were a third of an H200's time on the
    0.5B shape). bf16 on the CPU stands in for CUDA here. It trains as float32 does: the same
    losses within bf16's precision, and they fall."""
    import torch

    from mlxlora.backends import torch_peft
    from mlxlora.backends.torch import TorchBackend

    model_dir = resolve_model("builtin:tiny", progress=False)
    cfg = make_config(quickstart_data, ALL_TARGETS)
    batch = random_batches(1, rows=3)[0]
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        device = (torch.device("cpu"), dtype)
        monkeypatch.setattr(torch_peft, "select_device", lambda device=device: device)
        backend = TorchBackend()
        backend.load(model_dir, cfg)
        if dtype == torch.float32:
            init = {k: v.detach().clone() for k, v in backend.model.state_dict().items()}
        else:  # the same LoRA init, in float32
            for name, value in init.items():
                if "lora_" in name:
                    backend.model.state_dict()[name].copy_(value)
        lora_inputs = []
        lora_a = next(m for n, m in backend.model.named_modules() if n.endswith("lora_A.default"))
        lora_a.register_forward_hook(
            lambda _m, args, _o, seen=lora_inputs: seen.append(args[0].dtype)
        )
        losses[dtype] = []
        for step in range(4):  # one batch again and again: its loss must fall
            losses[dtype].append(backend.accumulate(batch, seed=step))
            backend.update(lr=5e-3, grad_clip=1.0)
        assert {p.dtype for p in backend._trainable} == {torch.float32}
        assert set(lora_inputs) == {dtype}
        assert backend.eval_loss(batch)[0] > 0
        assert backend.generate([{"role": "user", "content": "hi"}], 3) is not None
    np.testing.assert_allclose(losses[torch.bfloat16], losses[torch.float32], rtol=2e-2)
    assert losses[torch.bfloat16][-1] < losses[torch.bfloat16][0] - 0.1


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_the_chunked_loss_makes_the_gradient_autograd_makes(softcap):
    """torch_loss makes each chunk's d(loss)/d(hidden) in its forward pass: the loss and the
    gradient equal autograd through the whole-vocabulary logits (float32; chunks of 7 rows
    over 20, so the last chunk is short), and a half-precision head stays close to them."""
    import torch
    import torch.nn.functional as F

    from mlxlora.backends import torch_loss

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).requires_grad_(False)
    head.weight.mul_(8)  # logits of a few units: the softcap bends them
    hidden = torch.randn(20, 16, requires_grad=True)
    targets = torch.randint(0, 50, (20,))

    def reference(h, weight):
        logits = F.linear(h, weight).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return F.cross_entropy(logits, targets, reduction="sum")

    expected = reference(hidden, head.weight)
    (expected_grad,) = torch.autograd.grad(expected * 3, hidden)
    loss = torch_loss.chunked_cross_entropy(head, hidden, targets, 7, softcap)
    (grad,) = torch.autograd.grad(loss * 3, hidden)  # the upstream gradient scales it
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # evaluation: the loss alone, the same number
        torch.testing.assert_close(
            torch_loss.chunked_cross_entropy(head, hidden, targets, 7, softcap), expected
        )

    half = hidden.detach().bfloat16().requires_grad_()
    loss = torch_loss.chunked_cross_entropy(head.bfloat16(), half, targets, 7, softcap)
    (grad,) = torch.autograd.grad(loss, half)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=0)
    torch.testing.assert_close(grad.float(), expected_grad / 3, rtol=5e-2, atol=2e-2)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's resident peak")
def test_the_torch_loss_holds_what_the_eager_estimate_says():
    """torch frees a chunk's logits before the next chunk: two float32 chunks at its peak
    and each chunk's d(hidden), which the estimate counted as MLX holds them depth-first
    (three chunks of three copies: 4.5x) or on a GPU (about 13 chunks' worth here)."""
    measured, expected = json.loads(
        subprocess.run(
            [sys.executable, "-c", CPU_LOSS_PEAK],
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
            cwd=Path(__file__).parents[2],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()[-1]
    )
    assert 0.95 <= expected / measured <= 1.1, (measured, expected)


# The resident peak of a process that ran other tests depends on its heap: in CI it read 133
# of the loss's 268 MB, the rest landing on freed pages glibc had kept resident. A fresh child,
# every large tensor mapped and unmapped on its own (a fixed mmap threshold: glibc's own grows
# with the frees), after one warm-up call (the first pays ~30 MB for torch's thread pool),
# holds just the loss.
CPU_LOSS_PEAK = """
import json, torch
from tests.engine.torch_memory import torch_loss_peak
torch_loss_peak("cpu", torch.float32)
print(json.dumps(torch_loss_peak("cpu", torch.float32)))
"""


def test_a_cpu_run_fits_a_budget_its_estimate_fits(home, quickstart_data, tmp_path):
    """The CPU peak counted the interpreter and libraries (~470 MiB), and what the process
    peaked at before the run: a job estimated at 16 MiB failed a 200 MB budget at step 1, and
    so did the resume its advice gave."""
    cfg = make_config(
        quickstart_data, "training.max_steps=3", "training.memory_budget=200MB", "backend=torch"
    )
    if Path("/proc/self/clear_refs").exists():  # Linux: earlier work's peak is not the run's
        earlier = np.ones(600 * 2**20 // 8)  # as a test process that trained before peaked
        del earlier
    summary = engine.train(cfg, tmp_path / "run")
    assert summary["steps"] == 3
    assert 0 < summary["peak_memory_gb"] < 0.1  # builtin:tiny's weights, adapter and steps
