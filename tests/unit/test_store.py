"""The dataset store in $MLXLORA_HOME/datasets."""

import json
import os
import subprocess
import sys
import unicodedata

import pytest

from mlxlora.data import refs, store
from mlxlora.data.formats import load_records
from mlxlora.errors import DataError

RECORDS = [
    {"instruction": "糖尿病とは？", "output": "血糖値が高い状態が続く病気です。"},
    {"instruction": "Define fever.", "input": "", "output": "A raised body temperature."},
]


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("MLXLORA_HOME", str(h))
    return h


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def stored(home):
    root = home / "datasets"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_import_writes_records_and_meta(home, tmp_path):
    src = write_jsonl(tmp_path / "med.jsonl", RECORDS)
    meta, warnings = store.import_dataset(src, "med", "medical QA")
    assert warnings == []
    d = home / "datasets" / "med"
    assert meta.name == "med" and meta.type == "instruction" and meta.records == 2
    assert meta.description == "medical QA"
    assert meta.source == str(src.resolve())
    on_disk = json.loads((d / "meta.json").read_text("utf-8"))
    assert on_disk == meta.to_dict()
    assert set(on_disk) == {"name", "description", "type", "records", "sha256", "source", "created"}
    import hashlib

    assert hashlib.sha256((d / "records.jsonl").read_bytes()).hexdigest() == meta.sha256
    assert store.records_sha256(RECORDS) == meta.sha256
    assert "T" in meta.created  # ISO time
    assert stored(home) == ["med"]


def test_load_list_remove(home, tmp_path):
    store.import_dataset(write_jsonl(tmp_path / "b.jsonl", RECORDS), "b")
    store.import_dataset(write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}]), "a", kind="text")
    assert [m.name for m in store.list_datasets()] == ["a", "b"]
    meta, records = store.load_dataset("b")
    assert meta.name == "b" and records == RECORDS
    store.remove_dataset("a")
    assert [m.name for m in store.list_datasets()] == ["b"]
    assert stored(home) == ["b"]


def test_unknown_name_lists_available(home, tmp_path):
    with pytest.raises(DataError, match="no datasets yet"):
        store.load_dataset("nope")
    store.import_dataset(write_jsonl(tmp_path / "x.jsonl", RECORDS), "x")
    store.import_dataset(write_jsonl(tmp_path / "y.jsonl", RECORDS), "y")
    for fn in (store.load_dataset, store.remove_dataset):
        with pytest.raises(DataError, match=r"unknown dataset 'nope' \(available: x, y\)"):
            fn("nope")


@pytest.mark.parametrize("typed", ["医療ＱＡ", "医療qa"])
def test_a_name_typed_in_full_width_or_another_case_is_pointed_to_the_stored_one(
    home, tmp_path, typed
):
    """An IME's full-width 医療ＱＡ for the stored 医療QA read `unknown dataset '医療ＱＡ'
    (available: 医療QA)`: two names that look alike, and no word on which was meant."""
    store.import_dataset(write_jsonl(tmp_path / "x.jsonl", RECORDS), "医療QA")
    store.import_dataset(write_jsonl(tmp_path / "y.jsonl", RECORDS), "y")
    with pytest.raises(DataError) as err:
        store.load_dataset(typed)
    assert str(err.value) == (
        f"unknown dataset '{typed}' (did you mean 医療QA? available: y, 医療QA)"
    )


def test_duplicate_name(home, tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    store.import_dataset(src, "d")
    before = (home / "datasets" / "d" / "meta.json").read_text()
    with pytest.raises(DataError, match="'d' already exists"):
        store.import_dataset(src, "d")
    assert (home / "datasets" / "d" / "meta.json").read_text() == before
    assert stored(home) == ["d"]


@pytest.mark.parametrize(
    "name, why",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("..", "starts with a dot"),
        ("../escape", "starts with a dot"),
        (".hidden", "starts with a dot"),
        ("a/b", "'/'"),
        ("医療/../../x", "'/'"),
        ("a\\b", "'\\\\'"),
        ("tab\there", "U+0009"),
        ("x" * 201, "longer than 200 bytes"),
        ("医" * 67, "longer than 200 bytes"),
    ],
)
def test_invalid_names(home, tmp_path, name, why):
    src = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    with pytest.raises(DataError, match="invalid dataset name") as info:
        store.import_dataset(src, name)
    assert why in str(info.value) and "\n" not in str(info.value)
    assert stored(home) == [] and not (home / "escape").exists() and not (tmp_path / "x").exists()
    with pytest.raises(DataError, match="invalid dataset name"):
        store.load_dataset(name)


NAMES = ["医療専門知識データセット", "données-été", "Ärzte Modell 2", "med_v2 医療", "x" * 200]


@pytest.mark.parametrize("name", NAMES)
def test_names_in_any_language(home, tmp_path, name):
    src = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    typed = unicodedata.normalize("NFD", name)  # as macOS hands over an accented name
    meta, _ = store.import_dataset(src, typed)
    assert meta.name == name and stored(home) == [name]
    assert store.exists(typed) and store.exists(name)
    assert store.load_dataset(typed)[1] == RECORDS
    assert refs.resolve(typed)[0].name == name
    with pytest.raises(DataError, match="already exists"):
        store.import_dataset(src, name)
    assert [m.name for m in store.list_datasets()] == [name]
    assert store.remove_dataset(typed).name == name
    assert stored(home) == []


def test_failed_import_stores_nothing(home, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", RECORDS + [{"instruction": "q", "output": ""}])
    with pytest.raises(DataError, match=r'bad.jsonl: line 3: field "output": is empty'):
        store.import_dataset(bad, "bad")
    assert stored(home) == []


def test_write_failure_leaves_no_temp_dir(home, tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "d.jsonl", RECORDS)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "rename", boom)
    with pytest.raises(DataError, match="cannot store dataset 'd': disk full"):
        store.import_dataset(src, "d")
    assert stored(home) == []
    assert store.list_datasets() == []


def test_explicit_type_is_validated(home, tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    with pytest.raises(DataError, match='field "messages": missing'):
        store.import_dataset(src, "d", kind="chat")
    with pytest.raises(DataError, match="unknown dataset type"):
        store.import_dataset(src, "d", kind="tsv")
    assert stored(home) == []


def test_tampered_records_are_detected(home, tmp_path):
    store.import_dataset(write_jsonl(tmp_path / "d.jsonl", RECORDS), "d")
    with open(home / "datasets" / "d" / "records.jsonl", "a") as f:
        f.write('{"instruction": "x", "output": "y"}\n')
    with pytest.raises(DataError, match="sha256 mismatch"):
        store.load_dataset("d")


def test_resolve_by_name_and_file(home, tmp_path):
    src = write_jsonl(tmp_path / "my data.jsonl", RECORDS)
    meta, records = refs.resolve(str(src))  # imported on first use under its stem
    assert meta.name == "my-data" and records == RECORDS
    again, _ = refs.resolve(str(src))  # same content: reused
    assert again.created == meta.created and stored(home) == ["my-data"]
    by_name, _ = refs.resolve("my-data")
    assert by_name.sha256 == meta.sha256


def test_resolve_same_records_from_json_array_reuses(home, tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", RECORDS)
    (tmp_path / "sub").mkdir()
    arr = tmp_path / "sub" / "qa.json"
    arr.write_text(json.dumps(RECORDS, indent=2, ensure_ascii=False), "utf-8")
    m1, _ = refs.resolve(str(tmp_path / "qa.jsonl"))
    m2, _ = refs.resolve(str(arr))
    assert m1.name == m2.name == "qa"
    assert stored(home) == ["qa"]


def test_a_file_whose_records_are_stored_under_any_name_reuses_that_dataset(home, tmp_path):
    """The tutorial imports its file under a Japanese name, then the presets name the file:
    one dataset, not the same records twice."""
    src = write_jsonl(tmp_path / "medical.jsonl", RECORDS)
    store.import_dataset(src, "医療QA")
    copy = write_jsonl(tmp_path / "copy of medical.jsonl", RECORDS)  # a second copy, same records
    assert refs.resolve(str(src))[0].name == refs.resolve(str(copy))[0].name == "医療QA"
    assert stored(home) == ["医療QA"]
    _, said = store.import_dataset(src, "medical")  # twice on purpose: the stem is preferred
    assert said == [f"{src}: the same records are stored already as dataset '医療QA'"]
    assert refs.resolve(str(src))[0].name == "medical"
    assert refs.resolve(str(copy))[0].name == "医療QA"  # else the oldest


def test_resolve_changed_file_gets_hashed_name(home, tmp_path):
    src = write_jsonl(tmp_path / "qa.jsonl", RECORDS)
    refs.resolve(str(src))
    write_jsonl(src, RECORDS[:1])
    meta, records = refs.resolve(str(src))
    digest = store.records_sha256(RECORDS[:1])
    assert meta.name == f"qa-{digest[:8]}" and records == RECORDS[:1]
    again, _ = refs.resolve(str(src))
    assert again.name == meta.name
    assert stored(home) == ["qa", f"qa-{digest[:8]}"]


def test_resolve_errors(home, tmp_path):
    with pytest.raises(DataError, match="file not found"):
        refs.resolve(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="unknown dataset 'nothing'"):
        refs.resolve("nothing")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": ""}\n')
    with pytest.raises(DataError, match='line 1: field "text": is empty'):
        refs.resolve(str(bad))
    assert stored(home) == []


def test_stem_name():
    assert store.stem_name("/x/My Data.v2.JSONL") == "My-Data.v2"
    assert store.stem_name("医療専門知識データセット.json") == "医療専門知識データセット"
    assert store.stem_name(unicodedata.normalize("NFD", "été.jsonl")) == "été"
    assert store.stem_name("_under.jsonl") == "under"
    assert store.stem_name("a?b:c.jsonl") == "a-b-c"
    assert store.stem_name("???.json") == "dataset"
    long = store.stem_name("医" * 100 + ".jsonl")
    assert long == "医" * 66  # 198 bytes: whole characters within the 200-byte limit


def test_resolve_file_with_japanese_name(home, tmp_path):
    src = write_jsonl(tmp_path / "医療専門知識データセット.jsonl", RECORDS)
    meta, records = refs.resolve(str(src))
    assert meta.name == "医療専門知識データセット" and records == RECORDS
    write_jsonl(src, RECORDS[:1])
    digest = store.records_sha256(RECORDS[:1])
    assert refs.resolve(str(src))[0].name == f"医療専門知識データセット-{digest[:8]}"


def test_resolve_survives_concurrent_import_of_same_file(home, tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "qa.jsonl", RECORDS)
    real = refs.import_records

    def racing(records, name, kind, description="", source=""):
        real(records, name, kind, "the other process", source)  # another process wins the race
        return real(records, name, kind, description, source)  # ours then finds the name taken

    monkeypatch.setattr(refs, "import_records", racing)
    meta, records = refs.resolve(str(src))
    assert meta.name == "qa" and meta.description == "the other process" and records == RECORDS
    assert stored(home) == ["qa"]


def test_foreign_directory_in_the_way(home, tmp_path):
    (home / "datasets" / "d").mkdir(parents=True)
    (home / "datasets" / "d" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not a dataset"):
        store.import_dataset(write_jsonl(tmp_path / "d.jsonl", RECORDS), "d")
    assert stored(home) == ["d"]
    assert store.list_datasets() == []


def test_config_finds_a_dataset_by_a_name_typed_decomposed(home, tmp_path):
    from mlxlora import config, prepare

    store.import_dataset(write_jsonl(tmp_path / "d.jsonl", RECORDS), "données médicales")
    typed = unicodedata.normalize("NFD", "données médicales")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"data:\n  dataset: {typed}\n  validation: {typed}\n", "utf-8")
    train, val, pinned = prepare.load_records(config.load(cfg_file))
    assert pinned.data.dataset == pinned.data.validation == "données médicales"  # composed
    assert len(train) == len(val) == 2
    assert stored(home) == ["données médicales"]


def test_each_config_field_watches_the_file_it_named(home, tmp_path):
    """Training and validation files with the same records both pin to the dataset stored
    first from a third file: an edit of either named file warns, an edit of the third (which
    this run never named) does not."""
    from mlxlora import config, prepare
    from mlxlora.run_datasets import changed_sources, source_files

    first = write_jsonl(tmp_path / "x.jsonl", RECORDS)
    store.import_dataset(first, "memo")
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    val = write_jsonl(tmp_path / "val.jsonl", RECORDS)
    cfg = config.from_dict({"data": {"dataset": str(train), "validation": str(val)}})
    _, _, pinned = prepare.load_records(cfg)
    assert pinned.data.dataset == pinned.data.validation == "memo"
    assert source_files(cfg.data) == {
        "data.dataset": str(train.resolve()),
        "data.validation": str(val.resolve()),
    }
    write_jsonl(first, RECORDS[:1])
    assert changed_sources(cfg.data, pinned.data, None) == []
    write_jsonl(train, RECORDS[:1])
    assert changed_sources(cfg.data, pinned.data, None) == [
        f"{train.resolve()} no longer holds the records of dataset memo, which this run trains "
        "on (a new run on the file trains on what it holds now)"
    ]
    named = config.from_dict({"data": {"dataset": "memo"}})  # only ever a name: its source
    assert "x.jsonl no longer holds" in changed_sources(named.data, named.data, None)[0]


def test_long_records_warn_with_their_location(tmp_path):
    big = "x" * (store.LONG_RECORD_CHARS + 1)
    p = write_jsonl(tmp_path / "d.jsonl", [RECORDS[0], {"instruction": "q", "output": big}])
    records = load_records(p)
    assert store.long_records(records, "instruction", "d.jsonl") == [
        f"d.jsonl: line 2 is {store.LONG_RECORD_CHARS + 3:,} characters; training truncates it to "
        "data.max_length tokens"
    ]
    assert store.long_records([{"text": "x" * store.LONG_RECORD_CHARS}], "text") == []
    many = store.long_records([{"text": big}] * 7, "text", "d")
    assert len(many) == 6 and many[0].startswith("d: record 1 is ")
    assert many[-1] == f"d: 2 more records are over {store.LONG_RECORD_CHARS:,} characters"


def test_a_stored_dataset_tells_when_its_source_file_changed(home, tmp_path):
    source = write_jsonl(tmp_path / "メモ.jsonl", RECORDS)
    meta, _ = refs.resolve(str(source))
    assert refs.source_changed(meta.name) is None
    write_jsonl(source, RECORDS[:1])
    assert refs.source_changed(meta.name) == (
        f"{source.resolve()} no longer holds the records of dataset メモ, which this run trains "
        "on (a new run on the file trains on what it holds now)"
    )
    source.write_text("{not json", encoding="utf-8")  # mid-edit: nothing to compare yet
    assert refs.source_changed(meta.name) is None
    source.unlink()
    assert refs.source_changed(meta.name) is None
    assert store.load_dataset("メモ")[1] == RECORDS  # the stored records never changed


def test_runs_using_a_dataset_see_its_name_typed_decomposed(home):
    from mlxlora import runs

    run = runs.runs_root() / "r-20260101-000000"
    run.mkdir(parents=True)
    typed = unicodedata.normalize("NFD", "données médicales")
    (run / "config.yaml").write_text(f"data:\n  validation: {typed}\n", encoding="utf-8")
    assert store.runs_using("données médicales") == [run.name]
    assert store.runs_using("autre") == []


def test_an_import_sweeps_what_killed_imports_left_and_spares_a_live_one(home, tmp_path):
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()  # its pid names no process now: a killed import's
    root = home / "datasets"
    killed = root / f".import-old.{child.pid}-abcdefgh"
    live = root / f".import-other.{os.getpid()}-abcdefgh"  # an import writing right now
    for path in (killed, live):
        path.mkdir(parents=True)
        (path / "records.jsonl").write_text("{}\n")
    store.import_dataset(write_jsonl(tmp_path / "med.jsonl", RECORDS), "med")
    assert stored(home) == [live.name, "med"]
