"""The Compare tab: pick runs; their numbers, the config keys they differ in, their curves."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path

import pytest
from run_fixtures import T0, screen_text, wait_for, write_run
from textual.widgets import DataTable, SelectionList, Static

from mlxlora import runs
from mlxlora.experiments import config_differences
from mlxlora.tui.app import MlxloraApp
from mlxlora.tui.widgets.loss_chart import LossChart


def two_runs():
    write_run("base", end="finished")
    write_run(
        "rank16",
        end="finished",
        overrides=("lora.rank=16", "training.learning_rate=1e-3"),
        loss_scale=0.8,
        started=T0 + 100,
    )


def table(app) -> list[list[str]]:
    t = app.query_one("#compare-table", DataTable)
    header = [str(c.label) for c in t.ordered_columns]
    return [header] + [[str(c) for c in t.get_row(r.key)] for r in t.ordered_rows]


async def pick_both(pilot) -> None:
    await wait_for(pilot, lambda: pilot.app.query_one(SelectionList).option_count == 2)
    await pilot.press("space", "down", "space")  # the first run is under the cursor at once
    await wait_for(pilot, lambda: len(table(pilot.app)) == 3)


def test_two_runs_side_by_side(home):
    two_runs()

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(80, 24)) as pilot:
            assert table(app) == [["pick two or more runs to compare them"]]
            await pick_both(pilot)
            header, rank16, base = table(app)
            # the numbers first, then the settings that differ (they can be wide)
            assert header[:3] == ["run", "final val", "best val"]
            assert rank16[:3] == ["rank16", "0.7570", "0.7570"]
            assert base[:3] == ["base", "0.9463", "0.9463"]
            assert header[-2:] == ["rank", "learning_rate"]
            assert rank16[-2:] == ["16", "0.001"] and base[-2:] == ["8", "0.0005"]
            chart = app.query_one("#compare-chart", LossChart)
            assert [s.label for s in chart.series if s.label] == ["rank16", "base"]
            assert [len(s.x) for s in chart.series] == [30, 4, 30, 4]  # lines and val points
            assert len({s.color for s in chart.series}) == 2  # one colour per run

    asyncio.run(go())


def test_runs_of_one_name_are_told_apart_in_the_table_and_the_legend(home):
    """Every job the Train form starts is named "run" until renamed: two of them showed as
    "run" and "run" in the table and the chart's legend (the pick list shows when each
    started)."""
    for hour in ("09", "10"):
        path = write_run("run", end="finished")
        path.rename(path.with_name(f"run-20250615-{hour}0000"))

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(120, 40)) as pilot:
            await pick_both(pilot)
            names = [row[0] for row in table(app)[1:]]
            assert names == ["run  06-15 10:00", "run  06-15 09:00"]
            chart = app.query_one("#compare-chart", LossChart)
            assert [s.label for s in chart.series if s.label] == names

    asyncio.run(go())


def test_memory_reads_as_the_runs_tab_shows_it(home, quickstart_data):
    """Two real builtin:tiny runs: Compare showed their peak as "peak GB 0.01" where the Runs
    tab showed "12.4 MiB peak" for the same figure."""
    from mlxlora import config, engine
    from mlxlora.memory import fmt_bytes

    peaks = {}
    for name in ("a", "b"):
        cfg = config.load(None, [f"data.dataset={quickstart_data}", "training.max_steps=2"])
        summary = engine.train(cfg, runs.runs_root() / name)
        peaks[name] = fmt_bytes(summary["peak_memory_gb"] * 1e9)

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(160, 48)) as pilot:
            await pick_both(pilot)
            header, *body = table(app)
            memory = header.index("peak mem")
            assert {row[0]: row[memory] for row in body} == peaks
            await pilot.press("3")  # the Runs tab, the newest run ("b") shown
            await wait_for(pilot, lambda: f"memory  {peaks['b']} peak" in screen_text(app))

    asyncio.run(go())


def test_a_setting_never_takes_a_metric_columns_title(home):
    """Runs that differ in training.epochs showed two columns titled "epochs": the setting
    and the epochs each run trained (a QA finding)."""
    write_run("one", end="finished")
    two = ("training.epochs=2", "samples=[医療とは？]")
    write_run("two", end="finished", overrides=two, started=T0 + 100)

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(120, 24)) as pilot:
            await pick_both(pilot)
            header, *body = table(app)
            assert header[-2:] == ["samples", "training.epochs"]
            assert header.count("epochs") == 1  # the metric: epochs run
            # as YAML or the CLI writes a list, not Python's repr
            assert {row[-2] for row in body} == {"[]", '["医療とは？"]'}

    asyncio.run(go())


def test_config_differences_lists_only_keys_that_differ():
    a = {"name": "a", "lora": {"rank": 8, "alpha": 16}, "training": {"epochs": 3}}
    b = {"name": "b", "lora": {"rank": 16, "alpha": 16}, "training": {"epochs": 3, "seed": 1}}
    assert config_differences([a, b]) == {"lora.rank": [8, 16], "training.seed": [None, 1]}
    assert config_differences([a, a]) == {}


def test_snapshot_80x24(home, snap_compare):
    two_runs()
    assert snap_compare(MlxloraApp(initial="compare"), terminal_size=(80, 24), run_before=settle)


def test_snapshot_160x48(home, snap_compare):
    two_runs()
    assert snap_compare(MlxloraApp(initial="compare"), terminal_size=(160, 48), run_before=settle)


async def settle(pilot) -> None:
    await pick_both(pilot)
    await pilot.pause(0.6)


def test_a_whole_sweep_is_picked_at_once(home):
    write_run("single", end="finished")
    write_run(
        "掃引-rank4", end="finished", overrides=("sweep=掃引", "lora.rank=4"), started=T0 + 10
    )
    write_run(
        "掃引-rank8", end="finished", overrides=("sweep=掃引",), loss_scale=0.9, started=T0 + 20
    )

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(100, 30)) as pilot:
            pick = app.query_one(SelectionList)
            await wait_for(pilot, lambda: pick.option_count == 4)
            assert str(pick.get_option_at_index(0).prompt) == "▸ 掃引 (2 runs)"
            members = [str(pick.get_option_at_index(i).prompt) for i in (1, 2)]
            assert [m.split()[0] for m in members] == ["rank8", "rank4"]  # what differs first
            assert all(re.fullmatch(r"rank\d  \(掃引, \d\d-\d\d \d\d:\d\d\)", m) for m in members)
            await pilot.press("space")  # the sweep's entry is first, under the cursor
            await wait_for(pilot, lambda: len(table(app)) == 3)
            header, *body = table(app)
            assert header[-1] == "rank"  # the sweep name itself is no difference
            assert sorted([r[0], r[-1]] for r in body) == [["掃引-rank4", "4"], ["掃引-rank8", "8"]]
            await pilot.press("space")  # dropped again: its runs with it
            await wait_for(pilot, lambda: len(table(app)) == 1)

    asyncio.run(go())


def test_a_verdict_for_runs_no_longer_picked_is_not_shown(home, monkeypatch):
    """`p`, then a run picked before its verdict came: the verdict, for the runs picked
    before, showed beside the runs picked now (a thread worker runs on once it is done for)."""
    from mlxlora.tui.screens import compare

    two_runs()
    write_run("rank4", end="finished", overrides=("lora.rank=4",), started=T0 + 200)
    reads, shown, picked_again = compare.experiments.compare, [], threading.Event()

    def read_slowly(paths):
        picked_again.wait(timeout=60)  # the verdict comes once the runs are picked again
        return reads(paths)

    show = compare.CompareTab._show_verdict

    def handed(self, *args):
        shown.append(args)
        show(self, *args)

    monkeypatch.setattr(compare.experiments, "compare", read_slowly)
    monkeypatch.setattr(compare.CompareTab, "_show_verdict", handed)

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: app.query_one(SelectionList).option_count == 3)
            await pilot.press("space", "down", "space")
            await wait_for(pilot, lambda: len(table(app)) == 3)
            await pilot.press("p", "down", "space")  # a third run, before the verdict came
            await wait_for(pilot, lambda: len(table(app)) == 4)
            picked_again.set()
            await wait_for(pilot, lambda: shown)
            await pilot.pause()
            assert not app.query_one("#compare-verdict", Static).display

    asyncio.run(go())


def test_p_names_the_best_run_and_h_writes_the_report(home):
    """The verdict of `compare --pick` on screen; the report written where the note says."""
    two_runs()

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(100, 30)) as pilot:
            commands = [c.title for c in app.get_system_commands(app.screen)]
            assert {"Pick the best", "HTML report", "Merge adapters"} <= set(commands)
            await wait_for(pilot, lambda: app.query_one(SelectionList).option_count == 2)
            await pilot.press("space", "p")  # one run is no comparison
            await wait_for(pilot, lambda: "Pick two or more runs" in " ".join(notes(app)))
            await pilot.press("down", "space")
            await wait_for(pilot, lambda: len(table(app)) == 3)
            await pilot.press("p")
            verdict = app.query_one("#compare-verdict", Static)
            await wait_for(pilot, lambda: verdict.display)
            shown = screen_text(app)
            # rank16's losses are 0.8x base's, time and memory equal: base loses on best val
            # alone, whose weight is 0.35 of the 0.75 left without eval scores
            assert "pick rank16: best val 0.757 (1 of 2)" in shown
            assert "weighted cost 0.000 vs 0.467 for base" in shown
            await pilot.press("h")
            await wait_for(pilot, lambda: "Report written:" in notes(app)[-1])
            return notes(app)[-1]

    note = asyncio.run(go())
    report = Path(note.removeprefix("Report written: "))
    assert report.parent == home / "reports" and report.suffix == ".html"
    page = report.read_text("utf-8")
    assert "<svg" in page and page.count("<polyline") == 2 and "rank16" in page
    assert '<p class="pick">rank16: best val 0.757' in page


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_verdict_keeps_its_last_line_on_screen(home, size):
    """The verdict's last line, what the pick left out ("not weighed: eval score ..."), was
    cut off at 80x24 and at 120x40: the box held 4 lines (a QA finding, tutorial step 5.3)."""
    write_run("医療専門知識モデル_v1", end="finished")
    v2 = write_run("医療専門知識モデル_v2_optimized", end="finished", started=T0 + 100)
    runs.RunPaths(v2).eval.write_text(json.dumps(EVAL_WITH_SCORES), encoding="utf-8")

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            await pilot.press("p")
            verdict = app.query_one("#compare-verdict")
            await wait_for(pilot, lambda: verdict.display)
            await pilot.pause(0.3)
            shown = re.sub(r"\s+", " ", screen_text(app))
            assert "pick 医療専門知識モデル_" in shown
            assert "not weighed: eval score (医療専門知識モデル_v1 has none" in shown
            assert "`mlxlora eval '医療専門知識モデル_v1'`)" in shown  # quoted, as advice is

    asyncio.run(go())


EVAL_WITH_SCORES = {
    "val_loss": 0.95,
    "scores": {"term_recall": 0.5, "token_f1": 0.4, "safety_rate": 1.0, "consistency": 0.75},
}


def test_a_sweeps_runs_stay_apart_in_a_narrow_list(home):
    """At 80x24 the tutorial's sweep runs all read `rank16-learning_rat…`: a sweep's run
    was cut at its end, where its grid values are (a QA finding, tutorial step 6.3)."""
    sweep = "医療専門知識モデル_sweep"
    for rank in ("rank16", "rank8"):
        for lr in ("5e-5", "1e-4"):
            write_run(f"{sweep}-{rank}-learning_rate{lr}", overrides=(f"sweep={sweep}",))

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.query_one(SelectionList).option_count == 5)
            await pilot.pause(0.6)
            shown = [line for line in screen_text(app).splitlines() if "▐X▌" in line]
            members = [line.split("▐X▌")[1].split("▎")[0].strip() for line in shown[1:]]
            # each with its grid values whole: its rank and, at the end, its learning rate
            owns = sorted(m.split("  ")[0].removesuffix("…") for m in members)  # the list's …
            assert [o[:6] for o in owns] == ["rank16", "rank16", "rank8-", "rank8-"], members
            assert [o[-8:] for o in owns] == ["rate1e-4", "rate5e-5"] * 2, members

    asyncio.run(go())


def test_names_fit_the_list_once_it_scrolls(home):
    """The labels were cut for the list's width before its scrollbar appeared: with the
    tutorial's runs (more than the list shows) 医療専門…ル_early_stop read 医療専門…ル_early_s…
    at 80x24 (a QA finding)."""
    write_run("医療専門知識モデル_early_stop", end="finished")
    for i in range(20):
        write_run(f"run-{i:02}", end="finished")

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(80, 24)) as pilot:
            pick = app.query_one(SelectionList)
            await wait_for(pilot, lambda: pick.option_count == 21)
            await pilot.pause(1.2)
            assert pick.show_vertical_scrollbar
            label = str(pick.get_option_at_index(0).prompt)
            assert label.startswith("医療") and label.endswith("ル_early_stop")
            assert f"▐X▌ {label} " in screen_text(app)  # whole: not cut again by the list

    asyncio.run(go())


def test_sweeps_named_alike_stay_apart_in_a_narrow_list(home):
    """The tutorial's sweeps are named after their first config (医療専門知識モデル_sweep, and
    the A/B test's 医療専門知識モデル_v1-sweep): both read `▸ 医療専門知識モデ …` at 80x24
    (a QA finding)."""
    for i, sweep in enumerate(("医療専門知識モデル_sweep", "医療専門知識モデル_v1-sweep")):
        write_run(f"{sweep}-rank8", overrides=(f"sweep={sweep}",), started=T0 + i)

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(80, 24)) as pilot:
            pick = app.query_one(SelectionList)
            await wait_for(pilot, lambda: pick.option_count == 4)
            await pilot.pause(0.6)
            shown = [line for line in screen_text(app).splitlines() if "▐X▌ ▸" in line]
            heads = [line.split("▐X▌ ▸")[1].split("▎")[0].strip() for line in shown]
            # each ends as its name does: what tells them apart
            assert all(h.endswith("_sweep") or h.endswith("_v1-sweep") for h in heads), heads
            assert sorted(h.endswith("_v1-sweep") for h in heads) == [False, True], heads

    asyncio.run(go())


def notes(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


def test_long_names_that_share_a_prefix_stay_apart_in_the_list(home):
    """The list cut names at their end: the tutorial's 医療専門知識モデル_early_stop and
    _staged both showed as 医療専門知識モデル_… at 80 and 120 columns."""
    write_run("医療専門知識モデル_early_stop", end="finished")
    first = write_run("医療専門知識モデル_staged", end="finished", started=T0 + 100)
    first.rename(first.with_name("医療専門知識モデル_staged-20250615-000100"))
    write_run("医療専門知識モデル_staged", end="finished", started=T0 + 200)

    async def go():
        app = MlxloraApp(initial="compare")
        async with app.run_test(size=(80, 24)) as pilot:
            pick = app.query_one(SelectionList)
            await wait_for(pilot, lambda: pick.option_count == 3)
            await pilot.pause(0.6)
            labels = [str(pick.get_option_at_index(i).prompt) for i in range(3)]
            assert labels[2] == "医療専門…ル_early_stop"  # cut in the middle; a unique name
            # a name two runs have keeps the time that tells them apart
            assert labels[0] == "医…staged  06-15 00:01"
            assert labels[1] == "医…staged  06-15 00:00"
            text = screen_text(app)
            assert all(label in text for label in labels)  # whole on screen

    asyncio.run(go())
