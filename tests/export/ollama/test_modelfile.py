"""The Modelfile's text and quoting (by the rules of Ollama's parser) and Ollama model names."""

from __future__ import annotations

import re

import pytest

from mlxlora.errors import ExportError
from mlxlora.export.modelfile import Modelfile, ollama_model_name, quote
from mlxlora.export.templates import ChatFormat

CHAT = ChatFormat("chatml", "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ end }}",
                  ("<|im_end|>", "<|im_start|>"))  # fmt: skip


def test_a_full_modelfile():
    text = Modelfile("./model.gguf", CHAT, system="あなたは\n医者です。").render()
    assert text == (
        'FROM "./model.gguf"\n'
        'TEMPLATE """{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ end }}"""\n'
        'PARAMETER stop "<|im_end|>"\n'
        'PARAMETER stop "<|im_start|>"\n'
        'SYSTEM """あなたは\n医者です。"""\n'
    )


def test_an_adapter_modelfile_names_the_ollama_base():
    text = Modelfile("qwen2.5:0.5b", CHAT, adapter="./adapter.gguf").render()
    assert text.splitlines()[:2] == ['FROM "qwen2.5:0.5b"', 'ADAPTER "./adapter.gguf"']
    assert "SYSTEM" not in text


@pytest.mark.parametrize(
    "value, written",
    [
        ('say "hi" to them', '"say "hi" to them"'),  # the parser has no escapes: none needed
        ("  padded  ", '"  padded  "'),
        ('a\n"""quoted"""', '"""a\n"""quoted""""""'),  # no line break after a """
        ('ends\nwith"""', '"""ends\nwith""""""'),  # the parser strips exactly three
        ('""starts with quotes', '"""""starts with quotes"""'),
    ],
)
def test_quoting(value, written):
    assert quote(value, "SYSTEM") == written


@pytest.mark.parametrize(
    "value, problem",
    [
        ('one\n"""\ntwo', "cannot hold"),
        ('"""\nat the start', "cannot hold"),
        ("全角\u3000スペース", "U+3000 (ideographic space); type plain spaces instead"),
        ("bell\x07", "U+0007 (a control character); remove them"),
    ],
)
def test_text_a_modelfile_cannot_hold_is_refused(value, problem):
    with pytest.raises(ExportError, match=re.escape(problem)):
        quote(value, "SYSTEM")


@pytest.mark.parametrize(
    "name, valid",
    [
        ("my-model", "my-model"),
        ('My "Best" Model:Latest', "my-best-model:latest"),
        ("user/Some Model:v1.0", "user/some-model:v1.0"),
        ("ｍｙ－ｍｏｄｅｌ", "my-model"),  # full-width letters typed with a Japanese IME
        ("qwen2.5:0.5b", "qwen2.5:0.5b"),
        ("a..b", "a.b"),
    ],
)
def test_names_ollama_accepts(name, valid):
    assert ollama_model_name(name) == valid


def test_japanese_names_keep_what_they_can_and_stay_distinct():
    first, second = ollama_model_name("医療専門知識モデル_v1"), ollama_model_name("法律モデル_v1")
    assert first.startswith("v1-") and second.startswith("v1-") and first != second
    assert ollama_model_name("データ").startswith("mlxlora-")
    assert ollama_model_name("医療専門知識モデル_v1") == first  # the same name every time


@pytest.mark.parametrize("name", ["", "   ", "a/b/c", ":tag", "a:b:c", "!!!", "x:!!", "x" * 129])
def test_names_that_cannot_be_made_valid_are_refused(name):
    with pytest.raises(ExportError, match="Ollama model name"):
        ollama_model_name(name)
