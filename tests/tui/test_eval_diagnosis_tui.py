"""eval.json and diagnosis findings in the studio: the Runs tab flags a diagnosed run and its
detail shows the findings and the eval numbers; the Compare tab gains the eval columns."""

from __future__ import annotations

import asyncio
import json

import pytest
from run_fixtures import T0, screen_text, wait_for, write_run
from test_compare_tab import pick_both, table
from test_runs_tab import rows, select

from mlxlora import runs
from mlxlora.diagnosis import diagnose
from mlxlora.events import Diagnosis, EventWriter, read_events
from mlxlora.tui.app import MlxloraApp
from mlxlora.tui.screens.eval_dialog import EvalDialog

EVAL = {
    "dataset": "quickstart",
    "split": "validation",
    "records": 12,
    "val_loss": 0.95,
    "perplexity": 2.5857,
    "base": {"val_loss": 3.7, "perplexity": 40.447},
    "scores": {
        "term_recall": 0.5,
        "token_f1": 0.4321,
        "exact_match": 0.25,
        "answer_chars": 42.0,
        "safety_rate": None,
        "consistency": 0.75,
    },
    "base_scores": {
        "term_recall": 0.0,
        "token_f1": 0.1,
        "exact_match": 0.0,
        "answer_chars": 80.0,
        "safety_rate": None,
        "consistency": 0.2,
    },
    "answers": [],
    "created": "2026-11-25T19:00:00+00:00",
}


PLATEAU = Diagnosis(
    step=100,
    kind="plateau",
    severity="info",
    message="the loss stopped falling",
    remedy=["lora.rank: 20-24", "more or better training data", "a larger base model"],
)


def diagnosed_run(name: str, started: float = T0, *more: Diagnosis):
    """A finished run whose events truncated records (a diagnosis event) and `more`
    findings, with an eval.json."""
    path = write_run(name, end="finished", started=started)
    paths = runs.RunPaths(path)
    events = read_events(paths.events)
    events[0].truncated_records = 30  # what a diagnosis reads from run_started
    finding = diagnose(events)[0]
    with EventWriter(paths.events) as w:
        for event in (finding.event(), *more):
            w.emit(event)
    paths.eval.write_text(json.dumps(EVAL), encoding="utf-8")
    return path


def test_runs_tab_flags_the_run_and_shows_eval_and_diagnosis(home):
    path = diagnosed_run("diag", T0, PLATEAU)
    write_run("plain", end="finished", started=T0 + 100)

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 2)
            assert rows(app)[str(path)][1] == "finished ⚠ truncation +1"
            assert [c[1] for c in rows(app).values()].count("finished") == 1  # the plain run
            await select(pilot, path.name)
            diagnosis = str(app.query_one("#run-diagnosis").render())
            assert "⚠ truncation (warning) @0: 30 training records (75%) were cut" in diagnosis
            assert "try data.max_length higher" in diagnosis
            # every remedy, as `runs show` lists them (only the first was shown)
            assert "  try lora.rank: 20-24\n   or more or better training data\n" in diagnosis
            assert "   or a larger base model" in diagnosis
            text = str(app.query_one("#run-eval").render())
            assert "eval quickstart (12 records)  tuned / base" in text
            assert "val loss     0.9500 / 3.7000" in text
            assert "token f1     0.432 / 0.100" in text
            assert "safety rate  — / —" in text
            assert "consistency  0.750 / 0.200" in text
            await select(pilot, "plain-20250615-000000")
            assert not app.query_one("#run-diagnosis").display
            assert not app.query_one("#run-eval").display

    asyncio.run(go())


def test_compare_tab_has_eval_columns_when_a_run_was_evaluated(home):
    diagnosed_run("base")
    write_run("rank16", end="finished", overrides=("lora.rank=16",), started=T0 + 100)

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(160, 30)) as pilot:
            await pick_both(pilot)
            header, rank16, base = table(app)
            titles = ["eval val", "terms", "F1", "exact", "consist", "chars"]
            evaluated = dict(zip(header, base, strict=True))
            plain = dict(zip(header, rank16, strict=True))
            want = ["0.9500", "0.50", "0.43", "0.25", "0.75", "42"]
            assert [evaluated[t] for t in titles] == want
            assert [plain[t] for t in titles] == ["—"] * 6
            assert "safety" not in header  # no run has a safety rate: no column

    asyncio.run(go())


@pytest.mark.slow
def test_e_evaluates_the_selected_run_in_a_child(home):
    from run_fixtures import REPO

    from mlxlora import config, engine

    cfg = config.load(REPO / "configs" / "tiny.yaml", ["name=trained", "training.max_steps=4"])
    engine.train(cfg)  # in the workspace
    path = next(runs.runs_root().iterdir())

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 1)
            assert not app.query_one("#run-eval").display
            await select(pilot, path.name)
            await pilot.press("e")  # the dialog; Enter with its defaults: eval RUN --base
            await wait_for(pilot, lambda: isinstance(app.screen, EvalDialog))
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.query_one("#run-eval").display, timeout=120)
            measured = json.loads(runs.RunPaths(path).eval.read_text(encoding="utf-8"))
            panel = str(app.query_one("#run-eval").render())
            assert f"val loss     {measured['val_loss']:.4f} / " in panel
            assert measured["base"] is not None and len(measured["answers"]) == 12
            assert measured["dataset"] == "quickstart" and measured["split"] == "validation"
            assert measured["consistency"]["samples"] == 3
            # the worker reports and reaps its child once the child has exited
            await wait_for(
                pilot,
                lambda: not any(w.is_running for w in app.workers if w.group == "runs-eval"),
                timeout=30,
            )

    asyncio.run(go())


def train_tiny(name: str, steps: int = 4):
    from run_fixtures import REPO

    from mlxlora import config, engine

    overrides = [f"name={name}", f"training.max_steps={steps}"]
    engine.train(config.load(REPO / "configs" / "tiny.yaml", overrides))  # in the workspace
    return next(runs.runs_root().glob(f"{name}-*"))


@pytest.mark.slow
def test_evaluate_on_another_dataset_then_compare(home, tmp_path):
    """The tutorial's 4.3: `e` started `eval RUN --base` at once, so a run could not be scored
    on another dataset (`--dataset`) nor with another `--consistency K` in the studio."""
    from mlxlora.data import store

    path = train_tiny("level1")
    write_run("level2", end="finished", started=T0)
    data = tmp_path / "medical.jsonl"
    records = [{"instruction": f"質問{i}は？", "output": f"治療{i}です。"} for i in range(5)]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    store.import_dataset(data, "医療データ")

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 2)
            await select(pilot, path.name)
            await pilot.press("e")
            await wait_for(pilot, lambda: "Evaluate: " + path.name in screen_text(app))
            shown = screen_text(app)
            assert "the run's own validation split" in shown and "measure it too" in shown
            assert app.screen.query_one("#eval-base").value  # the base too, as `e` did
            app.screen.query_one("#eval-dataset").focus()
            await pilot.press("enter", "down", "down", "enter")  # quickstart, 医療データ
            app.screen.query_one("#eval-consistency").focus()
            await pilot.press("backspace", "-", "enter")
            assert "consistency: '-' is not a whole number" in screen_text(app)
            await pilot.press("backspace", "0")
            app.screen.query_one("#eval-base").focus()
            await pilot.press("space")  # no base model
            await pilot.click("#eval-start")
            await wait_for(pilot, lambda: app.query_one("#run-eval").display, timeout=120)
            panel = str(app.query_one("#run-eval").render())
            assert panel.startswith("eval 医療データ (5 records)\n")  # tuned only
            assert "consistency  —" in panel

            await pilot.press("4")  # Compare: the run's scores on that dataset
            await pick_both(pilot)
            header, *body = table(app)
            scored = next(dict(zip(header, r, strict=True)) for r in body if r[0] == "level1")
            assert scored["eval val"] == f"{measured()['val_loss']:.4f}"

    def measured() -> dict:
        return json.loads(runs.RunPaths(path).eval.read_text(encoding="utf-8"))

    asyncio.run(go())
    assert measured()["dataset"] == "医療データ" and measured()["split"] == "dataset"
    assert measured()["base"] is None and measured()["consistency"] is None
    assert len(measured()["answers"]) == 5


def test_escape_in_the_evaluate_dialog_starts_nothing(home):
    write_run("done", end="finished")

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 1)
            await pilot.press("e")
            await wait_for(pilot, lambda: isinstance(app.screen, EvalDialog))
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, EvalDialog))
            assert not [w for w in app.workers if w.group == "runs-eval"]
            assert not app._notifications  # no "Evaluating …"

    asyncio.run(go())


def test_runs_list_flags_the_run_as_the_runs_tab_does(home, capsys):
    from mlxlora.cli import main

    diagnosed_run("診断")
    write_run("plain", end="finished", started=T0 + 100)
    assert main(["runs", "list", "--json"]) == 0
    listed = {r["name"]: r["flag"] for r in json.loads(capsys.readouterr().out)}
    assert listed == {"診断-20250615-000000": "truncation", "plain-20250615-000000": ""}
    assert main(["runs", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if "診断" in line)
    assert "finished ⚠" in " ".join(lines[at : at + 2])  # its row, or the facts under its name
    assert sum("⚠" in line for line in lines) == 1  # the plain run has no flag
