"""`mlxlora compare` as level 2 of the tutorial runs it, in an 80-column terminal: each run's
name and numbers whole, and every differing setting's key whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxlora import config, engine, runs
from mlxlora.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"


def train(name: str, *overrides: str) -> Path:
    cfg = config.load(TINY, [f"name={name}", "training.max_steps=2", *overrides])
    run = runs.new_run_dir(name)
    engine.train(cfg, run)
    return run


def test_compare_in_an_80_column_terminal_keeps_names_numbers_and_keys_whole(
    home, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: a terminal (a pipe is printed 200 wide)
    monkeypatch.setenv("TERM", "dumb")  # a terminal, but no colour codes in the text
    train("level1-basic")
    stopping = ["training.early_stopping.patience=3", "training.early_stopping.min_delta=0.01"]
    train("level2-intermediate", *stopping)
    assert main(["compare", "level1-basic", "level2-intermediate"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and max(map(len, out.splitlines())) <= 80
    lines = [line.split() for line in out.splitlines()]
    assert ["1", "level1-basic"] in lines and ["2", "level2-intermediate"] in lines
    assert out.count("status finished") == 2 and "best val" in out
    for key in ("training.early_stopping.patience", "training.early_stopping.min_delta"):
        assert key in out
    # whole floats as the YAML writes them: tiny.yaml's `epochs: 6` was shown as 6.0
    train("level1-epochs", "training.epochs=4")
    assert main(["compare", "level1-basic", "level1-epochs"]) == 0
    rows = [line.split("│") for line in capsys.readouterr().out.splitlines()]
    (epochs,) = [[c.strip() for c in cells[1:-1]] for cells in rows if len(cells) > 3]
    assert epochs == ["training.epochs", "6", "4"], epochs


def test_outputs_the_file_system_refuses_are_one_line_errors(home, capsys, tmp_path):
    """An output path under a file, or a report path that is a directory: each was an
    OSError traceback (FileExistsError, NotADirectoryError, IsADirectoryError)."""
    run = train("refused")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    a_dir = tmp_path / "reports"
    a_dir.mkdir()
    adapters = str(run / "adapters")
    under_a_file = f"{a_file}: is a file, where a directory is needed"
    cases = [
        (["compare", run.name, "--report", str(a_file / "r.html")], under_a_file),
        (["merge", run.name, run.name, "--rank", "2", "--out", str(a_file / "m")], under_a_file),
        (["adapter", "convert", adapters, str(a_file / "peft")], under_a_file),
        (["train", str(TINY), "--run-dir", str(a_file / "run")], under_a_file),
        (["compare", run.name, "--report", str(a_dir)], f"{a_dir}: Is a directory"),
    ]
    capsys.readouterr()
    for argv, said in cases:
        assert main(argv) == 1, argv
        assert capsys.readouterr().err == f"mlxlora: error: {said}\n", argv
    assert a_file.read_text() == "mine" and list(a_dir.iterdir()) == []


def test_the_pick_says_when_the_runs_trained_on_different_backends(home, capsys):
    """The README says to compare runs of one backend, but `compare --pick` of an MLX run and
    a torch run weighed them as one benchmark (memory measured two ways) and said nothing."""
    pytest.importorskip("peft")
    train("医療モデル_mlx", "backend=mlx")
    train("医療モデル_torch", "backend=torch")
    assert main(["compare", "医療モデル_mlx", "医療モデル_torch", "--pick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == (
        "mixed backends (医療モデル_mlx on mlx, 医療モデル_torch on torch): one config trains a"
        " little differently on each, and each measures memory its own way; compare runs of one"
        " backend"
    )
    train("医療モデル_mlx2", "backend=mlx")
    assert main(["compare", "医療モデル_mlx", "医療モデル_mlx2", "--pick"]) == 0
    assert "mixed backends" not in capsys.readouterr().out


def test_stage_lists_show_whole_epochs_as_typed(home, capsys):
    """`stages: [{learning_rate: 1e-4, epochs: 2}]` showed as `"epochs": 2.0` in compare's
    differing settings and in `runs show` (a QA finding): the config holds floats, and only a
    setting that is one number was shown as typed."""
    for lr in ("1e-4", "2e-4"):
        stages = f"[{{learning_rate: {lr}, epochs: 2}}, {{learning_rate: 1e-5, epochs: 1.5}}]"
        train(f"段階-{lr}", "training.schedule=staged", f"training.stages={stages}")
    assert main(["compare", "段階-1e-4", "段階-2e-4"]) == 0
    assert main(["runs", "show", "段階-1e-4"]) == 0
    out = "".join(capsys.readouterr().out.split())  # the cells a narrow table wraps, joined
    typed = '[{"learning_rate":0.0001,"epochs":2},{"learning_rate":1e-05,"epochs":1.5}]'
    assert out.count(typed) == 2 and '"epochs":2.0' not in out
