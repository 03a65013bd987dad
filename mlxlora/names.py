"""Names users type for datasets and runs: letters and digits of any script, never a path.

`医療専門知識モデル_v1`, `données-été` and `run 2` are names; `../x`, `.hidden`, `a/b` and a name
with control characters are not. Names are NFC-normalised, so the same word typed on macOS
(which decomposes accents) and on Linux finds the same dataset or run. Imports nothing heavy.
"""

from __future__ import annotations

import unicodedata

# Bytes, not characters: file systems limit a path component to 255 bytes, a Japanese
# character takes 3 in UTF-8, and a run directory appends a 20-byte time stamp.
MAX_NAME_BYTES = 200
PUNCTUATION = "._- "
# What separates typed values (a sweep's grid, merge's weights): a comma, or the ones a
# Japanese IME types for it (`8、12、16` was read as one value)
COMMAS = ",、，"
RULE = "use letters and digits of any language, '.', '_', '-' or spaces; no leading dot"


def normalize(name: str) -> str:
    """The NFC form of a name, outer whitespace removed: how every name is stored and found."""
    return unicodedata.normalize("NFC", name).strip()


def folded(name: str) -> str:
    """How a name reads: an IME's full-width 医療ＱＡ２ and 医療qa2 read as 医療QA2. Only for
    saying which stored name was meant; names are found by their NFC form (`normalize`)."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def name_problem(name: object) -> str | None:
    """Why `name` cannot name a dataset or run (one phrase), or None when it can."""
    if not isinstance(name, str) or not normalize(name):
        return "the name is empty"
    name = normalize(name)
    if name.startswith("."):
        return f"it starts with a dot ({RULE})"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes in UTF-8"
    bad = sorted({c for c in name if not is_name_char(c)})
    if bad:
        shown = ", ".join(repr(c) if c.isprintable() else f"U+{ord(c):04X}" for c in bad)
        return f"it contains {shown} ({RULE})"
    return None


def is_name_char(char: str) -> bool:
    """Whether `char` may appear in a name (a leading dot aside)."""
    # L* letters, M* combining marks (needed by Devanagari, Thai, ...), N* digits.
    return char in PUNCTUATION or unicodedata.category(char)[0] in "LMN"
