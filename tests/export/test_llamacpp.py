"""The exported GGUF files in the engine Ollama runs on: llama.cpp (llama-cpp-python).

llama.cpp tokenizes like the HF tokenizer, its logits match MLX's for the fused model (f16 and
q8_0), the base GGUF plus the LoRA GGUF matches MLX's base plus adapter, and on the real
SmolLM2 it generates the same greedy answer as `mlxlora generate`.

Tolerances, on max |logit difference| over every position of the prompt, relative to the
largest |logit| MLX gives: f16 2% (weights and llama.cpp's activations rounded to 16 bits),
q8_0 8%, q4_k_m 30% (the argmax of the last position must still agree for f16 and q8_0).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from export_helpers import TEXTS, family_model, hf_tokenizer, mlx_logits

from mlxlora.export.gguf_writer import SUPPORTED_ARCHITECTURES, write_gguf, write_lora_gguf
from mlxlora.runs import RunPaths

pytestmark = [
    pytest.mark.llamacpp,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama-cpp-python is not installed "
        "(./install.sh dev builds it, or pip install 'mlxlora[export]')",
    ),
]
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
TOLERANCE = {"f16": 0.02, "q8_0": 0.08, "q4_k_m": 0.3}


def llama(path, lora=None):
    """llama.cpp with the model (and LoRA adapter) loaded, logits kept for every position.

    Weight repacking into llama.cpp's extra CPU buffer types is off: on this VM's AMX CPU it
    crashes evaluating any quantized model, llama.cpp's own Q8_0 files included (a build and
    machine matter, not the file); plain buffers compute the same numbers.
    """
    from llama_cpp import Llama
    from llama_cpp import llama_cpp as api

    defaults = api.llama_model_default_params

    def plain_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(api, "llama_model_default_params", plain_buffers)
        return Llama(
            model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=256,
            n_threads=2, n_batch=256, logits_all=True, verbose=False, seed=0,
        )  # fmt: skip


def llama_logits(llm, ids) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def assert_close(got, want, quantize):
    scale = np.abs(want).max()
    assert np.abs(got - want).max() < TOLERANCE[quantize] * scale, np.abs(got - want).max()
    if quantize != "q4_k_m":
        assert got[-1].argmax() == want[-1].argmax()


def test_tokenizes_like_the_hf_tokenizer(tiny_fused, tmp_path):
    llm = llama(write_gguf(tiny_fused, tmp_path / "m.gguf"))
    tok = hf_tokenizer(tiny_fused)
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok.encode(text), text


def test_sentencepiece_tokenizes_like_sentencepiece_and_hf(spm_llama, tmp_path):
    """llama.cpp's SentencePiece equals sentencepiece itself on every text; transformers'
    tokenizer built from tokenizer.model equals both except where a text starts with two
    spaces (it merges the first into the prefix space), so that text is left out there."""
    import sentencepiece

    llm = llama(write_gguf(spm_llama, tmp_path / "m.gguf"))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_llama / "tokenizer.model"))
    tok = hf_tokenizer(spm_llama)
    for text in TEXTS[:3]:
        ids = llm.tokenize(text.encode(), add_bos=True, special=True)
        assert ids == [1, *sp.encode(text)], text  # BOS first, as Llama 2 adds it
        if not text.startswith("  "):
            assert ids == tok.encode(text), text


@pytest.mark.parametrize("quantize", ["f16", "q8_0", "q4_k_m"])
def test_fused_logits_match_mlx(tiny_fused, tmp_path, quantize):
    ids = hf_tokenizer(tiny_fused).encode(PROMPT)
    llm = llama(write_gguf(tiny_fused, tmp_path / "m.gguf", quantize))
    assert_close(llama_logits(llm, ids), mlx_logits(tiny_fused, ids), quantize)


def test_k_quants_keep_llama_cpps_log_to_themselves(tiny_fused, tmp_path, capfd):
    """llama.cpp's quantizer logs a few lines per tensor (about 600 for SmolLM2); an export
    shows its own stage lines only, and llama-cpp-python's logging works after it."""
    path = write_gguf(tiny_fused, tmp_path / "m.gguf", "q4_k_m")
    assert capfd.readouterr().err == ""
    llm = llama(path)
    assert llm.tokenize(b"hello") and capfd.readouterr().err == ""  # verbose=False is quiet


def test_an_export_says_which_weights_its_quantization_could_not_hold(
    tiny_run, tmp_path, monkeypatch, no_ollama
):
    """llama.cpp stores a tensor whose rows are not whole 256-value blocks (builtin:tiny's 128,
    SmolLM2's 576) as Q5_0 or Q8_0: a q4_k_m export came out larger than 4 bits, silently."""
    from mlxlora.export.stored_types import quantization_notice
    from mlxlora.export.to_ollama import ExportRequest, export_ollama
    from mlxlora.models.resolve import builtin_dir

    monkeypatch.setenv("MLXLORA_HOME", str(tiny_run[0]))
    said = []
    request = ExportRequest(tiny_run[1], "tiny", quantize="q4_k_m", out=tmp_path / "q4_k_m")
    export_ollama(request, lambda stage, text: said.append((stage, text)))
    notices = [text for stage, text in said if "instead" in text]
    assert notices == [
        "q4_k_m: 83% of the weights are stored as Q5_0/Q8_0 instead, since q4_k_m takes rows"
        " of whole 256-value blocks and theirs hold 128 values; the file is larger than q4_k_m"
        " would make it (q4_0 keeps them at 4 bits: its blocks hold 32 values)"
    ]
    for quantize in ("f16", "q8_0", "q4_0"):  # every weight as asked: nothing said
        base = tiny_run[0] / "models" / builtin_dir().name
        path = write_gguf(base, tmp_path / f"{quantize}.gguf", quantize)
        assert quantization_notice(path, quantize) is None


def test_base_plus_lora_gguf_matches_mlx_base_plus_adapter(tiny_run, tmp_path):
    from mlxlora.models.resolve import builtin_dir

    home, run = tiny_run
    base = home / "models" / builtin_dir().name
    ids = hf_tokenizer(base).encode(PROMPT)
    base_gguf = write_gguf(base, tmp_path / "base.gguf")
    lora = write_lora_gguf(run, base, tmp_path / "lora.gguf")
    tuned = mlx_logits(base, ids, adapter=RunPaths(run).adapters)
    with_lora = llama_logits(llama(base_gguf, lora), ids)
    assert_close(with_lora, tuned, "f16")
    plain = llama_logits(llama(base_gguf), ids)
    assert np.abs(plain - tuned).max() > 10 * np.abs(with_lora - tuned).max()  # it applied


@pytest.mark.parametrize("family", sorted(SUPPORTED_ARCHITECTURES))
def test_each_family_matches_mlx(family, built_tiny, tmp_path):
    model = family_model(tmp_path / family, family, built_tiny)
    ids = hf_tokenizer(model).encode(PROMPT)
    llm = llama(write_gguf(model, tmp_path / "m.gguf"))
    assert_close(llama_logits(llm, ids), mlx_logits(model, ids), "f16")


def test_sentencepiece_llama_matches_mlx(spm_llama, tmp_path):
    ids = hf_tokenizer(spm_llama).encode("The capital of France is Paris.")
    llm = llama(write_gguf(spm_llama, tmp_path / "m.gguf", "q8_0"))
    assert_close(llama_logits(llm, ids), mlx_logits(spm_llama, ids), "q8_0")


def greedy(llm, ids, stops, max_tokens) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(max_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token in stops:
            break
        out.append(token)
        llm.eval([token])
    return out


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_tuned_run_answers_as_mlxlora_generate(home, smollm2, quickstart_data, tmp_path):
    from export_helpers import train_run

    from mlxlora import evaluate
    from mlxlora.export.fuse import fuse_run

    _, model_dir = smollm2
    # a pretrained model: a gentle rate, so the answer is still an answer
    run = train_run(home, tmp_path / "run", quickstart_data, str(model_dir), 3, 2e-4)
    question = "What is the capital of France?"
    expected = evaluate.generate(None, question, adapter=str(run), max_tokens=24, progress=False)
    fused = fuse_run(run, tmp_path / "fused", dequantize=True)
    gguf_path = write_gguf(fused, tmp_path / "smollm2.gguf")
    tok = hf_tokenizer(fused)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
    )
    meta = json.loads((fused / "config.json").read_text())
    stops = {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    stops |= set(np.atleast_1d(meta.get("eos_token_id", [])).tolist())
    answer = tok.decode(greedy(llama(gguf_path), list(ids), stops, 24))
    print(f"\nmlxlora generate: {expected!r}\nllama.cpp:        {answer!r}")
    assert answer == expected


def test_a_torch_run_exports_and_llama_cpp_matches_peft(tiny_run, quickstart_data, tmp_path):
    """Issue 12's export: a run trained by the torch backend fuses and exports like an MLX run;
    llama.cpp's logits for the fused GGUF and for base + LoRA GGUF match PEFT's own model."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from export_helpers import train_run
    from transformers import AutoModelForCausalLM

    from mlxlora.export.fuse import fuse_run
    from mlxlora.models.resolve import builtin_dir

    home = tiny_run[0]
    base = home / "models" / builtin_dir().name
    run = train_run(home, tmp_path / "torch-run", quickstart_data, backend="torch")
    ids = hf_tokenizer(base).encode(PROMPT)
    hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tuned = peft.PeftModel.from_pretrained(hf, RunPaths(run).adapters).eval()
    with torch.no_grad():
        want = tuned(torch.tensor([ids])).logits[0].numpy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLXLORA_HOME", str(home))
        fused = fuse_run(run, tmp_path / "fused")
    assert_close(llama_logits(llama(write_gguf(fused, tmp_path / "m.gguf")), ids), want, "f16")
    lora = write_lora_gguf(run, base, tmp_path / "lora.gguf")
    base_gguf = write_gguf(base, tmp_path / "base.gguf")
    with_lora = llama_logits(llama(base_gguf, lora), ids)
    assert_close(with_lora, want, "f16")
    plain = llama_logits(llama(base_gguf), ids)
    assert np.abs(plain - want).max() > 10 * np.abs(with_lora - want).max()  # it applied
