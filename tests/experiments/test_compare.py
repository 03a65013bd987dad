"""`mlxlora compare`: the benchmark table, eval scores, --pick and the HTML report."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mlxlora import experiments, report, runs
from mlxlora.cli import main
from mlxlora.events import Eval, Step, read_events

EVAL = {
    "dataset": "医療",
    "split": "validation",
    "records": 2,
    "val_loss": 1.5,
    "perplexity": 4.48,
    "base": None,
    "scores": {
        "term_recall": 0.8,
        "token_f1": 0.6,
        "exact_match": 0.0,
        "answer_chars": 120.0,
        "safety_rate": 1.0,
        "consistency": 0.4,
    },
    "base_scores": None,
    "answers": [
        {
            "prompt": "高血圧の第一選択薬は？",
            "reference": "ACE阻害薬など。専門医に相談してください。",
            "tuned": "<script>alert(1)</script> ACE阻害薬 & ARB",
            "base": None,
            "scores": {"term_recall": 1.0},
        }
    ],
    "created": 1750000000.0,
}


def test_the_table_holds_each_runs_numbers_and_the_keys_that_differ(ws, capsys):
    assert main(["compare", "基準", "rank4", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["differences"] == {
        "lora.rank": [8, 4],
        "training.learning_rate": [5e-4, 2e-3],
    }
    for row, path in zip(shown["runs"], ws, strict=True):
        events = read_events(runs.RunPaths(path).events)
        evals = [e for e in events if isinstance(e, Eval)]
        summary = runs.read_json(runs.RunPaths(path).summary)
        m = row["metrics"]
        assert [e.step for e in evals] == [0, 2, 4, 6]
        assert m["final_val_loss"] == evals[-1].val_loss
        assert m["best_val_loss"] == pytest.approx(summary["best_val_loss"])
        assert m["perplexity"] == min(evals, key=lambda e: e.val_loss).perplexity
        last = [e for e in events if isinstance(e, Step)][-1]
        assert m["gap"] == pytest.approx(evals[-1].val_loss - last.loss_ema)
        assert m["elapsed_sec"] == summary["elapsed_sec"] > 0
        assert m["peak_memory_gb"] == summary["peak_memory_gb"] > 0
        assert m["tokens_per_sec"] > 0
        assert m["term_recall"] is None  # no eval.json: no scores
    assert [r["name"] for r in shown["runs"]] == ["基準", "rank4"]


def test_eval_scores_join_the_table_when_a_run_has_eval_json(ws, tmp_path, capsys):
    copy = tmp_path / "評価済み-20250101-000000"
    shutil.copytree(ws[0], copy)
    (copy / "eval.json").write_text(json.dumps(EVAL, ensure_ascii=False), encoding="utf-8")
    comparison = experiments.compare([copy, ws[1]])
    scored, plain = (r.metrics for r in comparison.runs)
    assert scored["term_recall"] == 0.8 and scored["safety_rate"] == 1.0
    assert scored["consistency"] == 0.4
    assert scored["eval_score"] == pytest.approx((0.8 + 0.6 + 1.0 + 0.4) / 4)
    assert plain["eval_score"] is None
    titles = [t for _, t, _ in experiments.shown_metrics([scored, plain])]
    assert {"terms", "F1", "safety", "consist"} <= set(titles)
    assert "terms" not in [t for _, t, _ in experiments.shown_metrics([plain])]
    assert main(["compare", str(copy), str(ws[1])]) == 0
    assert "0.80" in capsys.readouterr().out


def row(name: str, **metrics) -> experiments.Compared:
    full = dict.fromkeys(("best_val_loss", "eval_score", "gap", "elapsed_sec", "peak_memory_gb"))
    return experiments.Compared(Path(name), name, "finished", full | metrics, {}, None)


def test_pick_weighs_quality_against_time_and_memory():
    # A/B of the tutorial: A (rank 16, 5 epochs) a little better, B (rank 12, 4 epochs) far cheaper
    a = row("A", best_val_loss=1.20, gap=0.10, elapsed_sec=500, peak_memory_gb=8.0)
    b = row("B", best_val_loss=1.22, gap=0.05, elapsed_sec=300, peak_memory_gb=6.0)
    chosen = experiments.pick(experiments.Comparison([a, b], {}))
    assert chosen.run.name == "B"
    # without eval scores the others keep their proportions: 0.35/0.75 for best val. Each run
    # costs how far behind the best it is in decisive differences: A's gap half of 0.1, its
    # time 2/3 of twice B's, its memory 2/3 of 1.5x B's; B's loss 0.02 of 0.1 nats
    assert chosen.weights["best_val_loss"] == pytest.approx(0.35 / 0.75)
    a_cost = (0.15 * 0.5 + 0.15 * 2 / 3 + 0.10 * 2 / 3) / 0.75
    assert chosen.costs == [pytest.approx(a_cost), pytest.approx(0.35 * 0.2 / 0.75)]
    assert chosen.reason.startswith("B: best val 1.22 (2 of 2), val-train gap +0.050 (1 of 2)")
    assert "for A" in chosen.reason.splitlines()[1]
    # A clearly better model is worth its cost; eval scores count when a run has them
    a.metrics |= {"best_val_loss": 0.9, "eval_score": 0.9}
    b.metrics |= {"eval_score": 0.5}
    assert experiments.pick(experiments.Comparison([a, b], {})).run.name == "A"
    # ties go to the earlier run
    twin = row("twin", **{k: v for k, v in a.metrics.items() if v is not None})
    assert experiments.pick(experiments.Comparison([twin, a], {})).run.name == "twin"


def test_the_pick_ranks_by_the_figures_it_shows():
    """Six runs that all showed 0.12 GB were ranked by digits nobody saw: '(3 of 6)'. Memory
    reads as the tabs show it (fmt_bytes): these six all show 1.2 GiB."""
    runs = [
        row(f"r{i}", best_val_loss=1.2 + i / 100, gap=0.1, elapsed_sec=300, peak_memory_gb=m)
        for i, m in enumerate((1.301, 1.253, 1.289, 1.324, 1.260, 1.299))
    ]
    reason = experiments.pick(experiments.Comparison(runs, {})).reason
    assert reason.startswith("r0: best val 1.2 (1 of 6), val-train gap +0.100 (1 of 6, tied")
    assert "memory 1.2 GiB (1 of 6, tied with 5)" in reason


def test_a_number_one_run_lacks_is_left_out_of_the_pick_and_said_so():
    # the tutorial's A/B as measured: only v1 evaluated, v1 better on loss, v2 on the rest
    v1 = row("v1", best_val_loss=1.741, eval_score=0.0544, gap=0.304, elapsed_sec=2914)
    v2 = row("v2", best_val_loss=1.999, gap=0.183, elapsed_sec=720)
    v1.metrics["peak_memory_gb"], v2.metrics["peak_memory_gb"] = 4.34, 4.32
    chosen = experiments.pick(experiments.Comparison([v1, v2], {}))
    assert "eval_score" not in chosen.weights  # counted as v2's worst, it decided the pick
    assert (
        chosen.reason.splitlines()[-1] == "not weighed: eval score (v2 has none: `mlxlora eval v2`)"
    )
    # v2's loss is 0.26 nats behind (over the decisive 0.1); v1 is behind on gap and time by
    # more than theirs, and 0.02 GB of memory (0.5% of 4.3 GB) weighs next to nothing
    memory = 0.10 / 0.75 * (0.02 / 4.32) / 0.5
    assert chosen.run.name == "v1"
    assert chosen.costs == [pytest.approx(0.30 / 0.75 + memory), pytest.approx(0.35 / 0.75)]
    v2.metrics["eval_score"] = 0.05  # evaluated: the score weighs again
    chosen = experiments.pick(experiments.Comparison([v1, v2], {}))
    assert chosen.weights["eval_score"] == 0.25 and "not weighed" not in chosen.reason


def test_a_negligible_difference_weighs_next_to_nothing():
    # a 6-step run against two trained ones (QA): far worse loss, far faster, equal memory
    short = row("short", best_val_loss=7.093, gap=-0.472, elapsed_sec=2, peak_memory_gb=0.014)
    long = [
        row(f"long{i}", best_val_loss=v, gap=0.05, elapsed_sec=60, peak_memory_gb=0.015)
        for i, v in enumerate((4.317, 4.3175))
    ]
    chosen = experiments.pick(experiments.Comparison([short, *long], {}))
    assert chosen.run.name == "long0"
    costs = dict(zip(["short", "long0", "long1"], chosen.costs, strict=True))
    assert costs["long1"] - costs["long0"] == pytest.approx(0.35 / 0.75 * 0.005)
    assert costs["short"] > costs["long0"] + 0.1
    alone = experiments.pick(experiments.Comparison([short], {}))
    assert "val-train gap -0.472 (1 of 1)" in alone.reason  # shown as measured, scored as 0


def test_pick_on_the_command_line_names_a_run_and_says_why(ws, capsys):
    assert main(["compare", "基準", "rank4", "--pick"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("pick: "))
    assert line.split(":")[1].strip() in ("基準", "rank4")
    assert "best val" in line and "weighted cost" in out


def test_report_escapes_everything_and_renders_curves_in_chromium(ws, tmp_path, capsys):
    copy = tmp_path / "評価済み-20250101-000000"
    shutil.copytree(ws[0], copy)
    (copy / "eval.json").write_text(json.dumps(EVAL, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "レポート.html"
    assert main(["compare", str(copy), str(ws[1]), "--pick", "--report", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; ACE阻害薬 &amp; ARB" in page
    no_namespace = page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in page and "http" not in no_namespace  # nothing from the network
    assert page.count('<polyline class="train"') == 2
    assert page.count('<circle class="val"') == 8  # 4 evaluations per run
    assert "高血圧の第一選択薬は？" in page and "評価済み" in page
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium: ./install.sh dev installs it (Debian: apt-get install chromium)")
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        + [f"--screenshot={shot}", "--window-size=1000,700", out.as_uri()],
        capture_output=True,
        timeout=60,
        check=True,
    )
    print(f"\nreport screenshot: {shot}")
    counts = colour_pixels(shot, report.COLORS[:2])
    assert all(n > 500 for n in counts), counts  # both runs' curves and dots are drawn


def colour_pixels(png: Path, colours: tuple[str, ...]) -> list[int]:
    """How many pixels of the image are each colour (within 8 per channel)."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    wanted = [[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in colours]
    return [int((np.abs(pixels - w).max(axis=-1) <= 8).sum()) for w in wanted]


def test_ticks_are_round_and_cover_the_range():
    assert report.ticks(6.8, 7.75) == [6.8, 7.0, 7.2, 7.4, 7.6, 7.8]
    assert report.ticks(0, 8) == [0, 2, 4, 6, 8]
    flat = report.ticks(3, 3)  # one value: a unit around it
    assert flat[0] <= 2.5 and flat[-1] >= 3.5 and len(flat) <= 7


def test_unknown_run_is_one_line(ws, capsys):
    assert main(["compare", "基準", "no-such-run"]) == 5
    assert capsys.readouterr().err.strip() == (
        "mlxlora: error: no-such-run: no such run (see `mlxlora runs list`)"
    )


def test_a_setting_a_run_predates_counts_as_its_default_and_settings_print_as_rows(capsys):
    """A run made before `training.fit` existed trained as `fit: off`: no difference. The
    settings that differ print one per row (as columns, lists such as stages were unreadable)."""
    from mlxlora import config
    from mlxlora.commands.compare import print_table

    old = {"lora": {"rank": 8}, "training": {"learning_rate": 1e-4}}
    new = {"lora": {"rank": 16}, "training": {"learning_rate": 1e-4, "fit": "off"}}
    staged = {"lora": {"rank": 8}, "training": {"fit": "auto", "stages": [{"epochs": 2}]}}
    defaults = config.Config().to_dict()
    differences = experiments.config_differences([old, new], defaults=defaults)
    assert differences == {"lora.rank": [8, 16]}
    differences = experiments.config_differences([old, new, staged], defaults=defaults)
    assert differences["training.fit"] == ["off", "off", "auto"]
    assert differences["training.stages"] == [[], [], [{"epochs": 2}]]
    runs = [row(name, best_val_loss=1.0) for name in ("a", "b", "c")]
    print_table(experiments.Comparison(runs, differences))
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "training.stages" in ln)
    assert [cell.strip() for cell in line.split("│")[1:-1]] == [
        "training.stages",
        "[]",
        "[]",
        '[{"epochs": 2}]',
    ]


def test_the_report_has_the_permissions_the_umask_gives(ws, tmp_path, capsys):
    import os
    import stat

    out = tmp_path / "report.html"
    old = os.umask(0o022)
    try:
        assert main(["compare", str(ws[0]), str(ws[1]), "--report", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # readable by others, not mkstemp's 0600


def test_a_run_without_a_validation_loss_is_never_picked_for_its_speed():
    # a failed run: no evaluation, stopped after seconds (the review's case)
    good = row("good", best_val_loss=1.20, gap=0.1, elapsed_sec=600, peak_memory_gb=8.0)
    failed = row("failed", elapsed_sec=12, peak_memory_gb=7.0)
    chosen = experiments.pick(experiments.Comparison([good, failed], {}))
    assert chosen.run.name == "good" and "best_val_loss" in chosen.weights
    assert chosen.reason.splitlines()[-2:] == [
        "counted as behind on best val: failed has none",
        "not weighed: val-train gap (failed has none)",
    ]
    alone = experiments.pick(experiments.Comparison([failed], {}))  # nothing to hold it to
    assert alone.run.name == "failed" and "best_val_loss" not in alone.weights
