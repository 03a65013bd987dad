"""Reading dataset files, detecting and validating formats, normalizing records."""

import json

import pytest

from mlxlora.data.formats import (
    answer_text,
    detect_format,
    full_text,
    load_records,
    normalize,
)
from mlxlora.data.validation import validate
from mlxlora.errors import DataError

INSTR = {"instruction": "Define anemia.", "input": "", "output": "A low red cell count."}
CHAT = {
    "messages": [
        {"role": "system", "content": "You are a nurse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
}
COMP = {"prompt": "2+2=", "completion": "4"}
TEXT = {"text": "plain text"}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def error_of(fn, *args) -> str:
    with pytest.raises(DataError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# --- load_records -----------------------------------------------------------------------------


def test_jsonl_with_blank_lines_and_crlf(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"text": "a"}\r\n\r\n   \n{"text": "b"}\r\n')
    records = load_records(p)
    assert records == [{"text": "a"}, {"text": "b"}]
    assert records.locations == ["line 1", "line 4"]


def test_json_array_and_bom(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes("\ufeff".encode() + json.dumps([TEXT, TEXT], indent=2).encode())
    records = load_records(p)
    assert records == [TEXT, TEXT]
    assert records.locations == ["record 1", "record 2"]


def test_json_array_records_count_from_one_like_jsonl_lines(tmp_path):
    bad = [TEXT, TEXT, TEXT, {"text": 4}]
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps(bad))
    assert error_of(validate, load_records(arr), "text", "d.json").startswith("d.json: record 4: ")
    lines = write_jsonl(tmp_path / "d.jsonl", bad)
    assert error_of(validate, load_records(lines), "text", "d.jsonl").startswith("d.jsonl: line 4:")
    assert error_of(validate, [TEXT, {"text": 4}], "text", "d").startswith("d: record 2: ")


def test_single_object_file(tmp_path):
    p = tmp_path / "one.json"
    p.write_text(json.dumps(INSTR, indent=2))
    assert load_records(p) == [INSTR]
    assert load_records(p).locations == ["record 1"]
    one_line = write_jsonl(tmp_path / "one.jsonl", [INSTR])
    assert load_records(one_line).locations == ["line 1"]


def test_malformed_jsonl_names_line_and_column(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b",}\n')
    msg = error_of(load_records, p)
    assert msg.startswith(f"{p}: line 2, column 14: malformed JSON")


def test_malformed_json_array_names_line_and_column(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[\n  {"text": "a"},\n  {"text" "b"}\n]')
    msg = error_of(load_records, p)
    assert "line 3, column 11: malformed JSON: Expecting ':' delimiter" in msg


def test_non_utf8_names_line_and_offset(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    msg = error_of(load_records, p)
    assert "d.jsonl: line 2: not valid UTF-8 (byte 0xe9 at offset 28)" in msg


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file(tmp_path, content):
    p = tmp_path / "d.jsonl"
    p.write_text(content)
    assert "file is empty" in error_of(load_records, p)


def test_empty_array(tmp_path):
    p = tmp_path / "d.json"
    p.write_text("[]")
    assert "empty" in error_of(load_records, p)


@pytest.mark.parametrize(
    "top, kind", [('"hello"', "a string"), ("42", "a number"), ("null", "null")]
)
def test_top_level_not_array_or_object(tmp_path, top, kind):
    p = tmp_path / "d.json"
    p.write_text(top)
    assert f"top-level JSON is {kind}" in error_of(load_records, p)


def test_record_not_an_object(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[{"text": "a"}, ["text", "b"]]')
    assert "d.json: record 2: expected a JSON object, got an array" in error_of(load_records, p)
    q = tmp_path / "d.jsonl"
    q.write_text('{"text": "a"}\n"just a string"\n')
    assert "d.jsonl: line 2: expected a JSON object, got a string" in error_of(load_records, q)


def test_nan_is_not_json(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": NaN}\n')
    assert "line 1" in error_of(load_records, p)


def test_missing_file_and_directory(tmp_path):
    assert "file not found" in error_of(load_records, tmp_path / "nope.jsonl")
    assert "is a directory" in error_of(load_records, tmp_path)


# --- detect_format ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, kind",
    [
        (INSTR, "instruction"),
        ({"instruction": "x", "output": "y", "id": 3}, "instruction"),
        (CHAT, "chat"),
        (COMP, "completion"),
        (TEXT, "text"),
    ],
)
def test_detect(record, kind):
    assert detect_format([record, record], "d.jsonl") == kind


def test_detect_unknown_keys_names_record():
    msg = error_of(detect_format, [TEXT, {"question": "q", "answer": "a"}], "d.jsonl")
    assert msg.startswith(
        'd.jsonl: record 2: cannot tell the format from keys "question", "answer"'
    )
    assert "--type" in msg


def test_detect_ambiguous():
    msg = error_of(detect_format, [{"instruction": "i", "output": "o", "text": "t"}], "d.jsonl")
    assert "ambiguous format" in msg and "instruction and text" in msg


def test_detect_mixed_formats_uses_locations(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [TEXT, TEXT, COMP])
    msg = error_of(detect_format, load_records(p), str(p))
    assert "line 3: looks like completion but line 1 looks like text" in msg


# --- validate -----------------------------------------------------------------------------------


def test_valid_records_pass():
    validate([INSTR, {"instruction": "a", "output": "b", "input": None}], "instruction", "d")
    validate([CHAT], "chat", "d")
    validate([COMP], "completion", "d")
    validate([TEXT], "text", "d")


@pytest.mark.parametrize(
    "kind, record, expected",
    [
        ("instruction", {"instruction": "a"}, 'field "output": missing'),
        (
            "instruction",
            {"instruction": "a", "output": 3},
            'field "output": expected a string, got 3',
        ),
        ("instruction", {"instruction": "", "output": "b"}, 'field "instruction": is empty'),
        (
            "instruction",
            {"instruction": " \n", "output": "b"},
            'field "instruction": is only whitespace',
        ),
        (
            "instruction",
            {"instruction": "a", "input": 5, "output": "b"},
            'field "input": expected a string',
        ),
        (
            "completion",
            {"prompt": "a", "completion": None},
            'field "completion": expected a string, got null',
        ),
        ("text", {"text": ["a"]}, 'field "text": expected a string, got ["a"]'),
        ("chat", {"messages": "hi"}, 'field "messages": expected a list'),
        ("chat", {"messages": []}, 'field "messages": is empty'),
        (
            "chat",
            {"messages": [{"role": "bot", "content": "x"}]},
            'field "messages[0].role": unknown role "bot"',
        ),
        (
            "chat",
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]},
            'field "messages[1].content": missing',
        ),
        (
            "chat",
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 1}]},
            'field "messages[1].content": expected a string, got 1',
        ),
        (
            "chat",
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "  "},
                ]
            },
            'field "messages[1].content": is only whitespace',
        ),
        (
            "chat",
            {"messages": [{"role": "assistant", "content": "a"}]},
            "has no user message",
        ),
        (
            "chat",
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
            "must end with an assistant message",
        ),
    ],
)
def test_validate_first_problem_names_record_and_field(kind, record, expected):
    good = {"instruction": INSTR, "chat": CHAT, "completion": COMP, "text": TEXT}[kind]
    msg = error_of(validate, [good, good, record], kind, "data.jsonl")
    assert msg.startswith("data.jsonl: record 3: ")
    assert expected in msg


def test_validate_uses_jsonl_line_numbers(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": 7}\n')
    msg = error_of(validate, load_records(p), "text", "data.jsonl")
    assert msg == 'data.jsonl: line 4: field "text": expected a string, got 7'


def test_validate_unknown_kind_and_no_records():
    assert "unknown dataset type" in error_of(validate, [TEXT], "tsv", "d")
    assert "no records" in error_of(validate, [], "text", "d")


# --- normalize ----------------------------------------------------------------------------------


def test_normalize_instruction_with_and_without_input():
    assert normalize(INSTR, "instruction") == {
        "messages": [
            {"role": "user", "content": "Define anemia."},
            {"role": "assistant", "content": "A low red cell count."},
        ]
    }
    rec = {"instruction": "Translate.", "input": "頭痛", "output": "headache"}
    assert normalize(rec, "instruction")["messages"][0]["content"] == "Translate.\n\n頭痛"
    rec = {"instruction": "Translate.", "input": None, "output": "x"}
    assert normalize(rec, "instruction")["messages"][0]["content"] == "Translate."


def test_normalize_chat_keeps_role_and_content_only():
    rec = {
        "messages": [
            {"role": "user", "content": "q", "name": "x"},
            {"role": "assistant", "content": "a"},
        ]
    }
    assert normalize(rec, "chat") == {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    }


def test_normalize_completion_and_text():
    assert normalize(COMP, "completion") == {
        "messages": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]
    }
    assert normalize(TEXT, "text") == {"text": "plain text"}


def test_full_and_answer_text():
    n = normalize(CHAT, "chat")
    assert full_text(n) == "You are a nurse.\nHi\nHello"
    assert answer_text(n) == "Hello"
    assert full_text({"text": "t"}) == answer_text({"text": "t"}) == "t"


def test_a_file_of_another_kind_is_named_as_such(tmp_path):
    """A CSV was "line 1, column 1: malformed JSON: Expecting value"; JSON Lines whose first
    line is an array blamed line 2 ("Extra data")."""
    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer\nWhat?,That.\n")
    assert error_of(load_records, csv) == (
        f"{csv}: line 1: CSV is not read here; convert the file to JSON Lines"
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("\n\nplain words\n")
    assert error_of(load_records, notes) == (
        f"{notes}: line 3: not JSON; expected a JSON array of objects or JSON Lines"
        " (one object per line)"
    )
    lines = tmp_path / "lines.jsonl"
    lines.write_text('[1, 2]\n{"text": "a"}\n')
    assert error_of(load_records, lines) == (
        f"{lines}: line 1: expected a JSON object, got an array [1, 2]"
    )


def test_utf16_gets_a_hint(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes('{"text": "a"}\n'.encode("utf-16"))
    assert error_of(load_records, p) == f"{p}: the file is UTF-16; save it as UTF-8"
