"""Dataset statistics: lengths, a histogram, over-long records, duplicates, boilerplate sentences,
domain-term density.

Definitions (record numbers in the report count from 1, as in error messages: record 1 is the
first record):

- **text of a record**: the record normalized (`formats.normalize`), then all message contents
  joined with "\\n" (text records: the text itself).
- **answer text**: the content of the last assistant message (text records: the whole text).
- **analysed prefix**: given `max_length`, only the first `CHARS_PER_TOKEN * max_length`
  characters of a record's text (and of its answer) are tokenized, compared, split into
  sentences and searched for terms. Training never sees more than max_length tokens, and
  tokenizers average 3-5 characters per token on prose, so a record longer than the prefix is
  over max_length on its prefix alone; this bounds the work (a 50 MB record costs what a 16 KB
  one does). Character lengths are always those of the whole text; `analysed_chars` says how
  many records were longer than the prefix.
- **characters** are Python `len` (code points); **tokens** are `len(tokenizer.encode(text))`
  of the record's analysed prefix (no chat template, so a few tokens below what training sees).
- **summary** of lengths: mean, median, p95 (linear interpolation between closest ranks, as
  numpy's default), min and max.
- **histogram**: up to 10 equal-width integer bins `[lo, hi]` (inclusive) from min to max length,
  on tokens when a tokenizer is given, else on characters.
- **too long**: records whose token count exceeds `max_length` (needs a tokenizer).
- **duplicates**: records whose normalized content equals an earlier record's; `count` is the
  number of such later copies (records minus distinct records).
- **near duplicates**: records that are not exact duplicates but whose text equals an earlier
  record's after `canonical` (NFKC, case folded, punctuation dropped, whitespace collapsed).
- **sentences** of an answer: split after 。！？ and after .!? followed by whitespace, and at
  line breaks; a sentence is compared by its `canonical` form and counts once per record.
  Sentences with fewer than `MIN_SENTENCE_CHARS` letters or digits ("1.", "OK") are ignored.
- **boilerplate**: a sentence found in at least `BOILERPLATE_SHARE` of the records and in at
  least `BOILERPLATE_MIN_RECORDS` records, such as a caution line closing every answer.
- **domain-term density**: terms are matched in the answer text after NFKC normalization and
  case folding (so "ＣＴ", "ct" and "CT" match "CT"). Matching scans left to right and at each
  position takes the longest term that matches there; matches do not overlap (so in "糖尿病"
  the term "糖尿病" counts once and "尿" does not count). This works for Japanese, which has no
  word boundaries. A term that starts with an ASCII letter or digit must also start a word (no
  ASCII letter or digit right before it), so "CT" does not count inside "doctor" but "dose"
  counts in "doses" and "CT" in "CT検査". Then
  `per_1000_chars` = 1000 x (term hits in all answers) / (characters in all answers), and
  `share_with_term` = (records whose answer has at least one hit) / (records).
  `without_boilerplate` is the same measure on the answers with every boilerplate sentence
  removed (the remaining sentences joined with "\\n"), so repeated lines do not inflate it.
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
CHARS_PER_TOKEN = 8
BOILERPLATE_SHARE = 0.3
BOILERPLATE_MIN_RECORDS = 3
MIN_SENTENCE_CHARS = 3
_SENTENCE_END = re.compile(r"(?<=[。！？])|(?<=[.!?])(?=\s)|\n")


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


# --- sentences, boilerplate, near duplicates ---------------------------------------------------


def canonical(text: str) -> str:
    """`text` compared loosely: NFKC, case folded, punctuation dropped, whitespace collapsed."""
    kept = (c for c in _fold(text) if not unicodedata.category(c).startswith("P"))
    return " ".join("".join(kept).split())


def sentences(text: str) -> list[str]:
    """The sentences of `text` (see the module docstring), stripped, empty ones dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _keyed_sentences(answer: str) -> list[tuple[str, str]]:
    """(sentence, canonical key) for each sentence of an answer."""
    return [(s, canonical(s)) for s in sentences(answer)]


def _judgeable(key: str) -> bool:
    return sum(c.isalnum() for c in key) >= MIN_SENTENCE_CHARS


def boilerplate(split: list[list[tuple[str, str]]]) -> list[dict]:
    """Sentences repeated across records (see the module docstring), most widespread first.

    Args:
        split: each record's `(sentence, canonical key)` pairs.

    Returns:
        `{"key", "text", "records", "share"}` per boilerplate sentence, `text` as first written.
    """
    counts: Counter[str] = Counter()
    first_text: dict[str, str] = {}
    for pairs in split:
        for s, k in pairs:
            first_text.setdefault(k, s)
        counts.update(list(dict.fromkeys(k for _, k in pairs if _judgeable(k))))  # ties: first seen
    floor = max(BOILERPLATE_MIN_RECORDS, math.ceil(BOILERPLATE_SHARE * len(split)))
    return [
        {"key": k, "text": first_text[k], "records": n, "share": n / len(split)}
        for k, n in counts.most_common()
        if n >= floor
    ]


def _copies(keys: list[str]) -> list[list[int]]:
    """[first, later] 0-based index pairs of keys equal to an earlier one."""
    first_seen: dict[str, int] = {}
    pairs = []
    for i, key in enumerate(keys):
        if key in first_seen:
            pairs.append([first_seen[key], i])
        else:
            first_seen[key] = i
    return pairs


def _numbered(pairs: list[list[int]]) -> dict:
    """The report's view of copy pairs: 1-based record numbers, the first MAX_INDICES shown."""
    shown = [[a + 1, b + 1] for a, b in pairs[:MAX_INDICES]]
    return {"count": len(pairs), "records": [b for _, b in shown], "pairs": shown}


# --- the report -------------------------------------------------------------------------------


def analyze(
    records: list[dict],
    kind: str,
    tokenizer: Any = None,
    max_length: int | None = None,
    terms: list[str] | tuple[str, list[str]] | None = None,
) -> dict:
    """Statistics of validated `records` of type `kind` (see the module docstring).

    Args:
        records: validated records of one format.
        kind: their format (`formats.FORMATS`).
        tokenizer: anything with `.encode(str) -> list[int]`; None skips token statistics.
        max_length: the training length in tokens: flags longer records and bounds the analysed
            prefix of each record; None analyses whole records.
        terms: a list of terms or a `(label, terms)` pair from `load_terms`.
    """
    if not records:
        raise DataError("no records to analyze")
    cap = CHARS_PER_TOKEN * max_length if max_length is not None else None
    normalized = [normalize(r, kind) for r in records]
    texts = [full_text(n) for n in normalized]
    chars = [len(t) for t in texts]
    report: dict[str, Any] = {"type": kind, "records": len(records), "chars": summarize(chars)}
    tokens = [len(tokenizer.encode(t[:cap])) for t in texts] if tokenizer is not None else None
    report["tokens"] = summarize(tokens) if tokens is not None else None
    report["analysed_chars"] = {"cap": cap, "longer": sum(n > cap for n in chars) if cap else 0}
    report["histogram"] = {
        "unit": "tokens" if tokens is not None else "chars",
        "bins": histogram(tokens if tokens is not None else chars),
    }
    report["too_long"] = None
    if max_length is not None and tokens is not None:
        over = [i + 1 for i, n in enumerate(tokens) if n > max_length]
        report["too_long"] = {
            "max_length": max_length,
            "count": len(over),
            "records": over[:MAX_INDICES],
        }

    exact = _copies([json.dumps(n, ensure_ascii=False, sort_keys=True) for n in normalized])
    repeated = {b for _, b in exact}
    near = [p for p in _copies([canonical(t[:cap]) for t in texts]) if p[1] not in repeated]
    report["duplicates"] = _numbered(exact)
    report["near_duplicates"] = _numbered(near)

    answers = [answer_text(n)[:cap] for n in normalized]
    split = [_keyed_sentences(a) for a in answers]
    common = boilerplate(split)
    report["boilerplate"] = [{k: b[k] for k in ("text", "records", "share")} for b in common]
    report["term_density"] = None
    if terms is not None:
        label, term_list = terms if isinstance(terms, tuple) else ("terms", list(terms))
        td = term_density(answers, term_list, label)
        td["without_boilerplate"] = None
        if common:
            keys = {b["key"] for b in common}
            rest = ["\n".join(s for s, k in pairs if k not in keys) for pairs in split]
            td["without_boilerplate"] = term_density(rest, term_list, label)
        report["term_density"] = td
    return report
