"""Generation on torch (backends/torch_infer.py) against MLX's on builtin:tiny, both on the CPU
in float32, through an adapter trained by the torch backend: the same greedy tokens, the same
text, stats and streamed events, and the run's samples come from the torch generator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("peft")
pytest.importorskip("mlx_lm")

from mlxlora import engine, evaluate  # noqa: E402
from mlxlora.backends import select, torch_infer  # noqa: E402
from mlxlora.cli import main  # noqa: E402
from mlxlora.evaluate import messages_for  # noqa: E402
from mlxlora.events import Sample, read_events  # noqa: E402
from mlxlora.runs import RunPaths  # noqa: E402
from tests.conftest import random_batches  # noqa: E402
from tests.engine.test_torch_backend import ALL_TARGETS  # noqa: E402
from tests.engine.test_train import make_config  # noqa: E402

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
SAMPLES = ["What is LoRA?", "東京について教えて"]
PROMPTS = [*SAMPLES, "Question: what is fine-tuning? Answer:"]


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory, built_tiny, quickstart_data):
    """(workspace, run directory, max_tokens of each generation the torch loop ran while
    training): 12 steps on builtin:tiny with backend torch, two samples before and after."""
    from mlxlora.models.resolve import builtin_dir

    home = tmp_path_factory.mktemp("torchgen-home")
    run = home / "runs" / "torch-run"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLXLORA_HOME", str(home))
        shutil.copytree(built_tiny, builtin_dir())
        asked = []
        real = torch_infer.stream_text

        def spy(model, tokenizer, prompt, max_tokens, *args):
            asked.append(max_tokens)
            yield from real(model, tokenizer, prompt, max_tokens, *args)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch_infer, "stream_text", spy)
            cfg = make_config(
                quickstart_data,
                "backend=torch",
                ALL_TARGETS,
                "training.max_steps=12",
                "training.learning_rate=0.003",
                f"samples={json.dumps(SAMPLES, ensure_ascii=False)}",
            )
            engine.train(cfg, run)
        yield home, run, asked


def generators(built_tiny, adapter):
    return select.generator("mlx", built_tiny, adapter), select.generator(
        "torch", built_tiny, adapter
    )


def noisy_copy(adapter, target, seed=0):
    """The adapter with noise on its B matrices: a model whose greedy answers wander through
    the vocabulary (multi-byte characters, spaces), where the trained one soon stops."""
    from safetensors.numpy import load_file, save_file

    from mlxlora.adapters_convert import CONFIG, MLX_WEIGHTS

    rng = np.random.default_rng(seed)
    weights = load_file(str(adapter / MLX_WEIGHTS))
    for name, value in weights.items():
        if name.endswith("lora_b"):
            weights[name] = value + rng.normal(0, 0.5, value.shape).astype(np.float32)
    target.mkdir()
    save_file(weights, str(target / MLX_WEIGHTS))
    shutil.copy(adapter / CONFIG, target / CONFIG)
    return target


def test_greedy_torch_equals_mlx_token_for_token(torch_run, built_tiny, tmp_path):
    _, run, _ = torch_run
    adapters = RunPaths(run).adapters
    reasons, seen = set(), set()
    for adapter in (adapters, noisy_copy(adapters, tmp_path / "noisy")):
        mlx_gen, torch_gen = generators(built_tiny, adapter)
        for prompt in PROMPTS:
            for raw in (False, True):
                messages = messages_for(prompt)
                assert torch_gen.prompt_tokens(messages, raw) == mlx_gen.prompt_tokens(
                    messages, raw
                )
                texts = [g.generate(messages, 24, raw=raw) for g in (mlx_gen, torch_gen)]
                want, got = mlx_gen.last_stats, torch_gen.last_stats
                assert got["tokens"] == want["tokens"], (prompt, raw)
                assert texts[1] == texts[0], (prompt, raw)
                for key in ("prompt_tokens", "generation_tokens", "finish_reason"):
                    assert got[key] == want[key], (key, prompt, raw)
                reasons.add(got["finish_reason"])
                seen.update(got["tokens"])
        text = "The capital of Japan is Tokyo."
        assert torch_gen.perplexity(text) == pytest.approx(mlx_gen.perplexity(text), rel=1e-4)
        batch = random_batches(1, rows=3)[0]  # eval's held-out loss, padded and masked
        got, want = torch_gen.eval_loss(batch), mlx_gen.eval_loss(batch)
        assert got[1] == want[1] and got[0] == pytest.approx(want[0], rel=1e-5)
    assert reasons == {"stop", "length"} and len(seen) > 20  # the comparison covered something


def test_torch_runs_samples_come_from_the_torch_generator(torch_run, built_tiny):
    from mlxlora.trainer import SAMPLE_MAX_TOKENS

    _, run, asked = torch_run
    assert asked == [SAMPLE_MAX_TOKENS] * 2 * len(SAMPLES)  # before and after
    samples = [e for e in read_events(RunPaths(run).events) if isinstance(e, Sample)]
    tuned = select.generator("torch", built_tiny, RunPaths(run).adapters)
    base = select.generator("torch", built_tiny)
    for event in samples:
        gen = base if event.when == "before" else tuned
        assert event.answer == gen.generate(messages_for(event.prompt), SAMPLE_MAX_TOKENS)
    answers = {e.when: e.answer for e in samples if e.prompt == SAMPLES[0]}
    assert answers["before"] != answers["after"]  # the adapter the run saved is the one it used


def test_a_run_generates_on_the_backend_it_trained_on(torch_run, monkeypatch):
    from mlxlora.backends.mlx_infer import MLXGenerator
    from mlxlora.backends.torch_infer import TorchGenerator

    home, run, _ = torch_run
    monkeypatch.setenv("MLXLORA_HOME", str(home))
    assert isinstance(evaluate.load_generator(None, str(run))[0], TorchGenerator)
    assert isinstance(evaluate.load_generator("builtin:tiny")[0], MLXGenerator)  # auto, here
    gen = evaluate.load_generator(None, str(run), backend="mlx")[0]
    assert isinstance(gen, MLXGenerator)
    monkeypatch.setattr(select, "mlx_available", lambda: False)  # a CUDA host without MLX
    assert isinstance(evaluate.load_generator("builtin:tiny")[0], TorchGenerator)


def test_eval_of_a_torch_run_answers_on_torch_as_mlx_would(torch_run, built_tiny, monkeypatch):
    from mlxlora import config

    home, run, _ = torch_run
    monkeypatch.setenv("MLXLORA_HOME", str(home))
    asked = []
    real = torch_infer.stream_text

    def spy(model, tokenizer, prompt, max_tokens, *args):
        asked.append(max_tokens)
        yield from real(model, tokenizer, prompt, max_tokens, *args)

    monkeypatch.setattr(torch_infer, "stream_text", spy)
    result = evaluate.evaluate_run(str(run), max_records=3, max_tokens=6)
    assert asked == [6] * len(result["answers"]) and asked
    cfg = config.load(RunPaths(run).config)
    records = evaluate.held_out_records(cfg, None)[0][:3]
    mlx_gen = select.generator("mlx", built_tiny, RunPaths(run).adapters)
    assert result["val_loss"] == pytest.approx(evaluate.held_out_loss(mlx_gen, records, cfg)[0])
    for row, (messages, _) in zip(result["answers"], evaluate._questions(records), strict=True):
        assert row["tuned"] == mlx_gen.generate(messages, 6)


def test_sampling_is_seeded_on_both_backends(torch_run, built_tiny, tmp_path):
    _, run, _ = torch_run
    messages = messages_for(PROMPTS[2])
    for gen in generators(built_tiny, RunPaths(run).adapters):
        drawn = {}
        for seed in (1, 1, 2):
            gen.generate(messages, 12, temperature=1.5, seed=seed)
            drawn.setdefault(seed, []).append(gen.last_stats["tokens"])
        assert drawn[1][0] == drawn[1][1] and drawn[1][0] != drawn[2][0]
        greedy = gen.generate(messages, 12)
        assert gen.generate(messages, 12, temperature=0.0, seed=5) == greedy


def cli(*args, home):
    return subprocess.run(
        [sys.executable, "-m", "mlxlora", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLXLORA_HOME": str(home)},
        cwd=REPO,
    )


@pytest.mark.slow
def test_streamed_answers_read_the_same_from_both(torch_run, tmp_path, monkeypatch, capsys):
    home, run, _ = torch_run
    noisy = noisy_copy(RunPaths(run).adapters, tmp_path / "noisy")
    args = ("--adapter", str(noisy), "--model", "builtin:tiny", "--prompt", SAMPLES[1])
    streams = {}
    for backend in ("mlx", "torch"):
        out = cli(
            "generate", *args, "--max-tokens", "16", "--stream", "--backend", backend, home=home
        )
        assert out.returncode == 0 and out.stderr == "", out.stderr
        *tokens, done = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(tokens) > 1 and {tuple(sorted(e)) for e in tokens} == {("text", "type")}
        assert {e["type"] for e in tokens} == {"token"} and done["type"] == "done"
        assert "".join(e["text"] for e in tokens) == done["text"]
        streams[backend] = done
    mlx_done, torch_done = streams["mlx"], streams["torch"]
    assert sorted(torch_done) == sorted(mlx_done)
    assert torch_done["tokens_per_sec"] > 0
    for key in ("text", "prompt_tokens", "generation_tokens", "finish_reason"):
        assert torch_done[key] == mlx_done[key], key
    monkeypatch.setenv("MLXLORA_HOME", str(home))  # the plain answer: this process, not a child
    assert main(["generate", *args, "--max-tokens", "16", "--backend", "torch"]) == 0
    assert capsys.readouterr().out == torch_done["text"] + "\n"
    bad = cli("generate", *args, "--temperature", "-1", home=home)
    assert bad.returncode == 2 and "--temperature" in bad.stderr and bad.stderr.count("\n") == 1


def test_an_adapter_on_a_model_of_another_width_is_refused_on_one_line(
    torch_run, built_tiny, tmp_path
):
    """`generate --adapter RUN --model OTHER` where OTHER has the same layer names but another
    width (SmolLM2 under a tiny run's adapter): torch's size error came as a traceback."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    home, run, _ = torch_run
    wider = AutoConfig.from_pretrained(built_tiny)
    wider.hidden_size, wider.intermediate_size = 2 * wider.hidden_size, 2 * wider.intermediate_size
    AutoModelForCausalLM.from_config(wider).save_pretrained(tmp_path / "wider")
    AutoTokenizer.from_pretrained(built_tiny).save_pretrained(tmp_path / "wider")
    out = cli(
        "generate", "--adapter", str(run), "--model", str(tmp_path / "wider"), "--prompt", "hi",
        "--backend", "torch", home=home,
    )  # fmt: skip
    assert out.returncode == 4 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("mlxlora: error: adapter does not fit this model's LoRA layers:")
    assert "is 4x256 in the adapter, 4x512 in the model" in out.stderr
