"""Building typed dataclasses (mlxlora.config's sections) from plain YAML data.

Each value is coerced to its field's type; a value that cannot be is recorded as a problem
naming its key and keeps the field's default, so that every problem is reported at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

# Numbers in words a user reads (`epochs: two` said "expected float", Python's word)
_NUMBER_WORDS = {int: "a whole number", float: "a number"}


def _type_name(tp: Any) -> str:
    return _NUMBER_WORDS.get(tp) or getattr(tp, "__name__", str(tp).replace("typing.", ""))


# What _coerce returns for a value it could not use; the field keeps its default.
_INVALID = object()

# How to write a value whose wrong type needs more than "expected str": YAML reads
# `memory_budget: 12` as a number, which says no unit.
HOW_TO_WRITE = {"training.memory_budget": "a size with its unit, such as 12GB or 512MB"}


def _coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Turn a YAML value into `tp`, or record a problem and return _INVALID."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], key, problems)
        if any(isinstance(value, a) for a in inner):  # e.g. bool | str: true, false or "auto"
            return value
        expected = " or ".join(_type_name(a) for a in inner)
        problems.append(f"{key}: expected {expected}, got {value!r}")
        return _INVALID
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return tp()
        return build(tp, value, key + ".", problems)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            # a single name where a list of them goes: show how to write the list
            example = f" (a list in brackets: [{value}])" if isinstance(value, str) else ""
            problems.append(f"{key}: expected a list, got {value!r}{example}")
            return _INVALID
        items = [_coerce(v, inner, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return _INVALID if _INVALID in items else items
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "5e-5" as a string
            value = float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, str):
        try:  # full-width digits (１０２４, what a Japanese IME types), as float() reads them
            value = int(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        # YAML's .inf and .nan: no setting means them (epochs: .inf crashed the step count)
        problems.append(f"{key}: expected a finite number, got {value!r}")
        return _INVALID
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        expected = HOW_TO_WRITE.get(key, _type_name(tp))
        problems.append(f"{key}: expected {expected}, got {value!r}")
        return _INVALID
    return value


def build(cls: type, data: dict, prefix: str, problems: list[str]):
    """Dataclass `cls` from the mapping `data`, appending each problem to `problems` under its
    key (`prefix` names the section: "training.")."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            # a typo (learnng_rate, rnak) is the usual cause: name the key it most likely meant
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            guess = f"did you mean {prefix}{close[0]}? " if close else ""
            allowed = ", ".join(sorted(known))
            problems.append(f"{prefix}{key}: unknown key ({guess}allowed: {allowed})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = _coerce(data[f.name], hints[f.name], prefix + f.name, problems)
            if value is not _INVALID:
                kwargs[f.name] = value
    return cls(**kwargs)
