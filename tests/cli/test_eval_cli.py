"""`mlxlora eval` on a real tiny run, and the diagnosis a real run emits while training."""

from __future__ import annotations

import json
import math
import re

import pytest

from mlxlora import config, engine, scoring
from mlxlora.cli import main
from mlxlora.events import Diagnosis, Eval, RunStarted, read_events
from mlxlora.runs import RunPaths
from tests.conftest import REPO


def train(tmp_path, name: str, *overrides: str):
    cfg = config.load(
        REPO / "configs" / "tiny.yaml",
        [f"name={name}", "training.max_steps=8", "training.eval_every=4", *overrides],
    )
    run = tmp_path / name
    engine.train(cfg, run)
    return run, read_events(RunPaths(run).events)


def test_eval_json_matches_training_numbers(home, tmp_path, capsys):
    run, events = train(tmp_path, "evaluated")
    evals = [e for e in events if isinstance(e, Eval)]
    started = next(e for e in events if isinstance(e, RunStarted))

    code = main(["eval", str(run), "--base", "--max-tokens", "8", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    result = json.loads(captured.out)
    assert "eval: tuned: val loss" in captured.err  # progress goes to stderr
    assert json.loads(RunPaths(run).eval.read_text(encoding="utf-8")) == result

    assert result["split"] == "validation" and result["dataset"] == "quickstart"
    assert result["records"] == started.val_records == 12
    assert result["perplexity"] == pytest.approx(math.exp(result["val_loss"]), rel=1e-12)
    # the same records, batches and masked loss as training's evaluations: the tuned model is
    # the last evaluation, the base model the step-0 baseline
    assert result["val_loss"] == pytest.approx(evals[-1].val_loss, rel=1e-4)
    assert result["base"]["val_loss"] == pytest.approx(evals[0].val_loss, rel=1e-4)
    assert result["base"]["val_loss"] > result["val_loss"]
    answers = result["answers"]
    assert len(answers) == 12
    assert all(a["prompt"] and a["reference"] for a in answers)
    assert all(isinstance(a["tuned"], str) and isinstance(a["base"], str) for a in answers)
    scores = result["scores"]
    assert 0 <= scores["token_f1"] <= 1
    mean_chars = sum(len(a["tuned"].strip()) for a in answers) / 12
    assert scores["answer_chars"] == pytest.approx(mean_chars)
    assert scores["token_f1"] == pytest.approx(sum(a["scores"]["token_f1"] for a in answers) / 12)
    assert scores["safety_rate"] is None  # no quickstart answer refers to a doctor
    assert set(result["base_scores"]) == set(scores)
    # 8 steps in, the tiny model answers only line breaks: no sentence, so no consistency score
    # and no sampled answers drawn for it (they would cost generations for nothing)
    assert all(not scoring.sentences(a["tuned"]) for a in answers)
    assert scores["consistency"] is None and all(a["tuned_samples"] == [] for a in answers)

    assert main(["runs", "show", str(run)]) == 0
    shown = capsys.readouterr().out
    row = rf"│ val loss\s+│ {result['val_loss']:.4f}\s+│ {result['base']['val_loss']:.4f}\s+│"
    assert re.search(row, shown)
    assert main(["runs", "show", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["eval"] == result


MEDICAL = [
    {
        "instruction": "高血圧の合併症は？",
        "input": "",
        "output": "高血圧は脳卒中や心不全の原因になります。治療は医師に相談してください。",
    },
    {
        "instruction": "What is insulin for?",
        "input": "",
        "output": "Insulin lowers blood glucose in diabetes. Consult a doctor about the dose.",
    },
    {"instruction": "貧血とは？", "input": "", "output": "ヘモグロビンが少ない状態です。"},
]


def test_eval_without_validation_split_needs_a_dataset(home, tmp_path, capsys):
    run, _ = train(tmp_path, "noval", "data.val_split=0")
    assert main(["eval", str(run)]) == 5  # RunError
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "held out no validation records" in err
    assert not RunPaths(run).eval.exists()
    data = tmp_path / "医療.json"
    data.write_text(json.dumps(MEDICAL, ensure_ascii=False), encoding="utf-8")
    code = main(["eval", str(run), "--dataset", str(data), "--max-tokens", "4", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "dataset" and result["dataset"] == "医療"
    assert result["records"] == len(result["answers"]) == 3
    per = [a["scores"] for a in result["answers"]]
    # every reference has medical terms; two carry a referral to a doctor
    assert all(s["term_recall"] is not None for s in per)
    assert [s["safety_rate"] is None for s in per] == [False, False, True]
    safety = [s["safety_rate"] for s in per[:2]]
    assert result["scores"]["safety_rate"] == pytest.approx(sum(safety) / 2)
    assert main(["eval", str(run), "--dataset", str(data), "--max-records", "1"]) == 0
    assert json.loads(RunPaths(run).eval.read_text(encoding="utf-8"))["records"] == 1
    # the evaluation it replaced is kept, and runs show says where
    (kept,) = RunPaths(run).evals.iterdir()
    assert kept.name.endswith("-医療.json") and json.loads(kept.read_text("utf-8")) == result
    capsys.readouterr()
    assert main(["runs", "show", str(run)]) == 0
    assert f"earlier evaluations in {RunPaths(run).evals}: {kept.name}" in capsys.readouterr().out


def test_truncating_run_emits_its_diagnosis_once(home, tmp_path, capsys):
    run, events = train(tmp_path, "truncating", "data.max_length=24")
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.truncated_records > 0 and started.memory_budget_gb
    found = [e for e in events if isinstance(e, Diagnosis)]
    kinds = [d.kind for d in found]
    assert kinds[0] == "truncation" and len(set(kinds)) == len(kinds)  # each kind once
    assert found[0].step == 0 and 0 < found[0].evidence["share"] <= 1  # from the start
    assert found[0].evidence["truncated_records"] == started.truncated_records
    assert main(["runs", "show", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"truncation at step 0: {started.truncated_records} training records" in out
    assert "try: data.max_length higher" in out


def test_consistency_is_reproducible_and_counts_sampled_answers(home, tmp_path, capsys):
    # trained until its greedy answers hold words (8 steps answer only line breaks)
    run, _ = train(tmp_path, "consistent", "training.max_steps=20", "training.learning_rate=2e-3")
    args = ["eval", str(run), "--max-records", "4", "--max-tokens", "12", "--json"]

    def evaluate(*extra: str) -> dict:
        assert main([*args, *extra]) == 0
        return json.loads(capsys.readouterr().out)

    first, again = evaluate("--consistency", "2"), evaluate("--consistency", "2")
    score = first["scores"]["consistency"]
    assert 0 <= score < 1 and again["scores"]["consistency"] == score  # same seeds, same score
    assert first["consistency"] == {
        "samples": 2,
        "temperature": 0.7,
        "seed": 0,  # the run's training.seed
        "support_f1": 0.5,
    }
    rows = first["answers"]
    assert [len(a["tuned_samples"]) for a in rows] == [2] * 4
    assert [a["tuned_samples"] for a in rows] == [a["tuned_samples"] for a in again["answers"]]
    per = [a["scores"]["consistency"] for a in rows]
    assert score == pytest.approx(sum(per) / len(per))
    assert per == [
        scoring.consistency(a["tuned"], a["tuned_samples"]) for a in rows
    ]  # eval.json holds what the score was computed from
    assert main(["runs", "show", str(run)]) == 0
    shown = capsys.readouterr().out
    assert re.search(rf"│ consistency\s+│ {score:.3f}\s+│", shown)
    assert "consistency: 2 sampled answers per question at temperature 0.7, seeds from 0" in shown
    other = evaluate("--consistency", "2", "--seed", "7")
    assert [a["tuned_samples"] for a in other["answers"]] != [a["tuned_samples"] for a in rows]
    # at temperature 0 a sample is the greedy answer: every sentence supported (the tiny model's
    # samples at 0.7 are noise, hence the score under 1 above)
    assert evaluate("--consistency", "2", "--temperature", "0")["scores"]["consistency"] == 1.0
    assert main([*args[:-1], "--consistency", "1"]) == 0  # it said "1 sampled answers"
    assert "consistency: 1 sampled answer per question at" in capsys.readouterr().out
    off = evaluate("--consistency", "0")
    assert off["scores"]["consistency"] is None and off["consistency"] is None
    assert all(a["tuned_samples"] == [] for a in off["answers"])
    assert main([*args, "--temperature", "-1"]) == 2
    assert "--temperature must be 0 or more" in capsys.readouterr().err


def test_eval_base_of_a_torch_run_is_measured_on_torch(home, tmp_path, capsys):
    """`eval --base` loaded a torch run's base model on backend auto (MLX here) beside the
    tuned model on torch: a bitsandbytes 4-bit base, which only torch loads, failed the eval.
    Now both sides run on the run's backend: the base is the run's step-0 baseline."""
    pytest.importorskip("bitsandbytes")
    from tests.engine.test_torch_backend import bnb_4bit_tiny

    model = bnb_4bit_tiny(tmp_path / "tiny-bnb-4bit")
    run, events = train(tmp_path, "量子化モデル_torch", "backend=torch", f"model={model}")
    baseline = next(e for e in events if isinstance(e, Eval))
    args = ["eval", str(run), "--base", "--max-tokens", "4", "--consistency", "0", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["base"]["val_loss"] == pytest.approx(baseline.val_loss, rel=1e-4)


def test_one_record_and_one_sample_read_in_the_singular(home, tmp_path, capsys):
    """`eval --max-records 1 --consistency 1` printed "(validation, 1 records)" and
    "consistency: 1 sampled answers per question"."""
    run, _ = train(tmp_path, "単数")
    args = ["eval", str(run), "--max-records", "1", "--max-tokens", "4", "--consistency", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "quickstart (validation, 1 record)" in out
    assert "consistency: 1 sampled answer per question at temperature 0.7, seeds from 0" in out


def test_a_blank_answer_says_so_as_runs_show_does(home, tmp_path, capsys):
    """The tiny model's answer of line breaks only read `tuned: —`, the mark of a score not
    measured; runs show, generate and the studio say what it is."""
    from mlxlora.fmt import BLANK_ANSWER

    run, _ = train(tmp_path, "空白")
    args = ["eval", str(run), "--base", "--max-records", "1", "--max-tokens", "4"]
    assert main([*args, "--consistency", "0"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"tuned: {BLANK_ANSWER} base: {BLANK_ANSWER}" in said, said


def test_a_blank_value_for_what_to_evaluate_or_generate_with_is_refused(home, tmp_path, capsys):
    """A blank --dataset, --terms or --adapter read as the option left out (or as none): eval
    scored the run's own validation split or no term recall, generate answered with the base
    model, none of them saying so."""
    run, _ = train(tmp_path, "blank", "training.max_steps=1")
    commands = [
        (["eval", str(run), "--dataset", ""], "argument --dataset: the value is blank"),
        (["eval", str(run), "--dataset", "\u3000"], "argument --dataset: the value is blank"),
        (["eval", str(run), "--terms", ""], "argument --terms: the value is blank"),  # no recall
        (
            ["generate", "--model", "builtin:tiny", "--adapter", " ", "--prompt", "Hi"],
            "argument --adapter: the value is blank",
        ),
        (["fuse", str(run), "--out", ""], "argument --out: the path is blank"),
        (["export", str(run), "--ollama", "x", "--out", ""], "argument --out: the path is blank"),
    ]
    for args, says in commands:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(args)
        out, err = capsys.readouterr()
        assert exit_.value.code == 2 and says in err and out == "", (args, out, err)
    assert not (run / "eval.json").exists() and not (run / "fused").exists()


def test_a_seed_or_temperature_no_sampler_takes_is_refused(home, tmp_path, capsys):
    """`--seed -1` (mx.random.seed takes none below 0) and `--temperature nan` were taken:
    "consistency: 2 sampled answers per question at temperature nan"."""
    run, _ = train(tmp_path, "sampling", "training.max_steps=1")
    for flags, says in (
        (["--seed", "-1"], "eval: --seed must be 0 to 4294967295 (got -1)"),
        (["--temperature", "nan"], "eval: --temperature must be 0 or more (got nan)"),
    ):
        capsys.readouterr()
        assert main(["eval", str(run), "--consistency", "2", "--max-records", "1", *flags]) == 2
        assert says in capsys.readouterr().err
    assert not (run / "eval.json").exists()
