"""`mlxlora train` as a user runs it: a subprocess, JSON events, a kill -9 and a resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from mlxlora.events import Checkpoint, RunFinished, Step, read_events

REPO = Path(__file__).resolve().parents[2]
QUICK = str(REPO / "configs" / "tiny.yaml")


def mlxlora(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "mlxlora", *args], capture_output=True, text=True, timeout=300, **kw
    )


def test_help_imports_no_heavy_framework():
    code = (
        "import sys; from mlxlora.cli import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\n"
        "heavy = [m for m in ('mlx', 'mlx.core', 'torch', 'textual', 'transformers')"
        " if m in sys.modules]\nprint(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith("[]"), out.stdout + out.stderr


def test_train_json_streams_events(home, tmp_path):
    run = tmp_path / "run"
    out = mlxlora("train", QUICK, "--set", "training.max_steps=4", "--run-dir", str(run), "--json")
    assert out.returncode == 0, out.stderr
    types = [json.loads(line)["type"] for line in out.stdout.splitlines()]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert types.count("step") == 4
    assert (run / "summary.json").exists() and (run / "config.yaml").exists()


def test_bad_config_is_one_line_without_traceback(home, tmp_path):
    out = mlxlora("train", QUICK, "--set", "lora.rank=0", "--set", "training.schedule=exp")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "lora.rank" in out.stderr and "training.schedule" in out.stderr


def test_killed_run_resumes_from_last_checkpoint(home, tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        QUICK,
        "--set",
        "training.eval_every=3",
        "--set",
        "training.max_steps=12",
        "--run-dir",
        str(run),
        "--json",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxlora", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stdout:  # kill -9 right after the second checkpoint
        event = json.loads(line)
        if event["type"] == "checkpoint" and event["step"] == 6:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (run / "adapters" / "checkpoints" / "step-0000006" / "trainer_state.json").exists()

    out = mlxlora("train", "--resume", str(run))
    assert out.returncode == 0, out.stderr
    events = read_events(run / "events.jsonl")
    assert isinstance(events[-1], RunFinished) and events[-1].step == 12
    resumed = [e for e in events if getattr(e, "resumed_from_step", 0)]
    assert resumed and resumed[0].resumed_from_step in (6, 9)

    reference = tmp_path / "reference"
    ref = mlxlora(*args[:-3], "--run-dir", str(reference))
    assert ref.returncode == 0, ref.stderr
    final = {e.step: e.loss for e in read_events(run / "events.jsonl") if isinstance(e, Step)}
    expected = {
        e.step: e.loss for e in read_events(reference / "events.jsonl") if isinstance(e, Step)
    }
    for s in range(10, 13):
        assert abs(final[s] - expected[s]) < 1e-4 * abs(expected[s])
    assert [
        c.step for c in read_events(reference / "events.jsonl") if isinstance(c, Checkpoint)
    ] == [3, 6, 9, 12]


def test_stop_file_stops_and_resume_finishes(home, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlxlora",
            "train",
            QUICK,
            "--set",
            "training.max_steps=40",
            "--run-dir",
            str(run),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stdout:
        if json.loads(line)["type"] == "step":
            (run / "STOP").touch()
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0
    finished = json.loads(rest.splitlines()[-1])
    assert finished["type"] == "run_finished" and finished["stopped"] is True
    assert finished["step"] < 40
    shown = json.loads(mlxlora("runs", "show", str(run), "--json").stdout)
    assert shown["info"]["status"] == "stopped"

    assert mlxlora("train", "--resume", str(run)).returncode == 0
    shown = json.loads(mlxlora("runs", "show", str(run), "--json").stdout)
    assert shown["info"]["status"] == "finished" and shown["summary"]["steps"] == 40


def test_torch_backend_is_refused_clearly_until_it_exists(home, tmp_path):
    out = mlxlora("train", QUICK, "--set", "backend=torch", "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 7 and "Traceback" not in out.stderr
    assert "backend torch: not implemented yet" in out.stderr


def test_without_a_terminal_progress_is_plain_lines(home, tmp_path):
    run = tmp_path / "run"
    out = mlxlora(
        "train",
        QUICK,
        "--set",
        "training.max_steps=3",
        "--set",
        "data.val_split=0",
        "--set",
        "training.early_stopping.patience=2",
        "--run-dir",
        str(run),
    )
    assert out.returncode == 0, out.stderr
    # stderr is a pipe: the first and the last step print a line (10 s apart otherwise)
    line = r"step {}/3  loss \d+\.\d{{3}} lr \d\.\de[-+]\d\d [\d,]+ tok/s \d+\.\d\d GB  ETA \S+"
    lines = out.stderr.splitlines()
    assert re.fullmatch(line.format(1), lines[-2]) and re.fullmatch(line.format(3), lines[-1])
    assert "warning: no validation set (data.val_split is 0)" in out.stderr
    assert all(len(text) <= 80 for text in lines)
    rows = [re.split(r"\s{2,}", row.strip()) for row in out.stdout.splitlines()]
    summary = dict(row for row in rows if len(row) == 2)
    assert summary["best val loss"] == "—" and summary["outcome"] == "completed"
    assert re.fullmatch(r"\d+\.\d{4}", summary["train loss ema"])
    assert "None" not in out.stdout


def test_plain_progress_interval_is_an_argument(home, tmp_path, capsys):
    from mlxlora import config, engine
    from mlxlora.commands.train import ProgressView

    cfg = config.load(QUICK, ["training.max_steps=4"])
    with ProgressView(plain_every=0.0) as view:
        engine.train(cfg, tmp_path / "run", listeners=[view.on_event])
    err = capsys.readouterr().err
    assert [int(s) for s in re.findall(r"^step (\d+)/4 ", err, re.M)] == [1, 2, 3, 4]
