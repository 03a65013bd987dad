"""Dataset statistics on small hand-computed examples."""

import pytest

from mlxlora.data.analysis import (
    CHARS_PER_TOKEN,
    TermMatcher,
    analyze,
    canonical,
    histogram,
    load_terms,
    percentile,
    sentences,
    term_density,
)
from mlxlora.errors import DataError


class CharTokenizer:
    """One token per character, plus one BOS token; remembers the longest text it was given."""

    longest = 0

    def encode(self, text):
        self.longest = max(self.longest, len(text))
        return [0] + [ord(c) for c in text]


def texts(*items):
    return [{"text": t} for t in items]


def test_percentile_matches_numpy_linear():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20, 30, 40, 50], 95) == pytest.approx(48.0)
    assert percentile([7], 95) == 7


def test_char_stats_and_histogram():
    # lengths 1, 2, 3, 4, 10
    r = analyze(texts("a", "bb", "ccc", "dddd", "e" * 10), "text")
    assert r["records"] == 5
    assert r["chars"] == {
        "mean": 4.0,
        "median": 3.0,
        "p95": pytest.approx(8.8),
        "min": 1,
        "max": 10,
    }
    assert r["tokens"] is None and r["too_long"] is None
    assert r["histogram"]["unit"] == "chars"
    bins = r["histogram"]["bins"]
    assert len(bins) == 10 and bins[0] == {"lo": 1, "hi": 1, "count": 1}
    assert [b["count"] for b in bins] == [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]


def test_histogram_wide_range():
    bins = histogram([0, 5, 99, 100])
    # width ceil(101/10) = 11 -> bins [0,10], [11,21], ..., [99,109]
    assert len(bins) == 10
    assert bins[0] == {"lo": 0, "hi": 10, "count": 2}
    assert bins[-1] == {"lo": 99, "hi": 109, "count": 2}
    assert histogram([5, 5]) == [{"lo": 5, "hi": 5, "count": 2}]


def test_tokens_and_too_long_on_joined_messages():
    recs = [
        {"instruction": "ab", "output": "cd"},  # "ab\ncd" -> 5 chars, 6 tokens
        {"instruction": "a", "input": "b", "output": "c"},  # "a\n\nb\nc" -> 6 chars, 7 tokens
        {"instruction": "x" * 10, "output": "y"},  # 12 chars, 13 tokens
    ]
    r = analyze(recs, "instruction", tokenizer=CharTokenizer(), max_length=6)
    assert r["chars"]["max"] == 12 and r["chars"]["min"] == 5
    assert r["tokens"]["mean"] == pytest.approx((6 + 7 + 13) / 3)
    assert r["tokens"]["median"] == 7.0
    assert r["histogram"]["unit"] == "tokens"
    assert sum(b["count"] for b in r["histogram"]["bins"]) == 3
    # record numbers count from 1: the 2nd and 3rd records are too long
    assert r["too_long"] == {"max_length": 6, "count": 2, "records": [2, 3]}


def test_duplicates_compare_normalized_records():
    recs = [
        {"instruction": "q", "output": "a"},
        {"instruction": "q", "input": "", "output": "a"},  # same once normalized
        {"instruction": "q", "output": "b"},
        {"instruction": "q", "output": "a", "id": 9},  # extra keys are ignored
        {"instruction": "q", "output": "b"},
    ]
    dup = analyze(recs, "instruction")["duplicates"]
    assert dup["count"] == 3
    assert dup["records"] == [2, 4, 5]
    assert dup["pairs"] == [[1, 2], [1, 4], [3, 5]]


def test_term_matching_japanese_longest_first_non_overlapping():
    m = TermMatcher(["尿", "糖尿病", "糖尿", "血糖値"])
    # 糖尿病 (longest at position 0), then 尿 alone, then 血糖値; 糖尿 never fires inside 糖尿病
    assert m.find("糖尿病で尿に糖が出て血糖値が上がる") == ["糖尿病", "尿", "血糖値"]
    assert m.find("尿尿") == ["尿", "尿"]


def test_term_matching_latin_case_width_and_word_start():
    m = TermMatcher(["CT", "dose", "blood pressure"])
    text = "The doctor ordered a ct and a ＣＴ; CT検査. Doses vary. Overdose. Blood Pressure!"
    assert m.find(text) == ["CT", "CT", "CT", "dose", "blood pressure"]


def test_term_density_numbers():
    recs = [
        # answer "糖尿病と高血圧" = 7 chars, 2 hits
        {"instruction": "病名は？", "output": "糖尿病と高血圧"},
        # answer "元気です" = 4 chars, 0 hits
        {"instruction": "糖尿病？", "output": "元気です"},
        # answer 9 chars "高血圧高血圧です。" -> 2 hits
        {"instruction": "q", "output": "高血圧高血圧です。"},
    ]
    td = analyze(recs, "instruction", terms=("medical-mini", ["糖尿病", "高血圧"]))["term_density"]
    assert td["hits"] == 4
    assert td["answer_chars"] == 20
    assert td["per_1000_chars"] == pytest.approx(200.0)
    assert td["records_with_term"] == 2
    assert td["share_with_term"] == pytest.approx(2 / 3)
    assert td["top"] == [["高血圧", 3], ["糖尿病", 1]]
    assert td["source"] == "medical-mini" and td["terms"] == 2


def test_term_density_chat_uses_last_assistant_and_text_uses_all():
    chat = {
        "messages": [
            {"role": "user", "content": "肺炎"},
            {"role": "assistant", "content": "肺炎です"},
            {"role": "user", "content": "他には"},
            {"role": "assistant", "content": "喘息"},
        ]
    }
    td = term_density(["喘息"], ["肺炎", "喘息"])
    assert analyze([chat], "chat", terms=["肺炎", "喘息"])["term_density"] == {
        **td,
        "source": "terms",
        "without_boilerplate": None,
    }
    assert td["hits"] == 1 and td["answer_chars"] == 2 and td["per_1000_chars"] == 500.0
    r = analyze(texts("肺炎と喘息"), "text", terms=["肺炎", "喘息"])
    assert r["term_density"]["hits"] == 2


def test_bundled_medical_terms():
    label, terms = load_terms("medical")
    assert label == "medical"
    assert 60 <= len(terms) <= 150
    assert "糖尿病" in terms and "diabetes" in terms
    assert not any(t.startswith("#") for t in terms)


def test_terms_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("# comment\n\n骨折\n骨折\n  fracture  \n", "utf-8")
    assert load_terms(str(p)) == ("t.txt", ["骨折", "fracture"])
    with pytest.raises(DataError, match="terms file not found"):
        load_terms(str(tmp_path / "nope.txt"))
    (tmp_path / "e.txt").write_text("# only a comment\n")
    with pytest.raises(DataError, match="no terms"):
        load_terms(str(tmp_path / "e.txt"))


def test_no_records():
    with pytest.raises(DataError):
        analyze([], "text")


def test_sentences_japanese_and_english():
    text = "高血圧です。注意！本当？ Yes. No!\nThird line: 3.5 mg"
    assert sentences(text) == [
        "高血圧です。",
        "注意！",
        "本当？",
        "Yes.",
        "No!",
        "Third line: 3.5 mg",
    ]
    assert (
        canonical("  詳しくは 医師に\u3000相談してください！") == "詳しくは 医師に 相談してください"
    )
    assert canonical("Ask  your DOCTOR.") == canonical("ask your doctor!") == "ask your doctor"


def _caution_records():
    """10 records; 8 end with one caution line (one typed with ！), 4 mention 糖尿病."""
    caution = "詳しくは医師に相談してください。"  # 16 characters
    recs = []
    for i in range(10):
        body = f"症例{i}は糖尿病です。" if i < 4 else f"症例{i}は軽症です。"  # 10 / 9 characters
        tail = caution if i < 7 else caution.replace("。", "！") if i == 7 else ""
        recs.append({"instruction": f"q{i}", "output": body + tail})
    return recs


def test_boilerplate_sentence_and_density_without_it():
    r = analyze(_caution_records(), "instruction", terms=("mini", ["医師", "糖尿病"]))
    assert r["boilerplate"] == [
        {"text": "詳しくは医師に相談してください。", "records": 8, "share": 0.8}
    ]
    td = r["term_density"]
    # with: 4 x 糖尿病 + 8 x 医師 in 4*26 + 4*25 + 2*9 = 222 answer characters
    assert td["hits"] == 12 and td["answer_chars"] == 222
    assert td["per_1000_chars"] == pytest.approx(12000 / 222)
    assert td["records_with_term"] == 8
    # without the caution line: 4 hits in 4*10 + 6*9 = 94 characters, in 4 records
    rest = td["without_boilerplate"]
    assert rest["hits"] == 4 and rest["answer_chars"] == 94
    assert rest["per_1000_chars"] == pytest.approx(4000 / 94)
    assert rest["records_with_term"] == 4 and rest["top"] == [["糖尿病", 4]]


def test_boilerplate_needs_share_records_and_letters():
    recs = [{"instruction": f"q{i}", "output": f"答え{i}です。OK."} for i in range(10)]
    recs[0]["output"] += " Please see a doctor."  # 1 of 10 records
    recs[1]["output"] += " Please see a doctor."
    recs[2]["output"] += " Please see a doctor."  # 3 of 10: exactly the 30% share
    found = analyze(recs, "instruction")["boilerplate"]
    assert found == [{"text": "Please see a doctor.", "records": 3, "share": 0.3}]  # not "OK."
    two = [{"text": f"Same line here. Other {i}."} for i in range(2)]
    assert analyze(two, "text")["boilerplate"] == []  # 100% of records, but only 2


def test_boilerplate_as_widespread_comes_in_the_order_first_written():
    """Ties came in set order, which differs from run to run (`data show` printed the
    tutorial's two 100% sentences in either order)."""
    lines = [f"Line number {w} is here." for w in "one two three four five six".split()]
    recs = [{"text": " ".join(lines) + f" Record {i}."} for i in range(5)]
    assert [b["text"] for b in analyze(recs, "text")["boilerplate"]] == lines


def test_near_duplicates_beside_exact_ones():
    recs = texts("Fever is high.", "fever  is HIGH!", "Fever is high.", "Cough.", "ＣＯＵＧＨ")
    r = analyze(recs, "text")
    assert r["duplicates"] == {"count": 1, "records": [3], "pairs": [[1, 3]]}
    assert r["near_duplicates"] == {"count": 2, "records": [2, 5], "pairs": [[1, 2], [4, 5]]}


def test_huge_record_is_tokenized_only_up_to_the_cap():
    max_length = 64
    cap = CHARS_PER_TOKEN * max_length
    huge = "糖尿病。" * 500_000  # 2,000,000 characters
    tok = CharTokenizer()
    r = analyze(
        texts("short", huge), "text", tokenizer=tok, max_length=max_length, terms=["糖尿病"]
    )
    assert tok.longest == cap
    assert r["chars"]["max"] == len(huge)  # the true length is still reported
    assert r["tokens"]["max"] == cap + 1  # BOS + one token per analysed character
    assert r["too_long"] == {"max_length": max_length, "count": 1, "records": [2]}
    assert r["analysed_chars"] == {"cap": cap, "longer": 1}
    assert r["term_density"]["answer_chars"] == len("short") + cap
