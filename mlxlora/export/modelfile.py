"""An Ollama Modelfile (FROM, TEMPLATE, PARAMETER stop, SYSTEM, ADAPTER) and Ollama model names.

Quoting follows Ollama's own parser (parser/parser.go), which has no escapes: a value ends at
the first line break where the text read so far is a complete value, so a one-line value is
written `"..."` and a multi-line one `\"\"\"...\"\"\"`; the only text that cannot be quoted is a
`\"\"\"` followed by a line break inside a multi-line value. The parser also silently drops
characters that are not printable (controls, format characters, non-ASCII spaces such as the
ideographic space U+3000), so a SYSTEM text holding one is refused rather than changed behind
the user's back (the TEMPLATE escapes them, see templates.go_string).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from mlxlora.errors import ExportError
from mlxlora.export.templates import ChatFormat

MAX_NAME = 128  # Ollama's limit on a whole name (types/model/name.go MaxNamePartLen)
UNQUOTABLE = re.compile(r'"""[ \t]*[\r\n]')


@dataclass(frozen=True)
class Modelfile:
    source: str  # FROM: a GGUF path relative to the Modelfile, or an Ollama model name
    chat: ChatFormat | None  # None: no TEMPLATE, the FROM model's own applies
    system: str | None = None
    adapter: str | None = None  # ADAPTER: a GGUF LoRA adapter path

    def render(self) -> str:
        """The Modelfile's text."""
        lines = [f"FROM {quote(self.source, 'FROM')}"]
        if self.adapter:
            lines.append(f"ADAPTER {quote(self.adapter, 'ADAPTER')}")
        if self.chat:
            lines.append(f"TEMPLATE {quote(self.chat.template, 'TEMPLATE')}")
            lines += [f"PARAMETER stop {quote(stop, 'stop')}" for stop in self.chat.stops]
        if self.system:
            lines.append(f"SYSTEM {quote(self.system, 'SYSTEM')}")
        return "\n".join(lines) + "\n"


def _character_name(c: str) -> str:
    return unicodedata.name(c, "").lower() or "a control character"


def quote(value: str, field: str) -> str:
    """`value` written so that Ollama's Modelfile parser reads it back unchanged."""
    dropped = sorted({c for c in value if not _kept_by_ollama(c)})
    if dropped:
        shown = ", ".join(f"U+{ord(c):04X} ({_character_name(c)})" for c in dropped)
        # a full-width space, typed with a Japanese IME, reads as a space: say which to type
        fix = "type plain spaces instead" if all(c.isspace() for c in dropped) else "remove them"
        raise ExportError(f"{field}: Ollama's Modelfile parser would drop {shown}; {fix}")
    if "\n" not in value and "\r" not in value and not value.startswith('""'):
        return f'"{value}"'
    if UNQUOTABLE.search(value):
        raise ExportError(f'{field}: a Modelfile cannot hold \'"""\' followed by a line break')
    return f'"""{value}"""'


def _kept_by_ollama(char: str) -> bool:
    # Go's strconv.IsPrint (letters, marks, numbers, punctuation, symbols, ASCII space),
    # plus the tab and line breaks the parser keeps inside a quoted value.
    return char in " \t\n\r" or unicodedata.category(char)[0] in "LMNPS"


def ollama_model_name(name: str) -> str:
    """A name `ollama create` accepts, made from a user's name: `医療モデル v1` becomes
    `v1-<hash>`, `My "Best" Model:Latest` becomes `my-best-model:latest`.

    Ollama names are `[namespace/]model[:tag]`, each part of ASCII letters, digits, `_`, `-`
    and `.` (no `..`, no dot in the namespace), 128 bytes at most. We lowercase (Ollama
    compares names ignoring case) and turn every other run of characters into one `-`; when
    letters of another script had to go, a short hash of the original model part follows, so
    that two Japanese names never land on the same Ollama model.
    """
    text = unicodedata.normalize("NFKC", name).strip()  # full-width ASCII -> ASCII
    path, _, tag = text.partition(":")
    parts = path.split("/")
    if not path or ":" in tag or len(parts) > 2 or not all(p.strip() for p in parts):
        raise ExportError(
            f"Ollama model name {name!r}: expected NAME, NAME:TAG or NAMESPACE/NAME[:TAG]"
        )
    model = _model_part(parts[-1])
    kept = [_ascii_part(p, dots=False) for p in parts[:-1]] + [model]
    if tag:
        kept[-1] += ":" + _ascii_part(tag, dots=True)
    if not all(kept) or kept[-1].endswith(":"):
        raise ExportError(f"Ollama model name {name!r}: a part has no letter or digit to keep")
    result = "/".join(kept)
    if len(result) > MAX_NAME:
        raise ExportError(f"Ollama model name {name!r}: longer than {MAX_NAME} characters")
    return result


def name_is_hashed(name: str) -> bool:
    """Whether ollama_model_name(name) puts a hash in (letters of another script had to go)."""
    return _other_script(unicodedata.normalize("NFKC", name).strip().partition(":")[0])


def _other_script(part: str) -> bool:
    return any(ord(c) > 127 and unicodedata.category(c)[0] in "LN" for c in part.split("/")[-1])


def _model_part(part: str) -> str:
    ascii_part = _ascii_part(part, dots=True)
    if not _other_script(part):
        return ascii_part
    digest = hashlib.sha256(part.encode("utf-8")).hexdigest()[:6]
    return f"{ascii_part or 'mlxlora'}-{digest}"


def _ascii_part(part: str, dots: bool) -> str:
    """One name part in Ollama's alphabet; empty when nothing of it survives."""
    allowed = r"a-z0-9_\-." if dots else r"a-z0-9_\-"
    cleaned = re.sub(rf"[^{allowed}]+", "-", part.lower())
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    return re.sub(r"-{2,}", "-", cleaned).strip("-._")
