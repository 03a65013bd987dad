"""Dataset statistics: lengths, a histogram, over-long records, duplicates, domain-term density.

Definitions (all record indices are 0-based positions in the dataset):

- **text of a record**: the record normalized (`formats.normalize`), then all message contents
  joined with "\\n" (text records: the text itself).
- **answer text**: the content of the last assistant message (text records: the whole text).
- **characters** are Python `len` (code points); **tokens** are `len(tokenizer.encode(text))`
  of the record's text (no chat template, so a few tokens below what training sees).
- **summary** of lengths: mean, median, p95 (linear interpolation between closest ranks, as
  numpy's default), min and max.
- **histogram**: up to 10 equal-width integer bins `[lo, hi]` (inclusive) from min to max length,
  on tokens when a tokenizer is given, else on characters.
- **too long**: records whose token count exceeds `max_length` (needs a tokenizer).
- **duplicates**: records whose normalized content equals an earlier record's; `count` is the
  number of such later copies (records minus distinct records).
- **domain-term density**: terms are matched in the answer text after NFKC normalization and
  case folding (so "ＣＴ", "ct" and "CT" match "CT"). Matching scans left to right and at each
  position takes the longest term that matches there; matches do not overlap (so in "糖尿病"
  the term "糖尿病" counts once and "尿" does not count). This works for Japanese, which has no
  word boundaries. A term that starts with an ASCII letter or digit must also start a word (no
  ASCII letter or digit right before it), so "CT" does not count inside "doctor" but "dose"
  counts in "doses" and "CT" in "CT検査". Then
  `per_1000_chars` = 1000 x (term hits in all answers) / (characters in all answers), and
  `share_with_term` = (records whose answer has at least one hit) / (records).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from mlxlora.data.formats import answer_text, full_text, normalize
from mlxlora.errors import DataError

BUNDLED_TERMS = {"medical": Path(__file__).with_name("terms_medical.txt")}
HISTOGRAM_BINS = 10
MAX_INDICES = 10


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(values: list[int]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "median": float(statistics.median(values)),
        "p95": percentile(values, 95),
        "min": min(values),
        "max": max(values),
    }


def histogram(values: list[int], bins: int = HISTOGRAM_BINS) -> list[dict]:
    """Equal-width integer bins covering min..max, each `{"lo", "hi", "count"}` (inclusive)."""
    lo, hi = min(values), max(values)
    width = max(1, math.ceil((hi - lo + 1) / bins))
    n = math.ceil((hi - lo + 1) / width)
    counts = [0] * n
    for v in values:
        counts[(v - lo) // width] += 1
    return [
        {"lo": lo + i * width, "hi": lo + (i + 1) * width - 1, "count": c}
        for i, c in enumerate(counts)
    ]


# --- domain terms ---------------------------------------------------------------------------


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def load_terms(spec: str | Path) -> tuple[str, list[str]]:
    """(label, terms) from a bundled list name (`medical`) or a file with one term per line.

    Blank lines and lines starting with `#` are skipped; duplicates are dropped.
    """
    spec_s = str(spec)
    path = BUNDLED_TERMS.get(spec_s, Path(spec_s).expanduser())
    label = spec_s if spec_s in BUNDLED_TERMS else path.name
    if not path.is_file():
        bundled = ", ".join(BUNDLED_TERMS)
        raise DataError(f"{spec_s}: terms file not found (bundled lists: {bundled})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{spec_s}: terms file is not valid UTF-8 (offset {exc.start})") from None
    terms = []
    for line in text.splitlines():
        term = line.strip()
        if term and not term.startswith("#") and term not in terms:
            terms.append(term)
    if not terms:
        raise DataError(f"{spec_s}: terms file has no terms")
    return label, terms


class TermMatcher:
    """Non-overlapping, leftmost-longest matching of terms (see the module docstring)."""

    def __init__(self, terms: list[str]):
        folded: dict[str, str] = {}
        for t in terms:
            f = _fold(t.strip())
            if f and f not in folded:
                folded[f] = t.strip()
        self.terms = folded  # folded form -> term as listed
        alternatives = [
            (r"(?<![a-z0-9])" if re.match(r"[a-z0-9]", t) else "") + re.escape(t)
            for t in sorted(folded, key=len, reverse=True)
        ]
        self._re = re.compile("|".join(alternatives)) if alternatives else None

    def find(self, text: str) -> list[str]:
        """The terms (as listed) found in `text`, one entry per hit."""
        if self._re is None:
            return []
        return [self.terms[m.group(0)] for m in self._re.finditer(_fold(text))]


def term_density(answers: list[str], terms: list[str], label: str = "terms") -> dict:
    matcher = TermMatcher(terms)
    counts: Counter[str] = Counter()
    with_term = 0
    chars = 0
    for answer in answers:
        hits = matcher.find(answer)
        counts.update(hits)
        with_term += bool(hits)
        chars += len(answer)
    hits_total = sum(counts.values())
    return {
        "source": label,
        "terms": len(matcher.terms),
        "hits": hits_total,
        "answer_chars": chars,
        "per_1000_chars": 1000.0 * hits_total / chars if chars else 0.0,
        "records_with_term": with_term,
        "share_with_term": with_term / len(answers) if answers else 0.0,
        "top": [[t, c] for t, c in counts.most_common(10)],
    }


# --- the report -------------------------------------------------------------------------------


def analyze(
    records: list[dict],
    kind: str,
    tokenizer: Any = None,
    max_length: int | None = None,
    terms: list[str] | tuple[str, list[str]] | None = None,
) -> dict:
    """Statistics of validated `records` of type `kind` (see the module docstring).

    `tokenizer` is anything with `.encode(str) -> list[int]`. `terms` is a list of terms or a
    `(label, terms)` pair from `load_terms`.
    """
    if not records:
        raise DataError("no records to analyze")
    normalized = [normalize(r, kind) for r in records]
    texts = [full_text(n) for n in normalized]
    chars = [len(t) for t in texts]
    report: dict[str, Any] = {
        "type": kind,
        "records": len(records),
        "chars": summarize(chars),
        "tokens": None,
    }
    tokens: list[int] | None = None
    if tokenizer is not None:
        tokens = [len(tokenizer.encode(t)) for t in texts]
        report["tokens"] = summarize(tokens)
    report["histogram"] = {
        "unit": "tokens" if tokens is not None else "chars",
        "bins": histogram(tokens if tokens is not None else chars),
    }
    if max_length is not None and tokens is not None:
        over = [i for i, n in enumerate(tokens) if n > max_length]
        report["too_long"] = {
            "max_length": max_length,
            "count": len(over),
            "indices": over[:MAX_INDICES],
        }
    else:
        report["too_long"] = None

    first_seen: dict[str, int] = {}
    copies: list[list[int]] = []
    for i, n in enumerate(normalized):
        key = json.dumps(n, ensure_ascii=False, sort_keys=True)
        if key in first_seen:
            copies.append([first_seen[key], i])
        else:
            first_seen[key] = i
    report["duplicates"] = {
        "count": len(copies),
        "indices": [dup for _, dup in copies[:MAX_INDICES]],
        "pairs": copies[:MAX_INDICES],  # [first occurrence, later copy]
    }

    if terms is not None:
        label, term_list = terms if isinstance(terms, tuple) else ("terms", list(terms))
        report["term_density"] = term_density(
            [answer_text(n) for n in normalized], term_list, label
        )
    else:
        report["term_density"] = None
    return report
