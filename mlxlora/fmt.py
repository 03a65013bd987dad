"""Numbers and durations as short text, the same in the CLI and the studio.

What does not exist (no validation set, a run not finished) is shown as NONE, never `None`.
"""

from __future__ import annotations

NONE = "—"


def num(value: float | None, spec: str = ".4f") -> str:
    """`value` formatted with `spec`; NONE when unknown."""
    return NONE if value is None else format(value, spec)


def clock(seconds: float | None) -> str:
    """2:03 or 1:02:03; NONE when unknown (before the speed is known)."""
    if seconds is None:
        return NONE
    minutes, secs = divmod(round(seconds), 60)  # rounded, as Compare's seconds are
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def counted(n: int, noun: str) -> str:
    """ "1 record", "2 records": English nouns that take an s."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


BLANK_ANSWER = "(blank: only spaces and line breaks; an untrained or random model's answer)"


def answer(text: str) -> str:
    """A generated answer as shown: stripped, or BLANK_ANSWER when nothing but whitespace."""
    return text.strip() or BLANK_ANSWER
