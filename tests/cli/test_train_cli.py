"""`mlxlora train` as a user runs it: a subprocess, JSON events, a kill -9 and a resume."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlxlora.cli import main
from mlxlora.data import store
from mlxlora.events import Checkpoint, RunFinished, Sample, Step, read_events
from mlxlora.memory import fmt_bytes
from mlxlora.runs import RunPaths

REPO = Path(__file__).resolve().parents[2]
QUICK = str(REPO / "configs" / "tiny.yaml")


def mlxlora(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "mlxlora", *args], capture_output=True, text=True, timeout=300, **kw
    )


def dry_run(capsys, *args) -> subprocess.CompletedProcess:
    """`mlxlora train QUICK --dry-run ARGS` in this process, read as `mlxlora(...)` reads a
    child: a dry run trains nothing, and each child spent most of its seconds importing the
    frameworks (test_dry_run_prints_the_breakdown_and_the_fit runs one as a user does)."""
    capsys.readouterr()
    code = main(["train", QUICK, "--dry-run", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


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


def test_an_absurd_rank_is_one_line_not_an_overflow_traceback(home):
    out = mlxlora("train", QUICK, "--set", "lora.rank=99999999999")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"mlxlora: error: {QUICK} (with --set lora.rank):"
        " lora.rank: 99999999999 is not allowed (<= 65536)"
    ]


def test_infinite_and_nan_values_are_refused_on_one_line(home):
    """YAML's .inf and .nan are floats: epochs: .inf crashed counting the steps (OverflowError)
    and learning_rate: .inf trained into a NaN loss."""
    out = mlxlora(
        "train", QUICK, "--set", "training.epochs=.inf", "--set", "training.learning_rate=.inf"
    )
    assert out.returncode == 2
    assert one_line_error(out).strip() == (
        f"mlxlora: error: {QUICK} (with --set training.epochs, training.learning_rate): "
        "2 problems: training.learning_rate: expected a finite number, got inf; "
        "training.epochs: expected a finite number, got inf"
    )
    assert not (home / "runs").exists()


def test_a_config_nested_too_deeply_or_a_directory_is_one_line(home, tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 5000)  # PyYAML recursed into a RecursionError traceback
    out = mlxlora("train", str(deep))
    assert out.returncode == 2
    assert one_line_error(out).strip() == (
        f"mlxlora: error: {deep}: not valid YAML: lists or mappings nested too deeply"
    )
    out = mlxlora("train", str(tmp_path))  # it said "file not found"
    assert one_line_error(out).strip() == (
        f"mlxlora: error: {tmp_path}: is a directory, expected a YAML config file"
    )


def test_killed_run_resumes_from_last_checkpoint(home, tmp_path, capsys):
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

    reference = tmp_path / "reference"  # uninterrupted, trained in this process (no child start)
    assert main([*args[:-3], "--run-dir", str(reference)]) == 0, capsys.readouterr().err
    final = {e.step: e.loss for e in read_events(run / "events.jsonl") if isinstance(e, Step)}
    expected = {
        e.step: e.loss for e in read_events(reference / "events.jsonl") if isinstance(e, Step)
    }
    for s in range(10, 13):
        assert abs(final[s] - expected[s]) < 1e-4 * abs(expected[s])
    assert [
        c.step for c in read_events(reference / "events.jsonl") if isinstance(c, Checkpoint)
    ] == [0, 3, 6, 9, 12]  # step 0's: a run killed before step 3 resumes too


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
    assert finished["signal"] is None  # the STOP file is a request, not a signal: exit 0
    assert finished["step"] < 40
    shown = json.loads(mlxlora("runs", "show", str(run), "--json").stdout)
    assert shown["info"]["status"] == "stopped"

    assert mlxlora("train", "--resume", str(run)).returncode == 0
    shown = json.loads(mlxlora("runs", "show", str(run), "--json").stdout)
    assert shown["info"]["status"] == "finished" and shown["summary"]["steps"] == 40


def one_line_error(out) -> str:
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr


def file_bytes(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_run_dir_holding_a_run_is_refused_and_a_finished_run_is_not_resumed(home, tmp_path):
    run = tmp_path / "run"
    assert (
        mlxlora("train", QUICK, "--set", "training.max_steps=2", "--run-dir", str(run)).returncode
        == 0
    )
    before = file_bytes(run)

    again = mlxlora("train", QUICK, "--run-dir", str(run))
    assert again.returncode == 5
    assert (
        one_line_error(again)
        .strip()
        .endswith(f"{run}: already holds a finished run; choose another --run-dir")
    )  # not "continue it with --resume", which refuses a finished run

    resumed = mlxlora("train", "--resume", str(run))
    assert resumed.returncode == 5
    assert "has finished" in one_line_error(resumed)
    # the dry run said what such a run would need, not that it would not run
    planned = mlxlora("train", "--resume", str(run), "--dry-run")
    assert planned.returncode == 5 and "has finished" in one_line_error(planned)
    assert file_bytes(run) == before

    empty = tmp_path / "empty"
    empty.mkdir()
    fresh = mlxlora("train", QUICK, "--set", "training.max_steps=1", "--run-dir", str(empty))
    assert fresh.returncode == 0 and (empty / "summary.json").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["train", QUICK, "--set", "training.max_steps=1", "--run-dir", ""],
        ["train", QUICK, "--set", "training.max_steps=1", "--run-dir", "\u3000"],
        ["merge", "a", "b", "--rank", "2", "--out", ""],
        ["adapter", "convert", "a", " "],
    ],
)
def test_a_blank_path_argument_is_refused_not_read_as_the_working_directory(
    home, tmp_path, monkeypatch, capsys, args
):
    """`--run-dir ""` trained a run into the working directory (Path("") is ".")."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert "the path is blank" in capsys.readouterr().err
    assert not any(cwd.iterdir()) and not (home / "runs").exists()


BROKEN_CONFIGS = {"broken": b"{not json", "latin1": b'{"model_type": "llama", "name": "caf\xe9"}'}


def broken_model(tmp_path, kind: str) -> str:
    """builtin:tiny with a config.json that is not JSON, or not UTF-8 (it tracebacked)."""
    from mlxlora.models.resolve import resolve_model

    model = tmp_path / f"{kind}-model"
    __import__("shutil").copytree(resolve_model("builtin:tiny"), model)
    (model / "config.json").write_bytes(BROKEN_CONFIGS[kind])
    return str(model)


@pytest.mark.parametrize(
    "override, code, says, in_run_dir",
    [
        ("model=/no/such/model", 4, "no such directory", False),
        ("model={broken}", 4, "broken-model/config.json: not valid JSON", True),
        ("model={latin1}", 4, "latin1-model/config.json: not valid JSON", True),
        ("data.dataset=no-such-dataset", 3, "unknown dataset", False),
        ("data.max_length=8", 3, "no record fits", True),
        # it said "no record fits data.max_length=256"
        ("data.val_split=0.999", 3, "sets all 120 records aside for validation", True),
        # mlx's seed refused them at the first step: a traceback and a failed run directory
        ("training.seed=-1", 2, "training.seed: -1 is not allowed (0 to 4294967295)", True),
        ("training.seed=99999999999999999999", 2, "training.seed: 99999999999999999999", False),
        # mlx's 32-bit slice indices refused it in the loss: a traceback (std::bad_cast)
        ("training.loss_chunk_rows=4294967296", 2, "is not allowed (<= 2147483647)", True),
    ],
)
def test_errors_before_training_leave_no_run_directory(
    home, tmp_path, override, code, says, in_run_dir
):
    kind = next((k for k in BROKEN_CONFIGS if "{" + k + "}" in override), None)
    override = override.format(**({kind: broken_model(tmp_path, kind)} if kind else {}))
    run_dir = tmp_path / "run"
    where = ["--run-dir", str(run_dir)] if in_run_dir else []
    out = mlxlora("train", QUICK, "--set", override, *where)
    assert out.returncode == code
    assert says in one_line_error(out)
    assert not run_dir.exists() and not (home / "runs").exists()


def test_a_dataset_that_is_not_there_names_the_config_file_that_names_it(home, tmp_path, capsys):
    """`data.dataset: unknown dataset 'nosuch'` did not say which of a user's YAML files was
    wrong: the config keeps no path, so the command that loaded the file names it."""
    bad = tmp_path / "実験b.yaml"
    bad.write_text("model: builtin:tiny\ndata:\n  dataset: nosuch\n", encoding="utf-8")
    said = (
        f"mlxlora: error: {bad}: data.dataset: unknown dataset 'nosuch' (no datasets yet; "
        "add one with `mlxlora data import FILE --name NAME`)"
    )
    trained = mlxlora("train", str(bad))
    assert trained.returncode == 3 and one_line_error(trained).strip() == said
    assert not (home / "runs").exists()
    assert main(["train", str(bad), "--dry-run"]) == 3
    assert capsys.readouterr().err.strip() == said


def test_too_many_lora_layers_are_refused_by_train_as_by_its_dry_run(home, capsys):
    """train said 'lora.num_layers=99 but the model has 4 layers' (the backend's words, exit
    4), its dry run and queue add 'lora.num_layers: 99 is more than ...' (exit 2)."""
    too_many = ["--set", "lora.num_layers=99"]  # builtin:tiny has 4
    refused = dry_run(capsys, *too_many)
    assert refused.returncode == 2
    assert refused.stderr == (  # the value --set gave: not the file's
        f"mlxlora: error: {QUICK} (with --set lora.num_layers): lora.num_layers: 99 is more"
        " than the model's 4 layers (-1: all)\n"
    )
    assert main(["train", QUICK, *too_many]) == 2
    assert capsys.readouterr().err == refused.stderr
    assert not (home / "runs").exists()
    assert store.list_datasets() == []  # the config's JSONL was stored before the refusal


def test_ctrl_c_stops_with_a_checkpoint_exit_130_and_resumes(home, tmp_path):
    run = tmp_path / "my runs" / "first"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxlora", "train", QUICK, "--set", "training.max_steps=40"]
        + ["--set", "samples=['What is the capital of Chile?']", "--run-dir", str(run), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stdout:
        if json.loads(line)["type"] == "step":
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130
    finished = json.loads(rest.splitlines()[-1])
    assert finished["type"] == "run_finished" and finished["stopped"] is True
    assert finished["signal"] == "SIGINT" and finished["step"] < 40
    assert RunPaths(run).latest_checkpoint().name == f"step-{finished['step']:07d}"
    samples = [e.when for e in read_events(run / "events.jsonl") if isinstance(e, Sample)]
    assert samples == ["before"]  # the stopped run is not done: no answers "after" yet

    assert mlxlora("train", "--resume", str(run)).returncode == 0
    samples = [e.when for e in read_events(run / "events.jsonl") if isinstance(e, Sample)]
    assert samples == ["before", "after"]


def test_sigterm_exits_143_and_prints_the_real_resume_command(home):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxlora", "train", QUICK, "--set", "name=停止 テスト"]
        + ["--set", "training.max_steps=200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(
        '"type": "step"' in p.read_text(encoding="utf-8")
        for p in (home / "runs").glob("*/events.jsonl")
    ):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143
    (run,) = (home / "runs").iterdir()
    assert run.name.startswith("停止 テスト-")
    assert "stopped by SIGTERM at step" in err
    assert f"resume with: mlxlora train --resume {shlex.quote(run.name)}\n" in err
    assert RunPaths(run).latest_checkpoint() is not None


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", ""])
def test_names_that_are_paths_are_refused_before_anything_is_created(home, tmp_path, name):
    out = mlxlora("train", QUICK, "--set", f"name={name}")
    assert out.returncode == 2
    assert "name:" in one_line_error(out) and "cannot name a run" in out.stderr
    assert not (home / "runs").exists()


def test_japanese_run_name_is_kept_and_found(home):
    name = "医療専門知識モデル_v1"
    assert (
        mlxlora("train", QUICK, "--set", f"name={name}", "--set", "training.max_steps=1").returncode
        == 0
    )
    (run,) = (home / "runs").iterdir()
    assert run.name.startswith(f"{name}-")
    shown = mlxlora("runs", "show", name, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["info"]["path"] == str(run)


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
    line = (
        r"step {}/3  ema loss \d+\.\d{{3}} lr \d\.\de[-+]\d\d [\d,]+ tok/s"
        r" \d+\.\d (?:MiB|GiB)  ETA \S+"
    )
    lines = out.stderr.splitlines()
    assert re.fullmatch(line.format(1), lines[-2]) and re.fullmatch(line.format(3), lines[-1])
    assert "warning: no validation set (data.val_split is 0)" in out.stderr
    assert all(len(text) <= 80 for text in lines)
    rows = [re.split(r"\s{2,}", row.strip()) for row in out.stdout.splitlines()]
    summary = dict(row for row in rows if len(row) == 2)
    assert summary["best val loss"] == "—" and summary["outcome"] == "completed"
    assert re.fullmatch(r"\d+\.\d{4}", summary["train loss ema"])
    assert "None" not in out.stdout
    folded = "".join(out.stdout.split())  # a long path folds onto more lines, never cut to "…"
    assert "…" not in out.stdout and str(run / "adapters") in folded


def test_plain_progress_interval_is_an_argument(home, tmp_path, capsys):
    from mlxlora import config, engine
    from mlxlora.commands.train import ProgressView

    cfg = config.load(QUICK, ["training.max_steps=4"])
    with ProgressView(plain_every=0.0) as view:
        engine.train(cfg, tmp_path / "run", listeners=[view.on_event])
    err = capsys.readouterr().err
    assert [int(s) for s in re.findall(r"^step (\d+)/4 ", err, re.M)] == [1, 2, 3, 4]


def test_full_width_digits_set_an_int_as_they_set_a_float(home, capsys):
    """`--set data.max_length=１０２４` (an IME's full-width digits, which look like 1024) was
    refused as "expected int, got '１０２４'" while `lora.alpha=４８` was taken as 48.0 (a QA
    finding): whole-number keys read them too, as the same numbers."""

    def plan(rank: str, max_length: str) -> dict:
        sets = ["--set", f"lora.rank={rank}", "--set", f"data.max_length={max_length}"]
        out = dry_run(capsys, "--json", *sets)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    typed, ascii_, default = plan("２４", "３２"), plan("24", "32"), plan("8", "32")
    assert (typed["total"], typed["length"]) == (ascii_["total"], 32), (typed, ascii_)
    assert typed["total"] != default["total"]  # the rank was read, not dropped


def test_dry_run_names_the_backend_it_estimates_for(home, capsys, monkeypatch):
    """`--set backend=torch --dry-run` printed the same table as MLX's: nothing said which
    backend (and device) the estimate was for."""
    pytest.importorskip("peft")
    monkeypatch.setenv("COLUMNS", "200")
    for backend in ("torch", "mlx"):
        out = dry_run(capsys, "--set", f"backend={backend}")
        assert out.returncode == 0, out.stderr
        (heading,) = [line for line in out.stdout.splitlines() if "memory of " in line]
        assert heading.startswith(f"memory of builtin:tiny on {backend} (cpu): batch 4 x ")
        # one line where the terminal has room (as the table's title it wrapped at ~45)
        assert heading.rstrip().endswith("checkpointing off"), out.stdout


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_a_run_starts_with_the_estimate_its_dry_run_printed(home, tmp_path, backend):
    """The dry run printed 15.4 MiB for configs/tiny.yaml and the run's header 15.7 MiB (a QA
    finding): the run counts the model's parameters as loaded, its LoRA layers' weights among
    them, and the dry run planned the base's alone. One job has one estimate, in the Train
    tab's form too."""
    from mlxlora.config import load
    from mlxlora.models.info import model_info
    from mlxlora.models.resolve import resolve_model
    from mlxlora.tui.screens.train.form import memory_verdict

    if backend == "torch":
        pytest.importorskip("peft")
    sets = ["--set", f"backend={backend}", "--set", "name=医療-基礎"]
    plan = json.loads(mlxlora("train", QUICK, "--dry-run", "--json", *sets).stdout)
    run = tmp_path / "run"
    out = mlxlora("train", QUICK, *sets, "--set", "training.max_steps=1", "--run-dir", str(run))
    assert out.returncode == 0, out.stderr
    started = next(e for e in read_events(run / "events.jsonl") if e.type == "run_started")
    assert round(started.estimated_peak_gb * 1e9) == plan["total"]
    total = fmt_bytes(plan["total"])
    assert f"estimated peak memory {total}" in out.stderr  # the run's header, as the user sees it
    cfg = load(QUICK, [f"backend={backend}"])
    form = memory_verdict(cfg, model_info(resolve_model(cfg.model)), None, plan["length"])
    assert form.total == plan["total"]


@pytest.mark.smollm2
def test_the_train_tab_plans_torch_s_float_copy_of_a_quantized_base_as_the_dry_run(home):
    """SmolLM2 (4-bit MLX weights) on backend torch with quantized_base: keep: torch trains
    a float copy, as the dry run counted, while the Train tab's form counted the 4-bit files
    (a review finding: 16.4 against 13.8 MB on a 4-bit tiny)."""
    pytest.importorskip("peft")
    from mlxlora.config import load
    from mlxlora.models.info import model_info
    from mlxlora.models.resolve import resolve_model
    from mlxlora.tui.screens.train.form import memory_verdict

    sets = ["model=builtin:smollm2-135m", "backend=torch", "quantized_base=keep"]
    out = mlxlora("train", QUICK, "--dry-run", "--json", *(a for s in sets for a in ("--set", s)))
    plan = json.loads(out.stdout)
    cfg = load(QUICK, sets)
    info = model_info(resolve_model(cfg.model))
    assert info["quantization"]  # the files hold 4-bit weights
    form = memory_verdict(cfg, info, None, plan["length"])
    assert form.total == plan["total"]


def test_dry_run_prints_the_breakdown_and_the_fit(home, capsys):
    out = mlxlora("train", QUICK, "--dry-run", "--set", "training.batch_size=8")
    assert out.returncode == 0, out.stderr
    for row in (
        "model weights",
        "LoRA + optimizer state",
        "activations saved for backward",
        "attention",
        "loss chunks",
        "framework overhead",
        "total",
        "budget",
        "verdict",
    ):
        assert row in out.stdout
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())  # no run made
    plan = json.loads(dry_run(capsys, "--json").stdout)  # the studio reads it
    assert plan["verdict"] == "fits" and 0 < plan["length"] < 256 and plan["total"] > 0

    tight = dry_run(capsys, "--set", "training.batch_size=8", "--memory-budget", "1MB")
    assert tight.returncode == 1 and "will not fit" in tight.stdout and "try:" in tight.stdout

    fitted = dry_run(
        capsys,
        "--set",
        "training.batch_size=8",
        "--set",
        "data.max_length=512",
        "--fit",
        "--memory-budget",
        "150MB",
    )
    assert fitted.returncode == 0, fitted.stdout + fitted.stderr
    line = next(x for x in fitted.stderr.splitlines() if x.startswith("fit: "))
    assert "training.batch_size=" in line and "fastest of" in line

    missing = dry_run(capsys, "--set", "data.dataset=無い.jsonl")
    assert missing.returncode != 0 and "verdict" not in missing.stdout  # what the run refuses
    assert missing.stderr.strip() == (  # the file, the --set and the field that name it
        f"mlxlora: error: {QUICK} (with --set data.dataset): data.dataset: 無い.jsonl: file"
        " not found (and no dataset of"
        " that name); a config reads a relative path from its own folder"
    )
    assert not (home / "datasets").exists() or not any((home / "datasets").iterdir())


@pytest.mark.parametrize("budget", ["0", "lots", "-5GB", "", " "])  # blank: it was ignored
def test_a_bad_memory_budget_names_the_flag_the_user_typed(home, capsys, budget):
    """`--memory-budget 0` was reported as `tiny.yaml (with --set training.memory_budget)`: a
    --set the user never typed."""
    out = dry_run(capsys, f"--memory-budget={budget}")
    assert out.returncode == 2 and "verdict" not in out.stdout
    assert out.stderr.startswith("mlxlora: error: train: --memory-budget: "), out.stderr
    assert "--set" not in out.stderr and "12GB" in out.stderr  # and how to write one


def test_a_bad_value_in_the_file_names_no_set_the_user_did_not_type(home, capsys, tmp_path):
    """Under --fit a bad value of the file's was `設定.yaml (with --set training.fit)`."""
    job = tmp_path / "設定.yaml"
    job.write_text(Path(QUICK).read_text(encoding="utf-8").replace("5.0e-4", "-1"))
    for flags in (["--fit"], ["--memory-budget", "2GB"], ["--set", "training.seed=1", "--fit"]):
        assert main(["train", str(job), "--dry-run", *flags]) == 2
        said = f"{job} (with --set training.seed)" if "--set" in flags else str(job)
        assert capsys.readouterr().err.startswith(f"mlxlora: error: {said}: training.learning_rate")


def test_a_json_reader_that_goes_away_stops_the_run_resumably(home):
    """`train --json | head -2`: the run stops at a step's end with its checkpoint, as a STOP
    file stops it (it failed with an internal BrokenPipeError and no checkpoint before)."""
    command = [sys.executable, "-m", "mlxlora", "train", QUICK, "--json"]
    command += ["--set", "training.max_steps=400", "--set", "name=読み手"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = json.loads(proc.stdout.readline())
    while json.loads(proc.stdout.readline())["type"] != "step":
        pass
    proc.stdout.close()  # the reader goes away while the run trains
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert "Traceback" not in proc.stderr.read()
    paths = RunPaths(Path(first["run_dir"]))
    finished = [e for e in read_events(paths.events) if isinstance(e, RunFinished)]
    assert len(finished) == 1 and finished[0].stopped
    assert paths.latest_checkpoint() is not None and finished[0].step < 400


def test_a_mistyped_key_names_the_key_it_most_likely_meant(home, tmp_path, capsys):
    """`training.learnng_rate: 1e-4` (in the file or in --set) listed the twenty allowed keys
    of the section and left the user to spot learning_rate among them (a QA finding)."""
    typo = tmp_path / "typo.yaml"
    typo.write_text(Path(QUICK).read_text().replace("rank:", "rnak:"), encoding="utf-8")
    capsys.readouterr()
    assert main(["train", str(typo), "--dry-run"]) != 0
    err = capsys.readouterr().err
    assert "typo.yaml: lora.rnak: unknown key (did you mean lora.rank? " in err
    assert len(err.splitlines()) == 1
    out = dry_run(capsys, "--set", "training.learnng_rate=1e-4")
    assert "did you mean training.learning_rate? " in one_line_error(out)
    far = dry_run(capsys, "--set", "training.zzz=1")  # nothing close: no guess
    assert "training.zzz: unknown key (allowed: " in one_line_error(far)
