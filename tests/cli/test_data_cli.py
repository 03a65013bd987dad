"""`mlxlora data ...`: in-process through `mlxlora.cli.main`, and one real subprocess."""

import json
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from rich.cells import cell_len

from mlxlora.cli import main

GOOD = [
    {"instruction": "糖尿病とは？", "input": "", "output": "血糖値が高い状態が続く病気です。"},
    {"instruction": "What is anemia?", "output": "A low hemoglobin level; a common symptom."},
    {"instruction": "What is anemia?", "output": "A low hemoglobin level; a common symptom."},
]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("MLXLORA_HOME", str(h))
    monkeypatch.setenv("COLUMNS", "200")  # rich: no wrapping of long lines in captured output
    return h


def stored(home):
    root = home / "datasets"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


# Each bad input: (file name, bytes, what the one-line error must contain besides the file name).
BAD_INPUTS = {
    "malformed_json": (
        "broken.jsonl",
        b'{"instruction": "a", "output": "b"}\n{"instruction": "a" "output": "b"}\n',
        ["line 2, column 21", "malformed JSON"],
    ),
    "malformed_json_array": (
        "broken.json",
        b'[\n {"prompt": "a", "completion": "b"},\n {"prompt": "a", "completion": }\n]\n',
        ["line 3, column", "malformed JSON"],
    ),
    "missing_field": (
        "missing.jsonl",
        b'{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n',
        ["line 2", 'field "output"', "missing"],
    ),
    "wrong_type": (
        "wrongtype.json",
        b'[{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": 3}]',
        ["record 2", 'field "completion"', "expected a string, got 3"],
    ),
    "empty_text": (
        "emptytext.jsonl",
        b'{"text": "fine"}\n\n{"text": "   "}\n',
        ["line 3", 'field "text"', "whitespace"],
    ),
    "empty_chat_content": (
        "chat.jsonl",
        json.dumps(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}
        ).encode()
        + b"\n",
        ["line 1", 'field "messages[1].content"', "is empty"],
    ),
    "empty_file": ("empty.jsonl", b"", ["file is empty"]),
    "duplicate_key": (  # json kept the last value: "b" was dropped without a word
        "twice.jsonl",
        b'{"text": "ok"}\n{"instruction": "a", "output": "b", "output": "c"}\n',
        ["line 2", 'key "output" is given twice'],
    ),
    "control_character": (  # it said "Invalid control character at", the rest cut off
        "nul.jsonl",
        b'{"text": "ok"}\n{"text": "a\x00b"}\n',
        ["line 2, column 12", "control character U+0000 inside a string"],
    ),
    "non_utf8": (
        "latin1.jsonl",
        b'{"text": "ok"}\n{"text": "na\xefve"}\n',
        ["line 2", "not valid UTF-8", "offset 27"],
    ),
    "not_records": ("scalar.json", b'"just a string"', ["top-level JSON is a string"]),
    # json reads a lone surrogate escape into a str that cannot be stored as UTF-8
    "lone_surrogate": (
        "surrogate.jsonl",
        b'{"messages": [{"role": "user", "content": "q"}, '
        b'{"role": "assistant", "content": "a pair is fine: \\ud83d\\ude00"}]}\n'
        b'{"messages": [{"role": "user", "content": "q"}, '
        b'{"role": "assistant", "content": "a \\udc00"}]}\n',
        ["line 2", 'field "messages[1].content"', "\\udc00", "surrogate"],
    ),
    "nested_too_deeply": ("deep.json", b"[" * 100_000, ["nested too deeply"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_error_and_nothing_stored(home, tmp_path, capsys, case):
    name, content, expected = BAD_INPUTS[case]
    path = tmp_path / name
    path.write_bytes(content)
    code = main(["data", "import", str(path), "--name", "bad"])
    out, err = capsys.readouterr()
    assert code == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mlxlora: error: ")
    assert name in lines[0]
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert "Traceback" not in err + out
    assert stored(home) == []


def test_duplicate_name(home, tmp_path, capsys):
    src = jsonl(tmp_path / "med.jsonl", GOOD)
    assert main(["data", "import", str(src), "--name", "med"]) == 0
    meta_before = (home / "datasets" / "med" / "meta.json").read_text()
    capsys.readouterr()
    assert main(["data", "import", str(src), "--name", "med"]) == 3
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "'med' already exists" in err and "Traceback" not in err
    assert stored(home) == ["med"]
    assert (home / "datasets" / "med" / "meta.json").read_text() == meta_before


def test_the_advice_for_a_name_with_a_space_is_a_command_that_runs(home, tmp_path, capsys):
    """`mlxlora data rm 医療 データ` (unquoted, as the error gave it) removes nothing: argparse
    refuses the second word."""
    src = jsonl(tmp_path / "med.jsonl", GOOD)
    assert main(["data", "import", str(src), "--name", "医療 データ"]) == 0
    assert main(["data", "import", str(src), "--name", "医療 データ"]) == 3
    err = capsys.readouterr().err
    advice = err[err.index("`") + 1 : err.rindex("`")]
    assert advice == "mlxlora data rm '医療 データ'"
    assert main(shlex.split(advice)[1:]) == 0
    assert stored(home) == []


@pytest.mark.parametrize(
    "name, why",
    [
        ("../escape", "starts with a dot"),
        ("..", "starts with a dot"),
        (".hidden", "starts with a dot"),
        ("医療/../../escape", "'/'"),
        ("a\x00b", "U+0000"),
        ("", "the name is empty"),
        ("  ", "the name is empty"),
    ],
)
def test_invalid_name(home, tmp_path, capsys, name, why):
    src = jsonl(tmp_path / "med.jsonl", GOOD)
    assert main(["data", "import", str(src), "--name", name]) == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlxlora: error: invalid dataset name ")
    assert why in lines[0]
    assert stored(home) == [] and not (home / "escape").exists()


def test_names_in_any_language(home, tmp_path, capsys):
    name = "医療専門知識データセット"
    src = jsonl(tmp_path / "med.jsonl", GOOD)
    assert main(["data", "import", str(src), "--name", name]) == 0
    assert f"imported {name}: 3 instruction records" in capsys.readouterr().out
    accented = unicodedata.normalize("NFD", "données été")  # typed decomposed, as on macOS
    assert main(["data", "import", str(src), "--name", accented]) == 0
    assert stored(home) == ["données été", name]
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert name in out and "données été" in out
    assert main(["data", "show", accented, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "données été"
    assert main(["data", "rm", accented]) == 0
    assert "removed dataset données été" in capsys.readouterr().out
    assert main(["data", "rm", name]) == 0
    assert stored(home) == []


def test_list_shows_a_japanese_name_whole_at_80_columns(home, monkeypatch, capsys):
    """The tutorial's dataset, with its description, listed as `医療専門知識デ…` at 80
    columns (a QA finding): the name a user types back into `data show` is never cut."""
    monkeypatch.setenv("COLUMNS", "80")
    src = REPO / "tutorial" / "datasets" / "level3_advanced_medical.json"
    name, description = "医療専門知識データセット", "医学診断と治療に関する専門的な質問応答データ"
    assert main(["data", "import", str(src), "--name", name, "--description", description]) == 0
    capsys.readouterr()
    assert main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"{name}  instruction  20") for line in lines), lines
    assert "…" not in "".join(lines)
    # its creation's date and time on one line: `2026-11-27` over `10:18` wrapped (QA)
    row = rf"{name}  instruction  20 +\d{{4}}-\d\d-\d\d \d\d:\d\d  "
    assert any(re.match(row, line) for line in lines), lines
    assert max(cell_len(line) for line in lines) <= 80


def test_show_puts_a_japanese_description_on_its_own_line(home, monkeypatch, capsys):
    """At 80 columns the head read `医療専門知識データセット  instruction, 20 records  -` with
    the description wrapped below it (a QA finding): the description has its own line."""
    monkeypatch.setenv("COLUMNS", "80")
    src = REPO / "tutorial" / "datasets" / "level3_advanced_medical.json"
    name, description = "医療専門知識データセット", "医学診断と治療に関する専門的な質問応答データ"
    assert main(["data", "import", str(src), "--name", name, "--description", description]) == 0
    capsys.readouterr()
    assert main(["data", "show", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"{name}  instruction, 20 records", f"  {description}"], lines[:2]


def test_a_shift_jis_file_is_named_as_such(home, tmp_path, capsys):
    """A file Windows saved in Shift_JIS was refused as "not valid UTF-8 (byte 0x93 at offset
    18)" (a QA finding): the error names the encoding; a Latin-1 file is not taken for it."""
    sjis = tmp_path / "医療.json"
    sjis.write_bytes(json.dumps(GOOD, ensure_ascii=False).encode("cp932"))
    assert main(["data", "import", str(sjis)]) == 3
    err = capsys.readouterr().err.strip()
    assert err == (
        f"mlxlora: error: {sjis}: line 1: not valid UTF-8 (byte 0x93 at offset 18): it looks "
        "like Shift_JIS (cp932, as Windows tools save Japanese); save the file as UTF-8"
    )
    latin = tmp_path / "fiancée.json"  # é before e reads as a kanji in cp932
    latin.write_bytes('[{"text": "Fiancée"}]'.encode("latin-1"))
    assert main(["data", "import", str(latin)]) == 3
    assert "Shift_JIS" not in capsys.readouterr().err
    assert stored(home) == []


def test_name_defaults_to_the_stem_in_any_language(home, tmp_path, capsys):
    src = jsonl(tmp_path / "医療専門知識データセット.jsonl", GOOD)
    assert main(["data", "import", str(src)]) == 0
    assert stored(home) == ["医療専門知識データセット"]


def test_import_list_show_rm(home, tmp_path, capsys):
    src = jsonl(tmp_path / "med.jsonl", GOOD)
    assert main(["data", "import", str(src), "--name", "med", "--description", "医療 QA"]) == 0
    assert "imported med: 3 instruction records" in capsys.readouterr().out

    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "med" in out and "instruction" in out and "医療 QA" in out and " 3 " in out

    assert main(["data", "show", "med", "--terms", "medical"]) == 0
    out = capsys.readouterr().out
    assert "length per record" in out and "chars" in out
    assert "histogram (chars per record)" in out and "█" in out
    assert "exact duplicates: 1 (record 3 repeats 2)" in out
    assert "hits per 1,000 answer characters" in out and "血糖値 1" in out

    assert main(["data", "show", "med", "--json", "--terms", "medical"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 3 and report["type"] == "instruction"
    assert report["duplicates"]["records"] == [3]
    assert report["meta"]["description"] == "医療 QA"
    td = report["term_density"]
    # answers: 血糖値 (1 hit), then "hemoglobin" no, "symptom" (1 hit) in each English answer
    assert td["hits"] == 3 and td["records_with_term"] == 3

    assert main(["data", "rm", "med"]) == 0
    assert "removed dataset med" in capsys.readouterr().out
    assert stored(home) == []
    assert main(["data", "list"]) == 0
    assert "no datasets yet" in capsys.readouterr().out


def test_import_name_defaults_to_stem_and_type_flag(home, tmp_path, capsys):
    src = jsonl(tmp_path / "notes.jsonl", [{"text": "a", "instruction": "b", "output": "c"}])
    assert main(["data", "import", str(src)]) == 3
    assert "ambiguous format" in capsys.readouterr().err
    assert main(["data", "import", str(src), "--type", "text"]) == 0
    assert stored(home) == ["notes"]


def test_show_unknown_and_file_without_storing(home, tmp_path, capsys):
    assert main(["data", "show", "nope"]) == 3
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    src = jsonl(tmp_path / "loose.jsonl", GOOD)
    assert main(["data", "show", str(src), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 3
    assert stored(home) == []
    assert main(["data", "show", str(tmp_path / "gone.jsonl")]) == 3
    assert "file not found" in capsys.readouterr().err


def test_a_folder_or_a_blank_name_where_a_file_is_expected_says_so(
    home, tmp_path, capsys, monkeypatch
):
    folder = tmp_path / "医療 データ.jsonl"
    folder.mkdir()
    assert main(["data", "show", str(folder)]) == 3
    err = capsys.readouterr().err
    assert err == f"mlxlora: error: {folder}: is a directory, expected a .json or .jsonl file\n"

    monkeypatch.chdir(tmp_path)  # a blank FILE read as "." here: ": is a directory"
    with pytest.raises(SystemExit) as exit_:
        main(["data", "import", ""])
    assert exit_.value.code == 2
    assert "argument FILE: the value is blank" in capsys.readouterr().err
    assert stored(home) == []


@pytest.mark.parametrize("flag", ["--model", "--terms"])
def test_a_blank_model_or_term_list_for_show_is_refused(home, tmp_path, capsys, flag):
    """`data show D --model "$M"` with M unset showed no token counts (no terms), as if the
    option were left out, without a word."""
    with pytest.raises(SystemExit) as exit_:
        main(["data", "show", str(jsonl(tmp_path / "d.jsonl", GOOD)), flag, " "])
    assert exit_.value.code == 2
    assert f"argument {flag}: the value is blank" in capsys.readouterr().err


def test_show_terms_file_and_missing_terms(home, tmp_path, capsys):
    src = jsonl(tmp_path / "med.jsonl", GOOD)
    terms = tmp_path / "mine.txt"
    terms.write_text("hemoglobin\n血糖\n", "utf-8")
    assert main(["data", "show", str(src), "--json", "--terms", str(terms)]) == 0
    td = json.loads(capsys.readouterr().out)["term_density"]
    assert td["source"] == "mine.txt" and td["hits"] == 3
    assert main(["data", "show", str(src), "--terms", str(tmp_path / "no.txt")]) == 3
    assert "terms file not found" in capsys.readouterr().err


def test_show_with_model_counts_tokens(home, tmp_path, capsys):
    from mlxlora.commands.data import load_tokenizer

    recs = [{"text": "a a a"}, {"text": "the capital of France is Paris " * 3}, {"text": "a"}]
    tokenizer = load_tokenizer("builtin:tiny")
    limit = len(tokenizer.encode(recs[0]["text"])) + 1
    # Tokens are counted on at most 8 characters per token of max_length: enough to flag.
    counts = [len(tokenizer.encode(r["text"][: 8 * limit])) for r in recs]
    assert counts[1] > limit
    src = jsonl(tmp_path / "t.jsonl", recs)
    args = ["data", "show", str(src), "--model", "builtin:tiny", "--max-length", str(limit)]
    assert main(args + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"]["max"] == max(counts) and report["tokens"]["min"] == min(counts)
    assert report["histogram"]["unit"] == "tokens"
    assert report["too_long"] == {"max_length": limit, "count": 1, "records": [2]}
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "tokens" in out and f"longer than {limit} tokens: 1 (records 2)" in out


def test_show_takes_max_length_and_model_from_a_config(home, tmp_path, capsys):
    recs = [{"text": "a a a"}, {"text": "the capital of France is Paris " * 3}]
    src = jsonl(tmp_path / "t.jsonl", recs)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: builtin:tiny\ndata:\n  dataset: t.jsonl\n  max_length: 9\n")
    assert main(["data", "show", str(src), "--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"] is not None  # the config's model counted them
    assert report["too_long"] == {"max_length": 9, "count": 1, "records": [2]}
    assert main(["data", "show", str(src), "--config", str(cfg), "--max-length", "200"]) == 0
    assert "longer than 200 tokens: 0" in capsys.readouterr().out
    assert main(["data", "show", str(src)]) == 0
    assert "tokens: pass --model REF (e.g. builtin:smollm2-135m)" in capsys.readouterr().out
    assert main(["data", "show", str(src), "--config", str(tmp_path / "none.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err
    # a model the config names that is not there: the config named, as `train` names it
    cfg.write_text("model: /no/such/model\ndata:\n  dataset: t.jsonl\n")
    assert main(["data", "show", str(src), "--config", str(cfg)]) == 4
    assert capsys.readouterr().err.startswith(f"mlxlora: error: {cfg}: /no/such/model")


def caution_records(n=10):
    """n answers; 8 in 10 end with the same caution line."""
    caution = "詳しくは医師に相談してください。"
    return [
        {"instruction": f"質問{i}", "output": f"症例{i}は糖尿病です。" + (caution if i % 5 else "")}
        for i in range(n)
    ]


def test_show_reports_boilerplate_and_density_without_it_at_80_columns(
    home, tmp_path, capsys, monkeypatch
):
    from rich.cells import cell_len

    monkeypatch.setenv("COLUMNS", "80")
    src = jsonl(tmp_path / "caution.jsonl", caution_records())
    assert main(["data", "show", str(src), "--terms", "medical"]) == 0
    out = capsys.readouterr().out
    assert max(cell_len(line) for line in out.splitlines()) <= 80, out
    assert "boilerplate sentences: 1" in out
    assert " 80%  詳しくは医師に相談してください。" in out
    # 10 糖尿病 + 8 医師 hits; the 8 医師 sit in the caution line (each line unwrapped)
    assert "\n  18 hits, 8 of them (44%) in boilerplate sentences\n" in out
    assert "\n  without boilerplate: 100.00 per 1,000 characters, 100% of records\n" in out
    assert "tokens: pass --model REF" in out


def test_huge_record_warns_at_import_and_is_analysed_up_to_max_length(home, tmp_path, capsys):
    from mlxlora.commands.data import load_tokenizer

    huge = "The capital of France is Paris. " * 650_000  # 20,800,000 characters
    src = jsonl(tmp_path / "big.jsonl", [{"text": "short"}, {"text": huge}])
    assert main(["data", "import", str(src), "--name", "big"]) == 0
    out = capsys.readouterr().out
    assert f"line 2 is {len(huge):,} characters; training truncates it to data.max_length" in out
    assert "imported big: 2 text records" in out
    args = ["data", "show", "big", "--model", "builtin:tiny", "--max-length", "100", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    capped = len(load_tokenizer("builtin:tiny").encode(huge[:800]))  # 8 characters per token
    assert report["tokens"]["max"] == capped
    assert report["chars"]["max"] == len(huge)
    assert report["too_long"] == {"max_length": 100, "count": 1, "records": [2]}
    assert main(args[:-1]) == 0
    out = capsys.readouterr().out
    assert "tokens counted on the first 800 characters of a record (1 longer)" in out


def test_show_with_missing_model_dir(home, tmp_path, capsys):
    src = jsonl(tmp_path / "t.jsonl", GOOD)
    assert main(["data", "show", str(src), "--model", str(tmp_path / "nomodel")]) == 4
    err = capsys.readouterr().err
    assert "nomodel" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def run_cli(*args, home):
    env = {**os.environ, "MLXLORA_HOME": str(home)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "mlxlora", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_subprocess_bad_inputs(tmp_path):
    home = tmp_path / "home"
    for case in ("wrong_type", "non_utf8", "malformed_json"):
        name, content, expected = BAD_INPUTS[case]
        path = tmp_path / name
        path.write_bytes(content)
        proc = run_cli("data", "import", str(path), "--name", "x", home=home)
        assert proc.returncode == 3, proc.stderr
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0]
        assert all(part in lines[0] for part in expected), lines[0]
        assert stored(home) == []


def test_subprocess_import_then_duplicate(tmp_path):
    home = tmp_path / "home"
    src = jsonl(tmp_path / "med.jsonl", GOOD)
    ok = run_cli("data", "import", str(src), "--name", "med", home=home)
    assert ok.returncode == 0, ok.stderr
    dup = run_cli("data", "import", str(src), "--name", "med", home=home)
    assert dup.returncode == 3
    assert dup.stderr.strip().splitlines() == [
        "mlxlora: error: dataset 'med' already exists; choose another --name or remove it first "
        "(`mlxlora data rm med`)"
    ]
    assert stored(home) == ["med"]


def test_subprocess_name_typed_in_a_shift_jis_terminal(tmp_path):
    """A name whose bytes are not UTF-8 (医療 typed in a Shift_JIS terminal) is refused on one
    line naming it, and nothing is stored; it was a UnicodeEncodeError traceback."""
    home = tmp_path / "home"
    src = jsonl(tmp_path / "med.jsonl", GOOD)
    sjis = "医療".encode("shift_jis")
    proc = run_cli("data", "import", str(src), "--name", sjis, home=home)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "mlxlora: error: argument '\\x88\\xe3\\x97\\xc3' is not UTF-8 text; set the terminal's "
        "encoding to UTF-8 (or rename the file)"
    ]
    assert stored(home) == []
