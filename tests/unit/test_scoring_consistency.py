"""The self-consistency score on hand-made answers, English and Japanese (docs/metrics.md)."""

from __future__ import annotations

import pytest

from mlxlora import scoring
from mlxlora.scoring import consistency, sentences

STABLE_JA = "高血圧は脳卒中の危険因子です。減塩が大切です。"
STABLE_EN = "Hypertension is a risk factor for stroke. Eat less salt."


def test_sentences_end_at_japanese_and_english_marks_and_line_breaks():
    text = "高血圧です。減塩！本当？ The dose is 2.5 mg. See a doctor!\n- rest\n\n- fluids"
    assert sentences(text) == [
        "高血圧です。",
        "減塩!",  # NFKC: the full-width marks become ! and ?
        "本当?",
        "The dose is 2.5 mg.",  # no cut inside a number
        "See a doctor!",
        "- rest",
        "- fluids",
    ]
    assert sentences("!!! \n\n 。") == []  # nothing with a token


@pytest.mark.parametrize("answer", [STABLE_EN, STABLE_JA])
def test_a_model_that_says_the_same_each_time_scores_one(answer):
    assert consistency(answer, [answer, answer, answer]) == 1.0
    # the samples may order and join the sentences differently
    reordered = " ".join(reversed(sentences(answer)))
    assert consistency(answer, [reordered]) == 1.0


def test_a_model_that_says_something_else_each_time_scores_zero():
    samples_en = ["Drink more coffee.", "Stroke is caused by cold weather only."]
    assert consistency(STABLE_EN, samples_en) == 0.0
    samples_ja = ["コーヒーを飲みましょう。", "風邪の症状です。"]
    assert consistency(STABLE_JA, samples_ja) == 0.0


def test_a_sentence_scores_the_share_of_samples_that_support_it():
    answer = "Insulin lowers blood glucose. It cures diabetes."
    agree, differ = "Insulin lowers blood sugar.", "Metformin is taken orally."
    # sentence 1 supported by 1 of 4 samples, sentence 2 by none: (0.25 + 0) / 2
    assert consistency(answer, [agree, differ, differ, differ]) == pytest.approx(0.125)
    assert consistency(answer, [agree, agree, differ, differ]) == pytest.approx(0.25)


def test_support_starts_at_the_documented_f1():
    assert scoring.token_f1("alpha beta", "alpha gamma") == scoring.SUPPORT_F1 == 0.5
    assert consistency("alpha beta.", ["alpha gamma."]) == 1.0
    assert scoring.token_f1("alpha beta", "alpha gamma delta") < 0.5
    assert consistency("alpha beta.", ["alpha gamma delta."]) == 0.0


def test_nothing_to_score_is_none_not_zero():
    assert consistency("", ["anything"]) is None  # no sentence in the answer
    assert consistency("\n\n\n", ["\n"]) is None
    assert consistency(STABLE_EN, []) is None
    assert consistency(STABLE_EN, [""]) == 0.0  # an empty sample supports nothing


def test_it_is_lexical_a_negation_still_supports():
    """The documented limit: agreement of words, not of meaning or truth."""
    said, negated = (
        "Hypertension raises the risk of stroke.",
        "Hypertension lowers the risk of stroke.",
    )
    assert scoring.token_f1(said, negated) == pytest.approx(5 / 6)
    assert consistency(said, [negated]) == 1.0


def test_score_and_aggregate_carry_it():
    with_samples = scoring.score(STABLE_EN, STABLE_EN, None, [STABLE_EN, "Drink coffee."])
    assert with_samples["consistency"] == 0.5
    assert scoring.score(STABLE_EN, STABLE_EN, None)["consistency"] is None
    total = scoring.aggregate([with_samples, scoring.score("", "x", None, ["y"])])
    assert total["consistency"] == 0.5  # the answer without a sentence does not count
