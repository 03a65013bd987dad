"""A model's Jinja chat template, translated into the Go `text/template` Ollama renders.

Ollama does not run Jinja: a Modelfile's TEMPLATE is Go template text, executed with `.System`
(every system message, joined), `.Messages` (each with `.Role` and `.Content`) and `.Response`.
No library translates one language into the other, and a general Jinja-to-Go compiler would be
a project of its own, so we recognise the template's family from its own marker tokens and
write that family's Go template by hand (ChatML, Llama 3, Llama 2, Mistral, Gemma). What varies
inside a family, such as SmolLM2's or Qwen's default system prompt, is read by rendering the
model's template once with jinja2 (as transformers does) and looking at what it wrote.

The BOS token is not part of a TEMPLATE: llama.cpp adds it when it tokenizes the prompt (the
GGUF's `tokenizer.ggml.add_bos_token`), so a rendered TEMPLATE equals the Jinja text without
its leading BOS. An unknown template is refused rather than guessed: a fine-tuned model served
in the wrong format answers badly or never stops, which is the failure this export exists to
prevent. A model with no chat template at all (trained on raw text) gets `{{ .Prompt }}`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from jinja2.exceptions import TemplateError

from mlxlora.errors import ExportError

PLAIN_TEMPLATE = "{{ .Prompt }}"
PROBE = "\x00probe\x00"  # a user message no template writes by itself
SYSTEM_PROBE = "\x00system probe\x00"
SUPPORTED = "ChatML (Qwen2/2.5/3, SmolLM2, builtin:tiny), Llama 3, Llama 2, Mistral [INST], Gemma"

# In a `range .Messages`, whether this message is the last one (Ollama's own idiom).
LAST = "{{ $last := eq (len (slice $.Messages $i)) 1 }}"


@dataclass(frozen=True)
class ChatFormat:
    """How a model's conversations look, in Ollama's terms."""

    family: str  # chatml, llama3, llama2, mistral, gemma, plain
    template: str  # Go text/template for a Modelfile TEMPLATE
    stops: tuple[str, ...]  # PARAMETER stop values: end-of-turn and turn-opening tokens


def read_chat_template(model_dir: Path) -> tuple[str | None, dict]:
    """(the Jinja chat template or None, tokenizer_config.json) of an HF model directory."""
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text("utf-8")) if config_path.is_file() else {}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    jinja_file = model_dir / "chat_template.jinja"
    if not template and jinja_file.is_file():
        template = jinja_file.read_text("utf-8")
    return template or None, config


def special_token(config: dict, key: str) -> str:
    """A special token's text from tokenizer_config.json (a string or {"content": ...})."""
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def family_of(template: str) -> str | None:
    """The family a Jinja chat template belongs to, from the marker tokens it writes."""
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "<start_of_turn>" in template:
        return "gemma"
    if "[INST]" in template:
        return "llama2" if "<<SYS>>" in template else "mistral"
    return None


def chat_format(model_dir: Path) -> ChatFormat:
    """The Ollama chat format of the model in `model_dir` (refuses an unknown template)."""
    template, config = read_chat_template(model_dir)
    if template is None:
        return ChatFormat("plain", PLAIN_TEMPLATE, ())
    bos, eos = special_token(config, "bos_token"), special_token(config, "eos_token")
    return translate(template, bos, eos)


def translate(template: str, bos: str = "", eos: str = "") -> ChatFormat:
    """The Go template and stop tokens equivalent to the Jinja `template`."""
    family = family_of(template)
    if family is None:
        raise ExportError(
            "the model's chat template is of a family mlxlora cannot translate into an Ollama "
            f"TEMPLATE (supported: {SUPPORTED}); write the Modelfile TEMPLATE by hand"
        )
    build, stops = FAMILIES[family]
    if family in ("chatml", "llama3"):
        go = build(system_frame(template, family, bos, eos))
    else:
        go = build()
    extra = (eos,) if eos and eos not in stops else ()
    return ChatFormat(family, go, stops + extra)


# --- the families ------------------------------------------------------------------------


def _chatml(frame: SystemFrame) -> str:
    return (
        _system_block("<|im_start|>system\n", "<|im_end|>\n", frame)
        + "{{ range $i, $_ := .Messages }}"
        + LAST
        + '{{ if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
        + '{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant\n{{ end }}'
        + "{{ end }}"
    )


def _llama3(frame: SystemFrame) -> str:
    header = "<|start_header_id|>{role}<|end_header_id|>\n\n"
    return (
        _system_block(header.format(role="system"), "<|eot_id|>", frame)
        + "{{ range $i, $_ := .Messages }}"
        + LAST
        + '{{ if ne .Role "system" }}'
        + header.format(role="{{ .Role }}")
        + "{{ .Content }}<|eot_id|>{{ end }}"
        + '{{ if and $last (ne .Role "assistant") }}'
        + header.format(role="assistant")
        + "{{ end }}{{ end }}"
    )


def _llama2() -> str:
    # The system prompt opens the first user turn; every later turn starts with a literal
    # `<s>` (the first one is the BOS llama.cpp adds).
    return (
        "{{ $first := true }}{{ range .Messages }}"
        '{{ if eq .Role "user" }}{{ if not $first }}<s>{{ end }}[INST] '
        "{{ if and $first $.System }}<<SYS>>\n{{ $.System }}\n<</SYS>>\n\n{{ end }}"
        "{{ .Content }} [/INST]{{ $first = false }}"
        '{{ else if eq .Role "assistant" }} {{ .Content }} </s>{{ $first = false }}'
        "{{ end }}{{ end }}"
    )


def _mistral() -> str:
    # Mistral's template has no system role; like its later versions we put the system
    # prompt in front of the first user message.
    return (
        "{{ $first := true }}{{ range .Messages }}"
        '{{ if eq .Role "user" }}[INST] {{ if and $first $.System }}{{ $.System }}\n\n{{ end }}'
        "{{ .Content }} [/INST]{{ $first = false }}"
        '{{ else if eq .Role "assistant" }}{{ .Content }}</s>{{ end }}{{ end }}'
    )


def _gemma() -> str:
    # Gemma has no system turn; Gemma 3's template opens the first user turn with it.
    return (
        "{{ $first := true }}{{ range $i, $_ := .Messages }}"
        + LAST
        + '{{ if eq .Role "user" }}<start_of_turn>user\n'
        "{{ if and $first $.System }}{{ $.System }}\n\n{{ end }}"
        "{{ .Content }}<end_of_turn>\n{{ $first = false }}"
        '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n'
        "{{ end }}"
        '{{ if and $last (ne .Role "assistant") }}<start_of_turn>model\n{{ end }}{{ end }}'
    )


FAMILIES = {
    "chatml": (_chatml, ("<|im_end|>", "<|im_start|>")),
    "llama3": (_llama3, ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")),
    "llama2": (_llama2, ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")),
    "mistral": (_mistral, ("[INST]", "[/INST]")),
    "gemma": (_gemma, ("<end_of_turn>", "<start_of_turn>")),
}


@dataclass(frozen=True)
class SystemFrame:
    """What a template writes around the system text of a system turn (Llama 3.1 puts its
    knowledge-date lines in front), and the turn's text when the conversation has none."""

    prefix: str = ""
    suffix: str = ""
    default: str | None = None  # None: no system turn without a system message


def _system_block(opening: str, closing: str, frame: SystemFrame) -> str:
    """The system turn: the conversation's system text, else the template's default, if any."""
    system = go_string(frame.prefix) + "{{ .System }}" + go_string(frame.suffix)
    block = "{{ if .System }}" + opening + system + closing
    if frame.default is not None:
        block += "{{ else }}" + opening + go_string(frame.default) + closing
    return block + "{{ end }}"


def system_frame(template: str, family: str, bos: str, eos: str) -> SystemFrame:
    """The template's system turn, read from two renderings: with a probe system message
    and with none."""
    opening, closing = {
        "chatml": ("<|im_start|>system\n", "<|im_end|>"),
        "llama3": ("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
    }[family]
    turn = re.compile(re.escape(opening) + "(.*?)" + re.escape(closing), re.S)
    user = {"role": "user", "content": PROBE}
    try:
        alone = render_jinja(template, [user], True, bos, eos).split(PROBE, 1)[0]
    except Exception as exc:  # the template is the model's own code: any error is its own
        raise ExportError(
            f"the model's chat template fails to render one user message: {exc}"
        ) from None
    found = turn.search(alone)
    system = {"role": "system", "content": SYSTEM_PROBE}
    try:
        with_system = render_jinja(template, [system, user], True, bos, eos)
    except TemplateError:  # the template refuses a system message: Ollama's .System then
        with_system = ""  # goes into a plain system turn
    framed = next(
        (m.group(1) for m in turn.finditer(with_system) if SYSTEM_PROBE in m.group(1)), None
    )
    prefix, _, suffix = (framed or SYSTEM_PROBE).partition(SYSTEM_PROBE)
    return SystemFrame(prefix, suffix, found.group(1) if found else None)


def render_jinja(
    template: str, messages: list[dict], add_generation_prompt: bool, bos: str = "", eos: str = ""
) -> str:
    """`template` rendered the way transformers' apply_chat_template renders it."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)  # Llama 3.2's date
    return env.from_string(template).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos,
        eos_token=eos,
    )


def go_string(text: str) -> str:
    """`text` as a Go template action printing it literally, whatever it holds (`{{`, quotes,
    characters a Modelfile would drop); nothing for no text."""
    if not text:
        return ""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == " " or unicodedata.category(char)[0] in "LMNPS":
            out.append(char)
        else:  # control, format and non-ASCII space characters: Ollama's parser drops them
            out.append(f"\\U{ord(char):08x}")
    return '{{ "' + "".join(out) + '" }}'
