"""`mlxlora sweep`: a run per combination, queued one at a time, resumable, ranked."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
import yaml

from mlxlora import queue, queue_runner, sweep
from mlxlora.cli import main
from mlxlora.runview import read_config

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny.yaml")


def test_one_bad_value_queues_nothing(home, capsys):
    args = ["sweep", TINY, "--grid", "lora.rank=8,0", "--grid", "lora.dropout=0.05,1.5"]
    assert main([*args, "--name", "悪い", "--no-start"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlxlora: error: sweep 悪い: 4 problems: 悪い-rank8-dropout1.5: ")
    assert "悪い-rank0-dropout0.05: lora.rank: 0 is not allowed (>= 1)" in err
    assert len(err.splitlines()) == 1
    assert queue.jobs() == [] and sweep.sweep_names() == []


def test_a_blank_sweep_name_queues_nothing(home, capsys):
    """`--name ""` read as no --name: the runs were queued as tiny-sweep, a sweep the user
    may have run before with other values."""
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", TINY, "--grid", "lora.rank=4,8", "--name", "", "--no-start"])
    assert exit_.value.code == 2
    assert "argument --name: the value is blank" in capsys.readouterr().err
    assert queue.jobs() == [] and sweep.sweep_names() == []


def test_a_mistyped_grid_key_is_said_once_not_once_per_run(home, capsys):
    args = ["sweep", TINY, "--grid", "lora.rnak=4,8", "--grid", "lora.dropout=0,0.1,0.2"]
    assert main([*args, "--name", "typo", "--no-start"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "mlxlora: error: sweep typo: every run: lora.rnak: unknown key (did you mean lora.rank?"
        " allowed: alpha, dropout, num_layers, rank, target_modules)"
    )
    assert queue.jobs() == []


def test_a_grid_key_the_config_ignores_queues_nothing(home, capsys):
    """Under schedule staged the stages set the learning rate: a grid over it made runs that
    trained alike, without a word (a QA finding)."""
    staged = [
        "--set", "training.schedule=staged",
        "--set", 'training.stages=[{"epochs": 1, "learning_rate": 1e-3}]',
    ]  # fmt: skip
    args = ["sweep", TINY, *staged, "--grid", "lora.rank=4,8"]
    args += ["--grid", "training.learning_rate=1e-4,2e-4", "--name", "段階", "--no-start"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlxlora: error: sweep 段階: 2 problems: ")
    assert (
        "段階-rank4-learning_rate2e-4: trains exactly as 段階-rank4-learning_rate1e-4: under "
        "schedule staged the stages set training.learning_rate"
    ) in err
    assert queue.jobs() == []


def test_an_ab_test_crosses_configs_with_the_grid(home, tmp_path):
    a, b = tmp_path / "高表現力.yaml", tmp_path / "効率.yaml"
    base = yaml.safe_load(Path(TINY).read_text())
    base["data"]["dataset"] = str(REPO / "tutorial" / "data" / "quickstart.jsonl")
    a.write_text(yaml.safe_dump({**base, "lora": {**base["lora"], "rank": 16, "alpha": 32}}))
    b.write_text(yaml.safe_dump({**base, "lora": {**base["lora"], "rank": 12, "alpha": 24}}))
    members = sweep.plan("AB", [str(a), str(b)], [], [])
    assert [m.name for m in members] == ["AB-高表現力", "AB-効率"]
    members = sweep.plan("AB", [str(a), str(b)], ["training.epochs=5,4"], ["lora.dropout=0.1"])
    assert [m.name for m in members] == [
        "AB-高表現力-epochs5",
        "AB-高表現力-epochs4",
        "AB-効率-epochs5",
        "AB-効率-epochs4",
    ]
    loaded = sweep.validate("AB", members)
    assert [(c.lora.rank, c.training.epochs, c.lora.dropout) for c in loaded] == [
        (16, 5.0, 0.1),
        (16, 4.0, 0.1),
        (12, 5.0, 0.1),
        (12, 4.0, 0.1),
    ]
    assert {c.sweep for c in loaded} == {"AB"}
    assert (
        sweep.plan("s", [TINY], ["lora.target_modules=[q_proj]"], [])[0].name
        == "s-target_modules_q_proj_"
    )


@pytest.mark.parametrize("b_spelling", ["NFC", "NFD"])
def test_two_configs_of_one_file_name_are_refused_not_run_under_one_name(
    home, tmp_path, capsys, b_spelling
):
    """`sweep a/実験ガ.yaml --config b/実験ガ.yaml` queued two runs both named `…-実験ガ`: sweep
    status could not tell them apart, and a problem in one did not say which file. Also where
    one is spelled NFD (ガ as カ and ゙), as macOS spells file names."""
    files = []
    for folder, epochs, form in (("a", 6, "NFC"), ("b", 5, b_spelling)):
        (tmp_path / folder).mkdir()
        text = Path(TINY).read_text().replace("epochs: 6", f"epochs: {epochs}")
        text = text.replace("../tutorial", str(REPO / "tutorial"))
        files.append(tmp_path / folder / unicodedata.normalize(form, "実験ガ.yaml"))
        files[-1].write_text(text, encoding="utf-8")
    a, b = map(str, files)
    assert main(["sweep", a, "--config", b, "--name", "同名", "--no-start"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mlxlora: error: sweep: {b}: its runs would be named as those of {a} (同名-実験ガ); "
        "give each config a file name of its own"
    )
    assert queue.jobs() == []


@pytest.mark.slow
def test_a_sweep_runs_one_at_a_time_continues_and_is_ranked(home, capsys):
    args = ["sweep", TINY, "--grid", "lora.rank=4,8", "--set", "training.max_steps=2"]
    args += ["--name", "掃引", "--no-start"]
    assert main(args) == 0
    assert "2 of 2 runs queued" in capsys.readouterr().out
    first, second = queue.jobs()
    assert (first.name, second.name) == ("掃引-rank4", "掃引-rank8")
    queue.remove(second.id)  # as if the sweep had been interrupted before its second run
    assert queue_runner.work(idle_exit=0) == 1
    assert main(["sweep", "status", "掃引", "--json"]) == 0
    states = {m["run"]: m["state"] for m in json.loads(capsys.readouterr().out)["members"]}
    assert states == {"掃引-rank4": "finished", "掃引-rank8": "new"}
    assert main(args) == 0  # the same sweep again: continues
    out = capsys.readouterr().out
    assert "skipped (finished) 掃引-rank4" in out and "queued         掃引-rank8" in out
    assert main(args) == 0
    assert "skipped (queued) 掃引-rank8" in capsys.readouterr().out  # never queued twice
    other = ["sweep", TINY, "--grid", "lora.rank=4,16", "--name", "掃引", "--no-start"]
    assert main(other) == 5 and "exists with other configs" in capsys.readouterr().err
    assert queue_runner.work(idle_exit=0) == 1
    assert main(["sweep", "status", "掃引", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [m["state"] for m in shown["members"]] == ["finished", "finished"]
    ranked = shown["ranked"]
    assert sorted(r["run"] for r in ranked) == ["掃引-rank4", "掃引-rank8"]
    assert ranked[0]["cost"] <= ranked[1]["cost"] and ranked[0]["why"].startswith(ranked[0]["run"])
    for m in shown["members"]:
        cfg = read_config(Path(m["path"]) / "config.yaml")
        assert cfg["sweep"] == "掃引" and cfg["name"] == m["run"]
    assert main(["sweep", "status"]) == 0 and capsys.readouterr().out.strip() == "掃引"
    assert main(["compare", "--sweep", "掃引", "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in compared["runs"]] == ["掃引-rank4", "掃引-rank8"]
    assert compared["differences"] == {"lora.rank": [4, 8]}


def stopped_run(name: str, sweep_name: str) -> Path:
    """A run of the sweep stopped at step 2 with its checkpoint, written by hand."""
    from mlxlora import config, runs
    from mlxlora.events import EventWriter, RunFinished, RunStarted

    cfg = config.load(TINY, [f"name={name}", f"sweep={sweep_name}", "lora.rank=4"])
    path = runs.new_run_dir(name)
    paths = runs.RunPaths(path)
    paths.config.write_text(cfg.to_yaml(), encoding="utf-8")
    paths.checkpoint(2).mkdir(parents=True)
    with EventWriter(paths.events) as w:
        w.emit(RunStarted(str(path), "builtin:tiny", "mlx", "cpu", 40, 4, 10, 10, 1, 2, 0.1))
        w.emit(
            RunFinished(step=2, best_val_loss=None, best_step=None, elapsed_sec=1.0, stopped=True)
        )
    return path


def test_a_stopped_run_of_a_sweep_is_resumed_not_started_again(home, capsys):
    args = ["sweep", TINY, "--grid", "lora.rank=4,8", "--name", "再開", "--no-start"]
    assert main(args) == 0
    for job in queue.jobs():
        queue.remove(job.id)
    path = stopped_run("再開-rank4", "再開")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resume queued  再開-rank4" in out and "queued         再開-rank8" in out
    resume, train = sorted(queue.jobs(), key=lambda j: j.kind)
    assert (resume.kind, resume.run_dir, train.kind) == ("resume", str(path.resolve()), "train")
    assert main(args) == 0  # the resume job has its run's name: it was queued again
    assert "skipped (queued) 再開-rank4" in capsys.readouterr().out
    assert len(queue.jobs()) == 2


def test_a_config_given_twice_is_refused(home, capsys):
    assert main(["sweep", TINY, "--config", TINY, "--no-start"]) == 2
    assert "a config is given twice" in capsys.readouterr().err
    assert queue.jobs() == []


def test_a_sweep_is_named_after_its_base_config_once(home, capsys):
    assert sweep.default_name("医療") == "医療-sweep"
    assert sweep.default_name("sweeper") == "sweeper-sweep"
    medical_sweep = str(REPO / "configs" / "level3_medical_sweep.yaml")
    args = ["sweep", medical_sweep, "--grid", "lora.rank=8,16", "--no-start", "--json"]
    assert main(args) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["sweep"] == "医療専門知識モデル_sweep"  # its name, not ..._sweep-sweep
    assert [m["run"] for m in planned["members"]] == [
        "医療専門知識モデル_sweep-rank8",
        "医療専門知識モデル_sweep-rank16",
    ]


def test_a_sweep_naming_a_missing_dataset_or_model_queues_nothing(home, capsys):
    args = ["sweep", TINY, "--grid", "lora.rank=4,8", "--no-start", "--name", "欠け"]
    assert main([*args, "--set", "data.dataset=存在しない"]) == 2
    err = capsys.readouterr().err.strip()
    # every run's problem, said once (a 3x3 grid said it nine times)
    assert err.startswith("mlxlora: error: sweep 欠け: every run: data.dataset: unknown dataset")
    assert err.count("存在しない") == 1 and len(err.splitlines()) == 1
    assert main([*args, "--set", "model=builtin:nope"]) == 2
    assert "builtin:nope: unknown builtin model" in capsys.readouterr().err
    assert main([*args, "--set", "lora.num_layers=999"]) == 2  # builtin:tiny has 4
    assert capsys.readouterr().err.startswith(  # not `every run: 欠け-rank4: ...`
        "mlxlora: error: sweep 欠け: every run: lora.num_layers: 999 is more than the model's"
    )
    assert queue.jobs() == [] and sweep.sweep_names() == []


@pytest.mark.parametrize("grid", ["lora.num_layers=2,999", "data.val_split=0.1,0.999"])
def test_each_value_of_a_grid_the_references_check_reads_is_checked(home, capsys, grid):
    """The check ran once per dataset and model: the grid's second value was queued unchecked
    and its run failed when the runner took it."""
    assert main(["sweep", TINY, "--grid", grid, "--no-start", "--name", "格子"]) == 2
    err = capsys.readouterr().err
    bad = "格子-" + grid.split("=")[0].split(".")[1] + grid.split(",")[1]
    assert err.startswith(f"mlxlora: error: sweep 格子: {bad}: ") and err.count("\n") == 1
    assert err.count(bad) == 1  # not `格子-num_layers999: 格子-num_layers999: ...`
    assert queue.jobs() == [] and sweep.sweep_names() == []


def test_a_grid_of_lists_splits_between_the_lists():
    key, values = sweep.parse_grid("lora.target_modules=[q_proj,v_proj],[q_proj]")
    assert (key, values) == ("lora.target_modules", ["[q_proj,v_proj]", "[q_proj]"])
    members = sweep.plan("t", [TINY], ["lora.target_modules=[q_proj,v_proj],[q_proj]"], [])
    loaded = sweep.validate("t", members)
    assert [c.lora.target_modules for c in loaded] == [["q_proj", "v_proj"], ["q_proj"]]
    assert sweep.parse_grid("lora.rank=8, 16")[1] == ["8", "16"]


def test_a_grid_typed_with_japanese_commas_splits_there(home, capsys):
    """`--grid lora.rank=8、12、16` (an IME's commas) was one value, refused as "expected int,
    got '8、12、16'" (a QA finding): 、 and ， split values as , does."""
    medical_sweep = str(REPO / "configs" / "level3_medical_sweep.yaml")
    grids = ["--grid", "lora.rank=8、12、16", "--grid", "training.learning_rate=5e-5，3e-5"]
    assert main(["sweep", medical_sweep, *grids, "--no-start", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert len(planned["members"]) == 6
    assert planned["members"][0]["run"] == "医療専門知識モデル_sweep-rank8-learning_rate5e-5"


def test_sweep_status_rows_stay_apart_in_80_columns(monkeypatch, capsys):
    """Two runs of a Japanese-named sweep showed as the same cut text (double-width names
    ran out of columns before the part that differs; a QA finding)."""
    from types import SimpleNamespace

    from mlxlora.commands.sweep import print_status

    monkeypatch.setenv("COLUMNS", "80")
    sweep = "医療専門知識モデル_v1-sweep"
    members = [
        SimpleNamespace(
            member=SimpleNamespace(name=f"{sweep}-learning_rate={lr}"),
            state="finished",
            run=Path(f"/home/user/.mlxlora/runs/{sweep}-learning_rate={lr}-20261126-120000"),
        )
        for lr in ("0.0001", "5e-05")
    ]
    print_status(sweep, members, [])
    out = capsys.readouterr().out
    assert "learning_rate=0.0001" in out and "learning_rate=5e-05" in out
    assert "…" not in out


def test_the_ranked_runs_of_a_japanese_sweep_fit_80_columns(home, capsys, monkeypatch):
    """`sweep status` ranked each run on a line with the sweep's name, which passed 80
    columns and wrapped its best val onto a line of its own (a QA finding)."""
    args = ["sweep", TINY, "--grid", "lora.rank=4,8", "--grid", "training.learning_rate=5e-4,1e-4"]
    name = "医療専門知識モデル_v1-sweep"
    assert main([*args, "--set", "training.max_steps=1", "--name", name, "--no-start"]) == 0
    assert queue_runner.work(idle_exit=0) == 4
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["sweep", "status", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    ranked = lines[lines.index("ranked (compare --pick's weighted cost, lower is better):") + 1 :]
    assert ranked[0].split() == ["#", "run", "cost", "best", "val"]
    rows = [line.split() for line in ranked[1:5]]
    assert [row[0] for row in rows] == ["1", "2", "3", "4"]
    own = {f"rank{r}-learning_rate{lr}" for r in (4, 8) for lr in ("5e-4", "1e-4")}
    assert {row[1] for row in rows} == own  # the run without the sweep's name, whole
    numbers = [(row[2], row[3]) for row in rows]  # cost and best val beside the run
    assert all(re.fullmatch(r"\d\.\d{3} \d\.\d{4}", " ".join(pair)) for pair in numbers)
    assert ranked[5].startswith(f"pick: {name}-rank")
