"""Validation of dataset records against their format (see formats' module docstring).

Each problem is one line naming the field (``field "output": expected a string, got 3``);
`validate` prefixes the file and the record and raises it as a `DataError`.
"""

from __future__ import annotations

from typing import Any

from mlxlora.data.formats import FORMATS, ROLES, _kind_of, _show, where
from mlxlora.errors import DataError


def _text_field(record: dict, key: str, required: bool = True) -> str | None:
    """Problem with record[key] as a text field, or None when fine."""
    if key not in record:
        if not required:
            return None
        have = ", ".join(f'"{k}"' for k in record) or "none"
        return f'field "{key}": missing (record has {have})'
    value = record[key]
    if value is None and not required:
        return None
    if not isinstance(value, str):
        return f'field "{key}": expected a string, got {_show(value)}'
    if required and not value.strip():
        return f'field "{key}": is empty' if not value else f'field "{key}": is only whitespace'
    return None


def _chat_problem(record: dict) -> str | None:
    if "messages" not in record:
        have = ", ".join(f'"{k}"' for k in record) or "none"
        return f'field "messages": missing (record has {have})'
    messages = record["messages"]
    if not isinstance(messages, list):
        return f'field "messages": expected a list of messages, got {_show(messages)}'
    if not messages:
        return 'field "messages": is empty'
    for j, m in enumerate(messages):
        at = f"messages[{j}]"
        if not isinstance(m, dict):
            return f'field "{at}": expected an object with "role" and "content", got {_show(m)}'
        if "role" not in m:
            return f'field "{at}.role": missing'
        role = m["role"]
        if role not in ROLES:
            return (
                f'field "{at}.role": unknown role {_show(role)} '
                "(expected system, user or assistant)"
            )
        if "content" not in m:
            return f'field "{at}.content": missing'
        content = m["content"]
        if not isinstance(content, str):
            return f'field "{at}.content": expected a string, got {_show(content)}'
        if not content.strip():
            return (
                f'field "{at}.content": is empty'
                if not content
                else (f'field "{at}.content": is only whitespace')
            )
    if not any(m["role"] == "user" for m in messages):
        return 'field "messages": has no user message'
    if messages[-1]["role"] != "assistant":
        return (
            f'field "messages": must end with an assistant message '
            f"(the last one is {messages[-1]['role']})"
        )
    return None


def record_problem(record: Any, kind: str) -> str | None:
    """The first problem with one record as `kind` (without the file/record prefix), or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {_kind_of(record)}"
    if kind == "instruction":
        return (
            _text_field(record, "instruction")
            or _text_field(record, "input", required=False)
            or _text_field(record, "output")
        )
    if kind == "chat":
        return _chat_problem(record)
    if kind == "completion":
        return _text_field(record, "prompt") or _text_field(record, "completion")
    if kind == "text":
        return _text_field(record, "text")
    raise DataError(f"unknown dataset type {kind!r} (expected {', '.join(FORMATS)})")


def check_kind(kind: str, source: str = "data") -> str:
    if kind not in FORMATS:
        raise DataError(f"{source}: unknown dataset type {kind!r} (expected {', '.join(FORMATS)})")
    return kind


def validate(records: list[dict], kind: str, source: str = "data") -> None:
    """Check every record as `kind`; the first problem raises DataError (file, record, field)."""
    check_kind(kind, source)
    if not records:
        raise DataError(f"{source}: no records")
    for i, record in enumerate(records):
        problem = record_problem(record, kind)
        if problem:
            raise DataError(f"{source}: {where(records, i)}: {problem}")
