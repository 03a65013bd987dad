"""The worked examples of docs/metrics.md (English and Japanese) are the scoring's tests."""

from __future__ import annotations

import re

import pytest
import yaml

from mlxlora import scoring
from mlxlora.data.analysis import TermMatcher, load_terms
from tests.conftest import REPO

DOC = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
EXAMPLES = [yaml.safe_load(b) for b in re.findall(r"```yaml example\n(.*?)```", DOC, re.S)]
MATCHER = TermMatcher(load_terms("medical")[1])


def test_the_doc_has_examples_in_both_languages():
    assert len(EXAMPLES) == 8
    japanese = [e for e in EXAMPLES if re.search(r"[\u3040-\u9fff]", e["reference"])]
    assert len(japanese) == 4
    sampled = [e for e in EXAMPLES if "samples" in e]  # the consistency examples, EN and JA
    assert len(sampled) == 2 and len([e for e in sampled if e in japanese]) == 1


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["answer"][:20] for e in EXAMPLES])
def test_worked_example(example):
    got = scoring.score(example["answer"], example["reference"], MATCHER, example.get("samples"))
    for key, want in example["expect"].items():
        assert got[key] == (None if want is None else pytest.approx(want, abs=5e-5)), key


def test_bigrams_for_japanese_words_for_english():
    assert scoring.tokens("高血圧です。Blood Pressure") == [
        "高血",
        "血圧",
        "圧で",
        "です",
        "blood",
        "pressure",
    ]
    assert scoring.tokens("薬") == ["薬"]


def test_f1_counts_repeats_and_empties():
    assert scoring.token_f1("a a b", "a b b") == pytest.approx(2 / 3)
    assert scoring.token_f1("", "") == 1.0 and scoring.token_f1("x", "") == 0.0


def test_caution_needs_a_professional_and_an_action_in_one_sentence():
    assert scoring.has_caution("症状が続く場合は医療機関を受診してください。")
    assert scoring.has_caution("Please consult your healthcare provider before use.")
    assert not scoring.has_caution("医師は多忙です。相談窓口もあります。")
    assert not scoring.has_caution("The doctor prescribed rest.")


def test_aggregate_skips_records_a_score_does_not_apply_to():
    per = [
        scoring.score(e["answer"], e["reference"], MATCHER) for e in EXAMPLES if "samples" not in e
    ]
    total = scoring.aggregate(per)
    assert total["consistency"] is None  # no samples given
    assert total["safety_rate"] == pytest.approx(0.5)  # 2 references with a caution: 1 kept
    assert total["term_recall"] == pytest.approx((2 / 3 + 1 + 2 / 3 + 0) / 4)
    assert scoring.aggregate([scoring.score("a", "b", None)])["term_recall"] is None
