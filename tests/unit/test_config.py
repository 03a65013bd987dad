"""Config loading, overrides and validation; every shipped preset loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlxlora import config
from mlxlora.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_overrides_are_typed():
    cfg = config.load(
        None,
        [
            "data.dataset=x",
            "lora.rank=16",
            "training.learning_rate=5e-5",
            "lora.target_modules=[q_proj,k_proj]",
        ],
    )
    assert cfg.lora.rank == 16 and cfg.training.learning_rate == 5e-5
    assert cfg.lora.target_modules == ["q_proj", "k_proj"]
    assert isinstance(cfg.training.learning_rate, float)


def test_every_problem_is_listed_with_key_value_and_allowed():
    with pytest.raises(ConfigError) as err:
        config.from_dict(
            {
                "data": {"dataset": "x"},
                "lora": {"rank": 0, "dropout": 1.5, "target_modules": ["q proj"]},
                "training": {"schedule": "exp", "batch_size": 0},
            }
        )
    text = str(err.value)
    for key in (
        "lora.rank",
        "lora.dropout",
        "lora.target_modules",
        "training.schedule",
        "training.batch_size",
    ):
        assert key in text
    assert "'exp'" in text and "constant | linear | cosine | staged" in text
    assert len(err.value.problems) == 5


def test_unknown_and_mistyped_keys_are_errors():
    with pytest.raises(ConfigError) as err:
        config.from_dict(
            {"data": {"dataset": "x"}, "lora": {"rnk": 8}, "training": {"epochs": "many"}}
        )
    text = str(err.value)
    assert "lora.rnk: unknown key" in text and "training.epochs: expected a number" in text
    # Python's "expected float" and "expected int" were the words a newcomer read
    with pytest.raises(ConfigError) as err:
        config.from_dict({"data": {"dataset": "x"}, "training": {"learning_rate": "学習率"}})
    assert err.value.problems == ["training.learning_rate: expected a number, got '学習率'"]
    with pytest.raises(ConfigError) as err:
        config.from_dict({"data": {"dataset": "x"}, "lora": {"rank": 8.5}})
    assert err.value.problems == ["lora.rank: expected a whole number, got 8.5"]


def test_unknown_keys_and_bad_values_are_reported_together():
    with pytest.raises(ConfigError) as err:
        config.from_dict(
            {
                "data": {"dataset": "x", "max_len": 512, "max_length": None},
                "lora": {"rank": 0, "target_modules": [3, "q_proj"], "alpha": "big"},
                "training": {"batch_size": 0, "epochs": None, "stages": 5},
            }
        )
    assert err.value.problems == [
        "data.max_len: unknown key (did you mean data.max_length? allowed: completions_only,"
        " dataset, max_length, val_split, validation)",
        "data.max_length: expected a whole number, got None",
        "lora.alpha: expected a number, got 'big'",
        "lora.target_modules[0]: expected str, got 3",
        "training.epochs: expected a number, got None",
        "training.stages: expected a list, got 5",
        "lora.rank: 0 is not allowed (>= 1)",
        "training.batch_size: 0 is not allowed (>= 1)",
    ]


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"data": {"dataset": 5}}, "data.dataset: expected str, got 5"),
        ({"data": 5}, "data: expected a mapping, got 5"),
    ],
)
def test_a_mistyped_key_is_reported_once_not_again_for_its_default(data, problem):
    with pytest.raises(ConfigError) as err:
        config.from_dict(data)
    assert err.value.problems == [problem]


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_compile_is_true_false_or_auto(value):
    cfg = config.from_dict({"data": {"dataset": "x"}, "training": {"compile": value}})
    assert cfg.training.compile == value
    assert config.from_dict({"data": {"dataset": "x"}}).training.compile == "auto"


@pytest.mark.parametrize(
    "value, problem",
    [
        ("yes", "training.compile: 'yes' is not allowed (auto | true | false)"),
        (1, "training.compile: expected bool or str, got 1"),
    ],
)
def test_compile_refuses_other_values(value, problem):
    with pytest.raises(ConfigError) as err:
        config.from_dict({"data": {"dataset": "x"}, "training": {"compile": value}})
    assert err.value.problems == [problem]


def test_a_bad_value_from_the_command_line_is_not_blamed_on_the_file(tmp_path):
    path = tmp_path / "設定.yaml"
    path.write_text("data:\n  dataset: x\nlora:\n  rank: 8\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        config.load(path, ["lora.rank=0", "training.epochs=2"])
    assert str(err.value) == (
        f"{path} (with --set lora.rank, training.epochs): lora.rank: 0 is not allowed (>= 1)"
    )


@pytest.mark.parametrize("rank", [256, 512, 4096, config.MAX_LORA_RANK])
def test_ranks_real_adapters_use_are_allowed(rank):
    assert config.from_dict({"data": {"dataset": "x"}, "lora": {"rank": rank}}).lora.rank == rank


@pytest.mark.parametrize("rank", [config.MAX_LORA_RANK + 1, 99999999999])
def test_an_absurd_rank_is_refused_naming_the_field(rank):
    """99999999999 passed the check and mlx raised an OverflowError making the LoRA matrices."""
    with pytest.raises(ConfigError) as err:
        config.from_dict({"data": {"dataset": "x"}, "lora": {"rank": rank}})
    assert err.value.problems == [f"lora.rank: {rank} is not allowed (<= 65536)"]


@pytest.mark.parametrize("budget", ["0GB", "0B", "-1GB", "lots"])
def test_a_memory_budget_must_be_a_size_above_zero(budget):
    with pytest.raises(ConfigError) as err:
        config.from_dict({"data": {"dataset": "x"}, "training": {"memory_budget": budget}})
    assert err.value.problems == [
        f"training.memory_budget: {budget!r} is not allowed (a size above 0 such as 12GB or 512MB)"
    ]


@pytest.mark.parametrize(
    ("yaml_budget", "overrides"),
    [
        ("12", []),
        ('"12"', []),
        ("'0'", []),
        ("", ["training.memory_budget=12"]),
        ("", ["training.memory_budget=1.5"]),
        ("", ["training.memory_budget='12'"]),
    ],
)
def test_a_memory_budget_without_its_unit_says_how_to_write_it(tmp_path, yaml_budget, overrides):
    """YAML reads a bare 12 as a number: the error said only "expected str, got 12"; a quoted
    "12" passed as 12 bytes, so the run planned for a budget no one means."""
    path = tmp_path / "c.yaml"
    budget = f"  memory_budget: {yaml_budget}\n" if yaml_budget else ""
    path.write_text(f"data:\n  dataset: x\ntraining:\n{budget}  epochs: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        config.load(path, overrides)
    got = (yaml_budget or overrides[0].partition("=")[2]).replace('"', "'")
    assert err.value.problems == [
        f"training.memory_budget: expected a size with its unit, such as 12GB or 512MB, got {got}"
    ]


@pytest.mark.parametrize("name", ["qkv_proj", "gate_up_proj", "mlp.c_fc", "c_proj", "w1"])
def test_a_model_s_own_module_names_are_valid_targets(name):
    cfg = config.from_dict({"data": {"dataset": "x"}, "lora": {"target_modules": [name]}})
    assert cfg.lora.target_modules == [name]


@pytest.mark.parametrize("name", ["", "q proj", "mlp.", "1st", "../x", "q_proj;"])
def test_targets_that_cannot_name_a_module_are_refused(name):
    with pytest.raises(ConfigError, match=r"lora.target_modules: .* is not allowed \(q_proj, "):
        config.from_dict({"data": {"dataset": "x"}, "lora": {"target_modules": [name]}})


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  dataset: x\nlora:\n  rank: 8\n   alpha: 16\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == (
        f"{path}: not valid YAML at line 5, column 9: mapping values are not allowed here"
    )


def test_a_tab_in_the_indentation_says_to_indent_with_spaces(tmp_path):
    path = tmp_path / "tab.yaml"
    path.write_text("data:\n\tdataset: x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == (
        f"{path}: not valid YAML at line 2, column 1: found character '\\t' that cannot start"
        " any token (YAML indents with spaces, not tabs)"
    )


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    """PyYAML keeps the last of two `epochs:` in a section: the run trained the pasted
    value without a word (a QA finding). A `<<:` merge may still be overridden."""
    path = tmp_path / "twice.yaml"
    path.write_text("data:\n  dataset: x\ntraining:\n  epochs: 6\n  epochs: 60\n", "utf-8")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == (
        f"{path}: not valid YAML at line 5, column 3: epochs is given twice (first on line 4)"
    )
    merge = "a: &x {k: 1}\nb:\n  <<: *x\n  k: 2\n"
    assert yaml.load(merge, Loader=config._UniqueKeyLoader) == {"a": {"k": 1}, "b": {"k": 2}}


def test_staged_schedule_sets_epochs_from_stages():
    cfg = config.from_dict(
        {
            "data": {"dataset": "x"},
            "training": {
                "schedule": "staged",
                "stages": [
                    {"learning_rate": 1e-4, "epochs": 2},
                    {"learning_rate": 1e-5, "epochs": 1},
                ],
            },
        }
    )
    assert cfg.training.epochs == 3
    with pytest.raises(ConfigError, match="training.stages"):
        config.from_dict({"data": {"dataset": "x"}, "training": {"schedule": "staged"}})


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.sub=value"):
        config.load(None, ["lora.rank"])


def test_a_config_not_in_utf8_names_the_line_and_the_fix(tmp_path):
    """Shift-JIS got Python's codec message with a byte position in the whole file."""
    path = tmp_path / "sjis.yaml"
    path.write_bytes("model: builtin:tiny\nname: 医療モデル\n".encode("shift_jis"))
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == (
        f"{path}: line 2: not valid UTF-8 (byte 0x88 at offset 26): it looks like Shift_JIS "
        "(cp932, as Windows tools save Japanese); save the file as UTF-8"
    )


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = config.load(REPO / "configs" / "quickstart.yaml")
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert config.load(path) == cfg
    assert Path(cfg.data.dataset).is_absolute() and Path(cfg.data.dataset).exists()


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads_and_opens_with_its_command(preset):
    cfg = config.load(preset)
    assert preset.read_text().splitlines()[0] == f"# mlxlora train configs/{preset.name}"
    assert cfg.name


def test_dataset_files_are_relative_to_the_config_and_normalised():
    """configs/quickstart.yaml names ../tutorial/data/quickstart.jsonl: runs show that path
    without the `configs/..` detour."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    cfg = config.load(repo / "configs" / "quickstart.yaml")
    assert cfg.data.dataset == str(repo / "tutorial" / "data" / "quickstart.jsonl")


def test_a_config_that_is_not_there_is_named_once():
    with pytest.raises(ConfigError) as caught:
        config.load("無い.yaml")
    assert str(caught.value) == "無い.yaml: file not found"  # it said the path twice


def test_a_single_name_where_a_list_goes_shows_how_to_write_the_list():
    """`--set lora.target_modules=q_proj` said only "expected a list" (a QA finding)."""
    with pytest.raises(ConfigError) as err:
        config.load(None, ["data.dataset=x", "lora.target_modules=q_proj"])
    assert "expected a list, got 'q_proj' (a list in brackets: [q_proj])" in str(err.value)
    cfg = config.load(None, ["data.dataset=x", "lora.target_modules=[q_proj]"])
    assert cfg.lora.target_modules == ["q_proj"]
