"""`mlxlora runs show` as a user reads it: config changes, model, samples, numbers, no None."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from mlxlora import config, engine
from mlxlora.cli import main
from mlxlora.errors import MlxloraError
from mlxlora.models.resolve import resolve_model
from mlxlora.runs import RunPaths


def test_show_prints_config_model_command_samples_and_dashes(
    home, quickstart_data, tmp_path, capsys
):
    cfg = config.load(
        None,
        [
            f"data.dataset={quickstart_data}",
            "data.val_split=0",
            "training.max_steps=3",
            "lora.rank=4",
            "samples=['日本の首都は？']",
        ],
    )
    run = tmp_path / "my run"  # a space: the printed command must quote it
    summary = engine.train(cfg, run)
    assert summary["best_val_loss"] is None

    assert main(["runs", "show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "None" not in out
    lines = [line.strip() for line in out.splitlines()]
    assert "best val loss: —" in lines and "outcome: completed" in lines
    assert f"eval: none yet (`mlxlora eval {shlex.quote(str(run))}`)" in lines  # not `eval RUN`
    assert any(re.fullmatch(r"train loss ema: \d+\.\d{4}", line) for line in lines)
    assert not re.search(r"\d\.\d{5}", out)
    # a size and a duration as the studio shows them, not "peak memory gb: 0.0140"
    assert any(re.fullmatch(r"peak memory: [\d.]+ MiB", line) for line in lines), lines
    assert any(re.fullmatch(r"elapsed: 0:\d\d", line) for line in lines), lines
    # the config's differences from the defaults, and only those
    # a whole float as YAML writes it (`data.val_split: 0`, it said 0.0), as compare shows it
    for line in ("training.max_steps: 3", "lora.rank: 4", "data.val_split: 0"):
        assert line in lines
    assert not any(line.startswith("training.grad_clip") for line in lines)
    assert "before training (step 0) '日本の首都は？'" in lines
    assert "after training (step 3) '日本の首都は？'" in lines
    answers = [lines[i + 1] for i, line in enumerate(lines) if "training (step" in line]
    assert len(answers) == 2 and "->" not in answers  # builtin:tiny answers blank: it says so
    model_dir = summary["model_dir"]
    adapters = RunPaths(run).adapters
    command = (
        f"mlx_lm.generate --model {shlex.quote(model_dir)} --adapter-path "
        f"{shlex.quote(str(adapters))} --prompt '日本の首都は？'"
    )
    assert command in lines and "'" in command.split("--adapter-path")[1]

    assert main(["runs", "show", str(run), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    expected = cfg.to_dict()  # as run: its dataset file pinned to the stored copy it trained on
    expected["data"]["dataset"] = "quickstart"
    assert shown["config"] == json.loads(json.dumps(expected))
    assert shown["model_dir"] == model_dir
    assert [s["when"] for s in shown["samples"]] == ["before", "after"]


def test_show_of_a_failed_run_names_its_model_and_has_no_summary(
    home, quickstart_data, tmp_path, capsys
):
    """A run the memory budget stopped writes no summary.json: `runs show` printed a bare
    "summary:" heading over nothing. Stopped before its first step, it has published no
    adapter: its model directory showed as "—" (a QA finding), though its checkpoint names it."""
    cfg = config.load(
        None, [f"data.dataset={quickstart_data}", "training.memory_budget=1MB", "name=予算失敗"]
    )
    run = tmp_path / "予算失敗"
    with pytest.raises(MlxloraError, match="over the budget"):
        engine.train(cfg, run)
    assert not RunPaths(run).summary.exists()
    assert main(["runs", "show", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "summary: none (written when a run finishes or stops)" in lines
    assert "summary:" not in lines
    model_dir = str(resolve_model("builtin:tiny"))
    assert f"model builtin:tiny: {model_dir}" in lines
    # no mlx_lm command naming adapters/, where no adapter is
    assert "  no trained adapter to try: the run kept no checkpoint past step 0" in lines
    assert not [line for line in lines if "mlx_lm.generate" in line]
    assert main(["runs", "show", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_dir"] == model_dir


def test_show_reads_past_an_event_line_of_other_bytes(home, quickstart_data, tmp_path, capsys):
    """A line of events.jsonl that is not UTF-8 (a disk error, a hand edit) made `runs show`
    end in a UnicodeDecodeError traceback; the line is skipped as a partial one is."""
    cfg = config.load(None, [f"data.dataset={quickstart_data}", "training.max_steps=2"])
    run = tmp_path / "壊れた 記録"
    engine.train(cfg, run)
    with open(RunPaths(run).events, "ab") as events:
        events.write(b'{"type": "step", "step": 3, "loss": "\xff\xfe"}\n')
    assert main(["runs", "show", str(run)]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert "outcome: completed" in lines


def test_show_of_a_qlora_run_prints_a_command_that_answers(home, quickstart_data, tmp_path, capsys):
    """A torch run on a bitsandbytes base: `runs show` printed `mlx_lm.generate --model BASE
    --adapter-path ...`, which cannot load that base. Now it prints mlxlora's, which answers
    on the run's backend; the printed command runs."""
    pytest.importorskip("bitsandbytes")
    from tests.engine.test_torch_backend import bnb_4bit_tiny

    model = bnb_4bit_tiny(tmp_path / "tiny-bnb-4bit")
    overrides = [f"data.dataset={quickstart_data}", "training.max_steps=2", "backend=torch"]
    run = tmp_path / "量子化モデル_torch"
    engine.train(config.load(None, [*overrides, f"model={model}"]), run)
    assert main(["runs", "show", str(run)]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    command = f"mlxlora generate --adapter {shlex.quote(str(run))} --prompt Hello"
    assert command in lines and not any(line.startswith("mlx_lm.generate") for line in lines)
    assert main([*shlex.split(command)[1:], "--max-tokens", "3"]) == 0


GROUPS = [("runs", "list"), ("queue", "add"), ("adapter", "convert"), ("data", "import")]


@pytest.mark.parametrize(("group", "an_action"), GROUPS)
def test_a_command_group_alone_prints_its_actions(home, capsys, group, an_action):
    """Bare `mlxlora runs` / `queue` / `adapter` said "the following arguments are required:
    ACTION" where bare `data` printed its help (a QA finding): each prints its help."""
    assert main([group]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mlxlora {group} ") and an_action in out
