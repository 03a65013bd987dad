"""Dataset files and record formats: reading, format detection, normalization (validation of
records: data/validation.py).

Files are a JSON array of objects, or JSON Lines (one object per line, blank lines allowed).
A file holding a single JSON object is read as one record. Files must be UTF-8 (a leading BOM
is accepted).

Every problem is a `DataError` whose message is one line naming the file, the record and the
field, e.g. ``data.jsonl: line 7: field "output": expected a string, got 3``. Records of a JSON
Lines file are named by their line number (``line 7``); records of a JSON array by their
position, counting from 1 (``record 7`` is the seventh record, ``data[6]`` / ``jq '.[6]'``).
Internal indices are 0-based; every number a user reads counts from 1.

Formats (extra keys in a record are allowed and ignored):

- ``instruction``: ``instruction`` (str), optional ``input`` (str or null), ``output`` (str)
- ``chat``: ``messages``: list of ``{"role": "system"|"user"|"assistant", "content": str}``,
  with at least one user message, ending with an assistant message
- ``completion``: ``prompt`` (str), ``completion`` (str)
- ``text``: ``text`` (str)

`normalize` turns any record into what the training code consumes: ``{"messages": [...]}``
(the loss is on the last assistant message) or ``{"text": str}``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mlxlora.errors import DataError

FORMATS = ("instruction", "chat", "completion", "text")
ROLES = ("system", "user", "assistant")

# The keys that identify each format; detection looks for these.
_SIGNATURE = {
    "instruction": ("instruction", "output"),
    "chat": ("messages",),
    "completion": ("prompt", "completion"),
    "text": ("text",),
}
_EXPECTED_KEYS = "instruction/input/output, messages, prompt/completion or text"


class Records(list):
    """A list of record dicts that remembers where each record came from (`line 7`, `record 3`)."""

    def __init__(self, items=(), locations: list[str] | None = None):
        super().__init__(items)
        self.locations = list(locations) if locations is not None else None


def where(records: list, index: int) -> str:
    """How messages name the record at 0-based `index`: its JSONL line, else `record index+1`."""
    locations = getattr(records, "locations", None)
    if locations is not None and index < len(locations):
        return locations[index]
    return f"record {index + 1}"


def _show(value: Any, limit: int = 40) -> str:
    """A short JSON rendering of a bad value for an error message."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    # json keeps the last of two equal keys: the first value was dropped without a word
    record: dict = {}
    for key, value in pairs:
        if key in record:
            raise ValueError(f'key "{key}" is given twice in one object')
        record[key] = value
    return record


def _loads(text: str) -> Any:
    try:
        return json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_refuse_duplicate_keys
        )
    except RecursionError:  # json's decoder recurses once per [ or {
        raise ValueError("arrays or objects nested too deeply") from None


# --- reading files --------------------------------------------------------------------------


def read_text(path: str | Path) -> str:
    """The file's text as strict UTF-8; DataError naming the line and byte offset otherwise."""
    p = Path(path)
    source = str(path)
    if not p.exists():
        raise DataError(f"{source}: file not found")
    if p.is_dir():
        raise DataError(f"{source}: is a directory, expected a .json or .jsonl file")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        return decode_utf8(raw)
    except ValueError as exc:
        raise DataError(f"{source}: {exc}") from None


def decode_utf8(raw: bytes) -> str:
    """A file's bytes as strict UTF-8 text, without a byte order mark; ValueError naming the
    line and byte offset (or that the file is UTF-16) and what to do otherwise."""
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise ValueError("the file is UTF-16; save it as UTF-8") from None
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start : exc.start + 1].hex()
        encoding = (
            ": it looks like Shift_JIS (cp932, as Windows tools save Japanese)"
            if _looks_like_shift_jis(raw)
            else ""
        )
        raise ValueError(
            f"line {line}: not valid UTF-8 (byte 0x{bad} at offset {exc.start}){encoding}; "
            "save the file as UTF-8"
        ) from None


def _looks_like_shift_jis(raw: bytes) -> bool:
    """The bytes read as cp932 and hold kana: Japanese text in Shift_JIS (a Latin-1 é before
    a letter can read as a kanji, never as kana)."""
    try:
        text = raw.decode("cp932")
    except UnicodeDecodeError:
        return False
    return any("\u3041" <= c <= "\u30ff" for c in text)


def load_records(path: str | Path) -> Records:
    """Read a JSON array file or a JSON Lines file into a list of dicts (see module docstring)."""
    source = str(path)
    text = read_text(path)
    records = _parse_records(text, source)
    if _SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogates(records, source)
    return records


def _parse_records(text: str, source: str) -> Records:
    if not text.strip():
        raise DataError(f"{source}: file is empty (expected a JSON array or JSON Lines)")
    try:
        whole = _loads(text)
    except ValueError as exc:
        whole = exc
    if not isinstance(whole, Exception):
        if isinstance(whole, dict):  # one object: a one-line JSONL file or a lone JSON object
            body = text.strip()
            first = text[: text.index(body[0])].count("\n") + 1
            return Records([whole], [f"line {first}" if "\n" not in body else "record 1"])
        if not isinstance(whole, list):
            raise DataError(
                f"{source}: top-level JSON is {_kind_of(whole)}; expected an array of objects "
                "or JSON Lines (one object per line)"
            )
        if not whole:
            raise DataError(f"{source}: the JSON array is empty (no records)")
        for i, item in enumerate(whole, start=1):
            if not isinstance(item, dict):
                raise DataError(
                    f"{source}: record {i}: expected a JSON object, got {_kind_of(item)} "
                    f"{_show(item)}"
                )
        return Records(whole, [f"record {i}" for i in range(1, len(whole) + 1)])
    body = text.lstrip()
    if body[0] not in "{[":
        line = text[: len(text) - len(body)].count("\n") + 1
        raise DataError(f"{source}: line {line}: {_not_json(source)}")
    extra = isinstance(whole, json.JSONDecodeError) and whole.msg == "Extra data"
    if body.startswith("[") and not extra:  # meant as one JSON array, but it does not parse
        exc = whole
        if isinstance(exc, json.JSONDecodeError):
            raise DataError(
                f"{source}: line {exc.lineno}, column {exc.colno}: "
                f"malformed JSON: {_decode_problem(exc)}"
            ) from None
        raise DataError(f"{source}: malformed JSON: {exc}") from None
    return _load_jsonl(text, source)


# json reads the escape of half a UTF-16 surrogate pair ("\\ud800") into a str that is no text:
# it cannot be written as UTF-8, so storing or tokenizing the record would fail later.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(records: Records, source: str) -> None:
    for i, record in enumerate(records):
        found = _surrogate_in(record, "")
        if found:
            field, char = found
            raise DataError(
                f'{source}: {where(records, i)}: field "{field}": holds \\u{ord(char):04x}, '
                "half of a UTF-16 surrogate pair, not a character; remove or complete the escape"
            )


def _surrogate_in(value: Any, path: str) -> tuple[str, str] | None:
    """(field path, character) of the first lone surrogate in a key or string of `value`."""
    if isinstance(value, str):
        bad = [c for c in value if "\ud800" <= c <= "\udfff"]
        return (path, bad[0]) if bad else None
    if isinstance(value, list):
        items = ((f"{path}[{j}]", item) for j, item in enumerate(value))
    elif isinstance(value, dict):
        items = ((f"{path}.{key}" if path else key, item) for key, item in value.items())
    else:
        return None
    for inner, item in items:
        if found := _surrogate_in(inner, inner) or _surrogate_in(item, inner):  # key, value
            return found
    return None


def _decode_problem(exc: json.JSONDecodeError) -> str:
    # json says "Invalid control character at", the position being appended by str(exc) only
    if exc.msg == "Invalid control character at":
        return f"control character U+{ord(exc.doc[exc.pos]):04X} inside a string (escape it)"
    return exc.msg


def _not_json(source: str) -> str:
    suffix = Path(source).suffix.lower()
    if suffix in (".csv", ".tsv", ".parquet", ".xlsx"):
        return f"{suffix[1:].upper()} is not read here; convert the file to JSON Lines"
    return "not JSON; expected a JSON array of objects or JSON Lines (one object per line)"


def _load_jsonl(text: str, source: str) -> Records:
    records: list[dict] = []
    locations: list[str] = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = _loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{source}: line {n}, column {exc.colno}: malformed JSON: {_decode_problem(exc)}"
            ) from None
        except ValueError as exc:
            raise DataError(f"{source}: line {n}: malformed JSON: {exc}") from None
        if not isinstance(value, dict):
            raise DataError(
                f"{source}: line {n}: expected a JSON object, got {_kind_of(value)} {_show(value)}"
            )
        records.append(value)
        locations.append(f"line {n}")
    return Records(records, locations)


# --- detection --------------------------------------------------------------------------------


def _candidates(record: dict) -> list[str]:
    """Formats whose identifying keys appear in the record (any one of them is enough)."""
    return [kind for kind, keys in _SIGNATURE.items() if any(k in record for k in keys)]


def detect_format(records: list[dict], source: str = "data", sample: int = 10) -> str:
    """The format of `records`, judged by the keys of the first `sample` records.

    DataError (naming the record) when the keys fit no format, fit several, or the first records
    disagree. Pass an explicit type to skip detection.
    """
    if not records:
        raise DataError(f"{source}: no records")
    found: str | None = None
    first_at = ""
    for i, record in enumerate(records[:sample]):
        at = where(records, i)
        if not isinstance(record, dict):
            raise DataError(f"{source}: {at}: expected a JSON object, got {_kind_of(record)}")
        kinds = _candidates(record)
        keys = ", ".join(f'"{k}"' for k in record) or "no keys"
        if not kinds:
            raise DataError(
                f"{source}: {at}: cannot tell the format from keys {keys}; expected "
                f"{_EXPECTED_KEYS} (or pass --type)"
            )
        if len(kinds) > 1:
            raise DataError(
                f"{source}: {at}: ambiguous format: keys {keys} fit {' and '.join(kinds)}; "
                f"pass --type {'|'.join(kinds)}"
            )
        if found is None:
            found, first_at = kinds[0], at
        elif kinds[0] != found:
            raise DataError(
                f"{source}: {at}: looks like {kinds[0]} but {first_at} looks like {found}; "
                "all records must have one format"
            )
    assert found is not None
    return found


# --- normalization --------------------------------------------------------------------------


def normalize(record: dict, kind: str) -> dict:
    """`{"messages": [{"role", "content"}, ...]}`, or `{"text": str}` for text records.

    instruction -> user: instruction (+ "\\n\\n" + input when input is non-empty),
    assistant: output.
    completion -> user: prompt, assistant: completion. chat keeps only role and content.
    """
    if kind == "instruction":
        user = record["instruction"]
        extra = record.get("input") or ""
        if extra.strip():
            user = f"{user}\n\n{extra}"
        return {
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": record["output"]},
            ]
        }
    if kind == "chat":
        return {
            "messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        }
    if kind == "completion":
        return {
            "messages": [
                {"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record["completion"]},
            ]
        }
    if kind == "text":
        return {"text": record["text"]}
    raise DataError(f"unknown dataset type {kind!r} (expected {', '.join(FORMATS)})")


def full_text(normalized: dict) -> str:
    """All the text of a normalized record: message contents joined with "\\n", or the text."""
    if "text" in normalized:
        return normalized["text"]
    return "\n".join(m["content"] for m in normalized["messages"])


def answer_text(normalized: dict) -> str:
    """What the model learns to write: the last assistant message, or the whole text."""
    if "text" in normalized:
        return normalized["text"]
    for m in reversed(normalized["messages"]):
        if m["role"] == "assistant":
            return m["content"]
    return ""
