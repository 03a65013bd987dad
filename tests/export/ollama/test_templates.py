"""The TEMPLATE written for Ollama, rendered by Go's text/template as Ollama renders it, equals
the model's own Jinja chat template rendered by its HF tokenizer (less the BOS llama.cpp adds),
for each family, with and without a system prompt, one turn and several."""

from __future__ import annotations

import json
import shutil

import chat_templates as upstream
import pytest

from mlxlora.errors import ExportError
from mlxlora.export import templates

SYSTEM = {"role": "system", "content": "あなたは医療の専門家です。Answer briefly."}
CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is LoRA?"}],
    "system-user": [SYSTEM, {"role": "user", "content": "頭痛の原因は？"}],
    "user-assistant-user": [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": 'Say "{{ .Prompt }}" literally.'},
    ],
    "system-user-assistant-user": [
        SYSTEM,
        {"role": "user", "content": "Line one\nline two"},
        {"role": "assistant", "content": "答え"},
        {"role": "user", "content": "More?"},
    ],
    "user-assistant (history, no generation prompt)": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ],
}
# family name, template, bos, eos, whether the template accepts a system message
FAMILIES = {
    "smollm2": ("chatml", upstream.SMOLLM2, "<|im_start|>", "<|im_end|>", True),
    "qwen2.5": ("chatml", upstream.QWEN25, "", "<|im_end|>", True),
    "llama3": ("llama3", upstream.LLAMA3, "<|begin_of_text|>", "<|eot_id|>", True),
    "llama3.1": ("llama3", upstream.LLAMA31, "<|begin_of_text|>", "<|eot_id|>", True),
    "llama2": ("llama2", upstream.LLAMA2, "<s>", "</s>", True),
    "mistral": ("mistral", upstream.MISTRAL, "<s>", "</s>", False),
    "gemma": ("gemma", upstream.GEMMA, "<bos>", "<eos>", False),
    "gemma3": ("gemma", upstream.GEMMA3, "<bos>", "<eos>", True),
}


def tokenizer_dir(tmp_path, built_tiny, template: str, bos: str, eos: str):
    """A tokenizer directory holding `template` (builtin:tiny's vocabulary)."""
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(built_tiny / "tokenizer.json", folder)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": template,
        "bos_token": bos,
        "eos_token": eos,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")
    return folder


def fmt_source(folder) -> str:
    return templates.read_chat_template(folder)[0]


def hf_render(folder, messages) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    open_turn = messages[-1]["role"] != "assistant"
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=open_turn)


def assert_same(go_render, folder, fmt, bos, name, messages):
    expected = hf_render(folder, messages)
    if "bos_token" in fmt_source(folder):  # llama.cpp adds that BOS, not the TEMPLATE
        expected = expected.removeprefix(bos)
    assert go_render(fmt.template, messages) == expected, name


@pytest.mark.parametrize("model", FAMILIES)
def test_go_rendered_template_equals_the_jinja_template(model, go_render, tmp_path, built_tiny):
    family, template, bos, eos, takes_system = FAMILIES[model]
    folder = tokenizer_dir(tmp_path, built_tiny, template, bos, eos)
    fmt = templates.chat_format(folder)
    assert fmt.family == family
    assert eos in fmt.stops
    for name, messages in CONVERSATIONS.items():
        if takes_system or messages[0]["role"] != "system":
            assert_same(go_render, folder, fmt, bos, name, messages)


def test_builtin_tiny_is_chatml_without_a_default_system(go_render, built_tiny):
    fmt = templates.chat_format(built_tiny)
    assert fmt.family == "chatml"
    assert "{{ else }}" not in fmt.template  # no default system prompt to fall back on
    for name, messages in CONVERSATIONS.items():
        assert_same(go_render, built_tiny, fmt, "", name, messages)


def test_system_turns_are_read_from_the_template():
    smollm2 = templates.system_frame(upstream.SMOLLM2, "chatml", "", "")
    assert smollm2 == templates.SystemFrame(
        default="You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    assert templates.system_frame(upstream.QWEN25, "chatml", "", "").default.startswith("You are")
    assert templates.system_frame(upstream.LLAMA3, "llama3", "", "") == templates.SystemFrame()
    dated = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    llama31 = templates.system_frame(upstream.LLAMA31, "llama3", "", "")
    assert llama31 == templates.SystemFrame(prefix=dated, default=dated)


def test_system_text_that_looks_like_go_template_syntax_stays_literal(go_render):
    template = upstream.SMOLLM2.replace("named SmolLM", 'named {{ "SmolLM" }}\u3000"x"')
    fmt = templates.translate(template)
    out = go_render(fmt.template, [{"role": "user", "content": "hi"}])
    assert 'named {{ "SmolLM" }}\u3000"x", trained' in out


def test_an_unknown_template_is_refused_naming_the_supported_families():
    with pytest.raises(ExportError, match="supported: ChatML"):
        templates.translate("{% for m in messages %}### {{ m['content'] }}{% endfor %}")


def test_a_model_without_a_chat_template_gets_a_plain_prompt(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}", "utf-8")
    fmt = templates.chat_format(tmp_path)
    assert (fmt.family, fmt.template, fmt.stops) == ("plain", "{{ .Prompt }}", ())


def test_a_template_that_fails_to_render_is_one_line():
    broken = "<|im_start|>{% for m in messages %}{{ m.content + 1 }}{% endfor %}"
    with pytest.raises(ExportError, match="fails to render one user message"):
        templates.translate(broken)
