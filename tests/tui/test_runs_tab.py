"""The Runs tab: every run and queued job with its status, the selected run's chart, numbers,
samples and failure; Stop, Resume and Delete; live runs; damaged run directories."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from run_fixtures import REPO, T0, screen_text, wait_for, write_run
from textual.widgets import DataTable, ProgressBar, Static

from mlxlora import config, engine, machine, memory, procs, queue, queue_runner, runs
from mlxlora.errors import MlxloraError
from mlxlora.events import Diagnosis, EventWriter, RunStarted, read_events
from mlxlora.tui.app import MlxloraApp
from mlxlora.tui.screens.run_detail import RunDetail
from mlxlora.tui.screens.runs import COLUMNS, RunsTab
from mlxlora.tui.widgets.confirm import Confirm
from mlxlora.tui.widgets.loss_chart import LossChart, readable_lines, step_ticks


def four_runs():
    """Newest first on screen: live, halted, broken, done."""
    write_run("done", end="finished")
    write_run("broken", steps=13, end="failed", started=T0 + 100)
    write_run("halted", steps=15, end="stopped", started=T0 + 200)
    write_run("live", steps=12, end="running", started=T0 + 300)


def rows(app) -> dict[str, list[str]]:
    table = app.query_one("#runs-table", DataTable)
    return {
        str(row.key.value): [str(c) for c in table.get_row(row.key)] for row in table.ordered_rows
    }


def row_name(key: str, cells: list[str]) -> str:
    """A row by its job's name, or by its run's directory name (the table shows less)."""
    return cells[0] if key.startswith("job:") else Path(key).name


def statuses(app) -> dict[str, str]:
    return {row_name(key, cells): cells[1] for key, cells in rows(app).items()}


async def select(pilot, name: str) -> None:
    table = pilot.app.query_one("#runs-table", DataTable)
    names = [row_name(key, cells) for key, cells in rows(pilot.app).items()]
    table.move_cursor(row=names.index(name))
    await pilot.pause(0.1)


def test_every_run_with_its_status_chart_samples_and_failure(home, monkeypatch):
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)  # the queued job stays queued
    four_runs()
    job = queue.add_train((REPO / "configs" / "tiny.yaml").read_text(), "waiting")

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 5)
            assert statuses(app) == {
                "waiting": "queued",
                "live-20250615-000000": "running",
                "halted-20250615-000000": "stopped",
                "broken-20250615-000000": "failed",
                "done-20250615-000000": "finished",
            }
            done = rows(app)[str(runs.runs_root() / "done-20250615-000000")]
            # the smoothed loss, as `train` shows it live (was the last step's raw 0.6475)
            assert done[2:5] == ["30/30", "1.1601", "0.9463"]
            assert len(done[5]) == 12 and done[5][0] == "█"  # the falling loss as a sparkline

            await select(pilot, "broken-20250615-000000")
            text = screen_text(app)
            assert "failed: loss became nan at step 13" in text
            assert "step    13/30" in text
            chart = app.query_one("#run-chart", LossChart)
            assert [len(s.x) for s in chart.series] == [13, 13, 2]  # raw, smoothed, 2 evals
            assert chart.vlines == [10]  # the epoch boundary
            width = chart.size.width
            assert readable_lines([10], width) == [10]
            assert readable_lines(list(range(width // 4 + 1)), width) == ()  # a bar per cell

            await select(pilot, "done-20250615-000000")
            panel = app.query_one("#run-samples").render()
            assert "before: blue" in str(panel) and "after: 4" in str(panel)
            assert app.query_one("#total-progress", ProgressBar).percentage == 1.0

            await select(pilot, "live-20250615-000000")
            assert "ETA     0:36" in screen_text(app)  # 18 steps at 2 s each
            assert app.query_one("#total-progress", ProgressBar).percentage == 0.4

            # no runner works the queue (ensure_runner started none): the job says so
            await select(pilot, "waiting")
            failure = str(app.query_one("#run-failure", Static).content)
            assert failure.startswith("no runner is working the queue")
        assert job.id in [j.id for j in queue.jobs()]

    asyncio.run(go())


def test_after_a_delete_the_row_in_its_place_is_selected(home):
    """Deleting 実験2 of three selected the first row, 実験3, as if the list started over: the
    next row, 実験1, is where the cursor was, as in any list."""
    made = [write_run(f"実験{i}", started=T0 + 10 * i) for i in (1, 2, 3)]

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 3)
            await select(pilot, made[1].name)
            await pilot.press("d", "y")
            await wait_for(pilot, lambda: len(rows(app)) == 2)
            assert app.query_one(RunsTab).selected_key() == str(made[0])

    asyncio.run(go())


def test_delete_asks_and_never_removes_a_running_run(home):
    four_runs()
    done = runs.runs_root() / "done-20250615-000000"

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 4)
            await select(pilot, "done-20250615-000000")
            await pilot.press("d")
            assert isinstance(app.screen, Confirm)
            await pilot.press("n")
            assert done.is_dir()
            await pilot.press("d", "y")
            assert not done.exists()
            await wait_for(pilot, lambda: "done-20250615-000000" not in statuses(app))

            await select(pilot, "live-20250615-000000")
            await pilot.press("d")
            assert not isinstance(app.screen, Confirm)
            assert (runs.runs_root() / "live-20250615-000000").is_dir()

            halted = runs.runs_root() / "halted-20250615-000000"
            queue.add_resume(halted)  # a queued resume: refused before the question
            await select(pilot, "halted-20250615-000000")
            await pilot.press("d")
            assert not isinstance(app.screen, Confirm) and halted.is_dir()
            said = [str(n.message) for n in app._notifications]
            assert any(m.startswith("halted-20250615-000000: job ") for m in said), said

    asyncio.run(go())


def test_damaged_and_vanishing_run_directories_show_what_is_readable(home):
    bad = write_run("bad", steps=20, end="finished")
    write_run("gone", end="finished", started=T0 + 100)
    events = runs.RunPaths(bad).events
    lines = events.read_bytes().splitlines(keepends=True)
    # A corrupt line in the middle, a half-written last line, a summary cut short.
    events.write_bytes(b"".join(lines[:12]) + b"{not json\n" + b"".join(lines[12:25]) + b'{"ty')
    runs.RunPaths(bad).summary.write_text('{"elapsed_sec": 1', encoding="utf-8")

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 2)
            await select(pilot, "bad-20250615-000000")
            assert statuses(app)["bad-20250615-000000"] == "interrupted"  # no ending readable
            text = screen_text(app)
            assert "step    19/30" in text and "ETA     —" in text
            shutil.rmtree(runs.runs_root() / "gone-20250615-000000")
            await wait_for(pilot, lambda: list(statuses(app)) == ["bad-20250615-000000"])
            shutil.rmtree(runs.runs_root())
            await wait_for(pilot, lambda: not rows(app))

    asyncio.run(go())


def test_resume_queues_a_stopped_run(home, monkeypatch):
    write_run("halted", steps=15, end="stopped")
    started = []
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: started.append(1) or True)

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 1)
            await pilot.press("r")
            await wait_for(pilot, lambda: statuses(app)["halted-20250615-000000"] == "queued")
        (job,) = queue.jobs()
        assert job.kind == "resume" and job.run_dir == str(
            runs.runs_root().resolve() / "halted-20250615-000000"
        )
        assert started  # a runner is asked for

    asyncio.run(go())


def test_a_run_the_memory_budget_stopped_resumes_fitted(home, monkeypatch):
    """The failure says `--resume RUN --fit`; the studio's r queued a plain resume, which
    failed again at the same step (a QA finding)."""
    path = write_run("oom", steps=15, end="failed")
    events = runs.RunPaths(path).events
    nan = "loss became nan at step 13; lower training.learning_rate"
    events.write_text(events.read_text().replace(nan, "memory: step 16 needs ~2.1 GiB"))
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: True)

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 1)
            await pilot.press("r")
            await wait_for(pilot, lambda: statuses(app)[path.name] == "queued")
            (job,) = queue.jobs()
            assert job.fit and job.command()[-3:] == [str(path.resolve()), "--fit", "--json"]
            await pilot.press("s")  # queued by mistake: s takes it off the queue
            await wait_for(pilot, lambda: statuses(app)[path.name] == "failed")
        assert queue.jobs() == []

    asyncio.run(go())


def test_s_takes_a_queued_job_off_the_queue_and_names_a_run_it_cannot_stop(home, monkeypatch):
    """s on a job's row stops it as `mlxlora queue stop` does (it said "only a running or
    queued run can be stopped"); on a finished run it says why not."""
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)  # the queued job stays queued
    write_run("done", end="finished")
    queue.add_train((REPO / "configs" / "tiny.yaml").read_text(), "待機中")

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 2)
            said = lambda: [str(n.message) for n in app._notifications]  # noqa: E731
            await select(pilot, "done-20250615-000000")
            await pilot.press("s")
            await wait_for(pilot, lambda: any("finished, neither running nor" in m for m in said()))
            await select(pilot, "待機中")
            await pilot.press("s")
            await wait_for(pilot, lambda: len(rows(app)) == 1)
            assert any("(待機中) off the queue" in m for m in said())
        assert queue.jobs() == []

    asyncio.run(go())


def test_a_resume_that_failed_to_start_shows_and_d_forgets_it(home):
    """A resume refused before the run started again (its dataset gone) writes nothing in
    the run: its own row says so (it was hidden behind the run's row), and d forgets it."""
    write_run("halted", steps=15, end="stopped")
    run = runs.runs_root().resolve() / "halted-20250615-000000"
    queue.add_resume(run)
    job = queue_runner._claim_next()  # as the runner takes it, and the child then fails
    job.exit_code = 3
    queue_runner._finish(job, "failed", "unknown dataset '医療QA' (no datasets yet)")

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 2)
            shown = {key: cells[1] for key, cells in rows(app).items()}
            assert shown == {f"job:{job.id}": "resume failed", str(run): "stopped"}
            # named as its run is (it showed the directory, `メモ…61127-074135` at 80 columns)
            assert rows(app)[f"job:{job.id}"][0] == "halted"
            table = app.query_one("#runs-table", DataTable)
            table.move_cursor(row=list(shown).index(f"job:{job.id}"))
            await pilot.pause(0.1)
            assert "failed: unknown dataset '医療QA'" in screen_text(app)
            bars = app.query(ProgressBar)
            assert bars and all(b.total == 1 and b.progress == 0 for b in bars)  # not animating
            await pilot.press("d")
            await pilot.pause()
            if isinstance(app.screen, Confirm):
                await pilot.press("y")
            await wait_for(pilot, lambda: len(rows(app)) == 1)
        assert queue.jobs() == []

    asyncio.run(go())


def end_resume(run, exit_code: int | None) -> queue.Job:
    """A resume of `run` that failed: with `exit_code` from its child, or with none when a
    killed runner's job was closed by whoever read the queue next."""
    queue.add_resume(run)
    job = queue_runner._claim_next()
    job.exit_code = exit_code
    queue_runner._finish(job, "failed", "unknown dataset '医療QA' (no datasets yet)")
    return job


def test_a_resume_that_failed_in_its_run_shows_once_as_its_run(home):
    """A resume that started again and failed there (over its memory budget) showed as a
    'resume failed' row beside its run's 'failed' row: one run twice (a QA finding). The
    run's row alone shows it, failed as the session ended."""
    cfg = config.load(REPO / "configs" / "tiny.yaml", ["name=医療-基礎", "training.max_steps=5"])
    cfg.training.memory_budget = "13MB"  # over it before the first step, as is every resume
    run = runs.runs_root().resolve() / "医療-基礎"
    with pytest.raises(MlxloraError, match="over the budget"):
        engine.train(cfg, run)
    queue.add_resume(run)
    assert queue_runner.work(idle_exit=0) == 1
    (job,) = queue.jobs()
    assert (job.state, job.exit_code) == ("failed", 6) and "over the budget" in job.error
    started = [e for e in read_events(runs.RunPaths(run).events) if isinstance(e, RunStarted)]
    assert started[-1].time >= job.created  # the resume wrote its session in the run

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) >= 1)
            await pilot.pause(0.3)
            shown = {key: cells[:2] for key, cells in rows(app).items()}
            assert shown == {str(run): ["医療-基礎", "failed ⚠ memory"]}

    asyncio.run(go())


def test_a_resume_killed_mid_session_keeps_its_row_and_its_error(home, monkeypatch):
    """A resume killed after it started its session (SIGKILL: no `run_failed`) lost its row
    with the run's row hiding it, and its error showed nowhere (a review finding)."""
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)
    run = write_run("医療-中断", steps=15, end="stopped").resolve()
    job = end_resume(run, -9)
    with EventWriter(runs.RunPaths(run).events) as w:  # its session began, and never ended
        w.emit(replace(read_events(runs.RunPaths(run).events)[0], time=job.created + 1))

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) >= 2)
            await pilot.pause(0.2)
            shown = {key: cells[1] for key, cells in rows(app).items()}
            assert shown[f"job:{job.id}"] == "resume failed", shown

    asyncio.run(go())


def test_a_cut_off_resume_shows_as_its_run_and_r_on_a_failed_resume_resumes_its_run(
    home, monkeypatch
):
    """A resume cut off by a killed runner had a 'resume failed' row of its own beside its
    run's; r on a failed resume's row said 'this job wrote no run to resume'."""
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)
    halted = write_run("halted", steps=15, end="stopped").resolve()
    refused = write_run("refused", steps=15, end="stopped", started=T0 + 100).resolve()
    end_resume(halted, None)
    job = end_resume(refused, 3)

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) >= 3)
            await pilot.pause(0.2)
            shown = {key: cells[1] for key, cells in rows(app).items()}
            assert shown == {
                f"job:{job.id}": "resume failed",
                str(refused): "stopped",
                str(halted): "stopped",
            }
            table = app.query_one("#runs-table", DataTable)
            table.move_cursor(row=0)
            await pilot.press("r")
            said = lambda: [str(n.message) for n in app._notifications]  # noqa: E731
            await wait_for(pilot, lambda: f"Queued: resume {refused.name}" in said())
        assert [j.run_dir for j in queue.jobs() if j.state == "queued"] == [str(refused)]

    asyncio.run(go())


def test_d_on_a_starting_job_says_s_stops_it(home):
    """The studio's answer was the CLI's: 'stop it instead (`mlxlora queue stop ID`)'."""
    queue.add_train((REPO / "configs" / "tiny.yaml").read_text(), "始動中")
    job = queue_runner._claim_next()  # its child (this process) is starting its run
    job.pid, job.pid_start = os.getpid(), procs.started_at(os.getpid())
    queue._save(job)

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: statuses(app) == {"始動中": "starting"})
            await pilot.press("d")
            said = lambda: [str(n.message) for n in app._notifications]  # noqa: E731
            await wait_for(pilot, lambda: "Job 始動中 is running; press s to stop it" in said())
        assert [j.state for j in queue.jobs()] == ["running"]

    asyncio.run(go())


def test_snapshot_80x24(home, snap_compare, monkeypatch):
    monkeypatch.setattr(machine, "total_memory", lambda: 16 * memory.GIB)
    four_runs()
    assert snap_compare(MlxloraApp(initial="runs"), terminal_size=(80, 24), run_before=settle)


def test_snapshot_160x48(home, snap_compare, monkeypatch):
    monkeypatch.setattr(machine, "total_memory", lambda: 16 * memory.GIB)
    four_runs()
    assert snap_compare(MlxloraApp(initial="runs"), terminal_size=(160, 48), run_before=settle)


async def settle(pilot) -> None:
    """Four rows, named for the table's laid-out width: the first draw may come before the
    table has one, and the names are cut again at the next tick (a fixed pause after the
    rows came was too short under load: a CI snapshot caught the first draw)."""
    tab, table = pilot.app.query_one(RunsTab), pilot.app.query_one("#runs-table", DataTable)

    def named_for_its_width() -> bool:
        width = table.scrollable_content_region.width
        return len(rows(pilot.app)) == 4 and width > 0 and tab._width == width and not tab._dirty

    await wait_for(pilot, named_for_its_width)
    await pilot.pause(0.5)


# --- live runs: real training in a child process, as the queue's runner starts it -------


def train(home, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "MLXLORA_HOME": str(home), "PYTHONPATH": str(REPO)}
    sets = [a for o in overrides for a in ("--set", o)]
    cmd = [sys.executable, "-m", "mlxlora", "train", "configs/tiny.yaml", *sets, "--json"]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def test_the_log_says_which_backend_the_run_trained_on(home):
    """A torch run's log began "started builtin:tiny on cpu", as an MLX run's did: nothing in
    the studio said a job started with backend torch trained on torch."""
    pytest.importorskip("peft")
    from textual.widgets import Log

    from mlxlora import config, engine

    overrides = ["name=医療モデル_torch", "backend=torch", "training.max_steps=2"]
    engine.train(config.load(REPO / "configs" / "tiny.yaml", overrides))

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(120, 40)) as pilot:
            log = app.query_one("#run-log", Log)
            await wait_for(pilot, lambda: log.lines)
            assert log.lines[0].endswith("started builtin:tiny on torch (cpu)")

    asyncio.run(go())


@pytest.mark.slow
def test_a_live_run_moves_to_finished(home):
    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            child = train(home, "training.max_steps=30", "training.log_every=1")
            seen = set()

            def finished():
                for cells in rows(app).values():
                    seen.add(cells[2])
                    if cells[1] == "finished":
                        return True
                return False

            await wait_for(pilot, finished, timeout=120, step=0.2)
            assert child.wait(timeout=30) == 0, child.stderr.read()
            (cells,) = rows(app).values()
            assert cells[2] == "30/30"
            assert len(seen - {"0/30", "30/30"}) >= 1, seen  # watched it move, not just end
            await pilot.pause(0.5)
            assert app.query_one("#total-progress", ProgressBar).percentage == 1.0
            assert len(app.query_one("#run-chart", LossChart).series[0].x) == 30

    asyncio.run(go())


@pytest.mark.slow
def test_stop_a_live_run(home):
    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            child = train(home, "training.max_steps=5000", "training.log_every=1")

            def stepping():
                return any(
                    c[1] == "running" and int(c[2].split("/")[0]) >= 3 for c in rows(app).values()
                )

            await wait_for(pilot, stepping, timeout=120, step=0.2)
            await pilot.press("s")
            await wait_for(pilot, lambda: list(statuses(app).values()) == ["stopped"], timeout=60)
            assert child.wait(timeout=30) == 0, child.stderr.read()
            (path,) = [p for p in runs.runs_root().iterdir()]
            assert runs.RunPaths(path).latest_checkpoint() is not None  # kept to resume from
            assert "stopped" in app.query_one(RunsTab).book.status(path)

    asyncio.run(go())


def test_snapshot_light_theme(home, snap_compare, monkeypatch):
    """The studio in Textual's light theme (ctrl+p, Theme): charts and status colours read."""
    monkeypatch.setattr(machine, "total_memory", lambda: 16 * memory.GIB)
    four_runs()
    app = MlxloraApp(initial="runs")
    app.theme = "textual-light"
    assert snap_compare(app, terminal_size=(80, 24), run_before=settle)


def test_a_sweeps_runs_show_together_under_its_name(home, monkeypatch):
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)
    write_run("掃引-rank4", overrides=("sweep=掃引",), started=T0)
    write_run("other", started=T0 + 100)
    write_run("掃引-rank8", overrides=("sweep=掃引",), started=T0 + 200)

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 3)
            names = [cells[0] for cells in rows(app).values()]
            heads = [n.split(",")[0] for n in names]
            assert heads == ["rank8  (掃引", "rank4  (掃引", "other  06-15 00:00"], names

    asyncio.run(go())


def test_the_step_axis_has_whole_round_ticks():
    """plotext put ticks at 15.8, 31.5, 47.2 and, for one evaluation, at -1 to 1."""
    assert step_ticks(1, 63, 80) == [20, 40, 60]  # at most one per 12 cells: 6 here
    assert step_ticks(1, 10, 40) == [5, 10]  # 3 at most
    assert step_ticks(2, 4, 80) == [2, 3, 4]  # one point (3) widened by a step each side
    assert step_ticks(0, 2000, 160) == list(range(0, 2001, 200))


def test_a_queued_job_shows_the_id_queue_list_shows(home, monkeypatch):
    """The Runs tab named a job by its whole id (`01795729683361930898-8eabdd`, wrapped at 80
    columns) where `queue list` and `queue stop` use the short one (`8eabdd`)."""
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)  # the job stays queued
    job = queue.add_train((REPO / "configs" / "tiny.yaml").read_text(), "待ちジョブ")

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 1)
            await select(pilot, "待ちジョブ")
            shown = f"job     {queue.short_id(job.id)} (train)"
            await wait_for(pilot, lambda: shown in screen_text(app))
            assert job.id not in screen_text(app)

    asyncio.run(go())


def test_a_job_that_arrives_while_the_panel_waits_for_a_layout_shows_all_its_lines(
    home, monkeypatch
):
    """On a new workspace the side panel sometimes kept the one-line height of "no runs yet"
    when a queued job arrived, cutting its lines: the job's text came while the panel's own
    layout was still pending and a layout pass had run meanwhile (as when the studio opens)."""
    monkeypatch.setattr(queue_runner, "ensure_runner", lambda: False)  # the job stays queued

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            stats = app.query_one("#run-stats", Static)
            await wait_for(pilot, lambda: "no runs yet" in str(stats.render()))
            job = queue.add_train((REPO / "configs" / "tiny.yaml").read_text(), "待ちジョブ")
            # the order the race took, made certain: a layout asked of the panel, a layout
            # pass (another widget's beside it) before the panel gets to it, then the job's text
            stats.refresh(layout=True)
            app.query_one("#run-side")._clear_arrangement_cache()
            app.screen._refresh_layout()
            app.query_one(RunDetail).show_job(job, "queued")
            await pilot.pause(0.2)
            assert stats.region.height == 3
            assert f"job     {queue.short_id(job.id)} (train)" in screen_text(app)

    asyncio.run(go())


def test_no_runs_says_how_to_start_one_until_a_run_arrives_and_again_once_deleted(home):
    """A new workspace showed an empty chart beside two bars that seemed to wait; deleting
    the last run left its numbers on screen."""
    from mlxlora import config, engine

    def train_tiny() -> None:
        overrides = ["name=最初の実行", "training.max_steps=2"]
        cfg = config.load(REPO / "configs" / "tiny.yaml", overrides)
        engine.train(cfg, runs.new_run_dir(cfg.name))

    hint = "no runs yet: press 2 to train one"

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: hint in screen_text(app))
            await pilot.pause()
            assert "epoch" not in screen_text(app)  # no progress bars of nothing
            await asyncio.to_thread(train_tiny)
            await wait_for(pilot, lambda: len(rows(app)) == 1)
            await wait_for(pilot, lambda: "status  finished" in screen_text(app))
            assert hint not in screen_text(app) and "epoch" in screen_text(app)
            await pilot.press("d", "y")
            await wait_for(pilot, lambda: hint in screen_text(app))
            assert "最初の実行" not in screen_text(app)

    asyncio.run(go())


def tutorial_runs() -> tuple[Path, Path]:
    """The level-3 tutorial's runs: a sweep's four, a long name, and two runs of one name."""
    sweep = "医療専門知識モデル_v1-sweep"
    for i, rank in enumerate(("rank16", "rank8")):
        for j, lr in enumerate(("5e-5", "1e-4")):
            name = f"{sweep}-{rank}-learning_rate{lr}"
            write_run(name, overrides=(f"sweep={sweep}",), started=T0 + 2 * i + j)
    write_run("医療専門知識モデル_early_stop", end="early_stop", started=T0 + 10)
    first = write_run("医療専門知識モデル_staged", end="stopped", started=T0 + 20)
    first = first.rename(first.with_name("医療専門知識モデル_staged-20250615-000100"))
    second = write_run("医療専門知識モデル_staged", started=T0 + 30)
    return first, second


def table_lines(app) -> tuple[str, list[str]]:
    """The table's header line and its rows' lines as the screen shows them."""
    table = app.query_one("#runs-table", DataTable)
    lines = screen_text(app).splitlines()[table.region.y : table.region.bottom]
    return lines[0], lines[1:]


def every_column_shows(app) -> bool:
    header, _ = table_lines(app)
    scrolls = app.query_one("#runs-table", DataTable).max_scroll_x
    return all(title in header for title in COLUMNS) and scrolls == 0


def row_shows_whole(app, index: int) -> bool:
    """The row's line on screen holds its name and every other cell."""
    cells = list(rows(app).values())[index]
    lines = [ln for ln in table_lines(app)[1] if cells[0] in ln]
    return bool(lines) and all(cell in lines[0] for cell in cells[1:])


@pytest.mark.parametrize("sizes", [((80, 24), (120, 40)), ((120, 40), (80, 24))])
def test_every_column_shows_beside_long_names_and_sweeps(home, sizes):
    """A run's name was its whole directory name (`医療専門知識モデル_v1-sweep ▸
    rank16-learning_rate1e-4-20250615-000000`): status, step and the losses sat off screen at
    80x24, the losses and the curve at 120x40 (a QA finding). Names now fit beside the other
    columns, again once the terminal is resized, and two runs of one name still differ."""
    first, second = tutorial_runs()

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=sizes[0]) as pilot:
            table = app.query_one("#runs-table", DataTable)
            await wait_for(pilot, lambda: len(rows(app)) == 7)
            for size in sizes:
                await pilot.resize_terminal(*size)
                # the names are cut again at a later redraw: a loaded machine takes a while
                await wait_for(pilot, lambda: every_column_shows(app))
                assert table.max_scroll_x == 0  # nothing to scroll sideways to
                for i in range(len(table.rows)):
                    table.move_cursor(row=i)  # scrolls the table to the row
                    await wait_for(pilot, lambda i=i: row_shows_whole(app, i))
                shown = rows(app)
                # the two runs named alike, told apart by when they started
                # (at 80 columns the time of day alone, which leaves the name more room)
                assert re.search("ged  (06-15 )?00:01$", shown[str(first)][0]), shown[str(first)]
                assert re.search("ged  (06-15 )?00:00$", shown[str(second)][0]), shown[str(second)]
                names = [cells[0] for cells in shown.values()]
                assert len(set(names)) == 7, names
                # a sweep's runs together, each with its grid values kept (a list's … after)
                owns = [n.split("  ")[0].removesuffix("…") for n in names[3:]]
                assert [o[:5] for o in owns] == ["rank8", "rank8", "rank1", "rank1"], names
                assert [o[-8:] for o in owns] == ["rate1e-4", "rate5e-5"] * 2, names

            await select(pilot, first.name)  # the row's run, whatever its cell shows
            await pilot.press("d", "y")
            await wait_for(pilot, lambda: not first.exists())
            assert second.is_dir()

    asyncio.run(go())


def diagnosed_run(name: str, started: float) -> Path:
    """A run whose events carry the finding every short builtin:tiny run gets."""
    path = write_run(name, started=started)
    with EventWriter(runs.RunPaths(path).events) as w:
        w.emit(Diagnosis(step=27, kind="slow_convergence", severity="info", message="slow"))
    return path


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_a_diagnosis_leaves_the_names_whole_at_80_columns(home, size):
    """Two tutorial runs, each flagged `⚠ slow_convergence`, read `医療…デル_v1` and
    `段…率テスト` at 80x24 and the loss curve was off screen (a QA finding): the flag gives
    way to the names there (`finished ⚠`), and keeps its kind where the names fit."""
    v1 = diagnosed_run("医療専門知識モデル_v1", T0)
    staged = diagnosed_run("段階学習率テスト", T0 + 10)

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 2 and every_column_shows(app))
            shown = rows(app)
            assert shown[str(v1)][0].startswith("医療専門知識モデル_v1"), shown
            assert shown[str(staged)][0].startswith("段階学習率テスト"), shown
            flag = "finished ⚠" if size[0] == 80 else "finished ⚠ slow_convergence"
            assert [cells[1] for cells in shown.values()] == [flag, flag]

    asyncio.run(go())


@pytest.mark.parametrize(
    ("width", "flag"), [(80, "finished ⚠"), (84, "finished ⚠ slow_convergence +1")]
)
def test_two_findings_give_way_beside_short_names_at_80_columns(home, width, flag):
    """`実験1` and `実験2`, each `finished ⚠ slow_convergence +1` (a QA finding): the names
    fitted whole, so the flag kept its kind, but the columns beside them left the names less
    than they are cut to, and the loss curve sat off screen. A few columns more, the flag
    keeps its kind beside the whole names (it gave way wherever they had under 12 cells)."""
    for i, name in enumerate(("実験1", "実験2")):
        with EventWriter(runs.RunPaths(diagnosed_run(name, T0 + i)).events) as w:
            w.emit(Diagnosis(step=28, kind="plateau", severity="info", message="flat"))

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(width, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 2 and every_column_shows(app))
            assert [cells[1] for cells in rows(app).values()] == [flag] * 2
            assert [cells[0][:3] for cells in rows(app).values()] == ["実験2", "実験1"]

    asyncio.run(go())


def test_a_row_that_widens_a_column_narrows_the_names_on_screen(home):
    """A run added beside a long name (here `early-stopped`, wider than `finished`) cut the
    name shorter, but its column kept the width it had: DataTable's clear() keeps each
    column's widest cell, and the loss curve went off screen at 80 columns (a QA finding)."""
    write_run("医療専門知識モデル_v1_学習率の比較実験", started=T0)

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 1 and every_column_shows(app))
            write_run("早期停止", end="early_stop", started=T0 + 10)
            await wait_for(pilot, lambda: len(rows(app)) == 2)
            await wait_for(pilot, lambda: every_column_shows(app))

    asyncio.run(go())


def test_a_rerun_s_name_stays_readable_beside_its_start_at_80_columns(home):
    """A second run of 医療専門知識モデル_v1, beside an early-stopped and flagged run, read
    `…v1  11-27 07:43` at 80x24 (a QA finding): where the date would leave the name a few
    cells, the time of day alone tells the two apart."""
    write_run("医療専門知識モデル_v1", started=T0)
    first = runs.runs_root() / "医療専門知識モデル_v1-20250615-000000"
    first.rename(first.with_name("医療専門知識モデル_v1-20250614-074300"))
    second = write_run("医療専門知識モデル_v1", started=T0 + 10)
    flagged = write_run("早期停止_発動", end="early_stop", started=T0 + 20)
    with EventWriter(runs.RunPaths(flagged).events) as w:
        w.emit(Diagnosis(step=27, kind="slow_convergence", severity="info", message="slow"))

    async def go():
        app = MlxloraApp(initial="runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: len(rows(app)) == 3 and every_column_shows(app))
            shown = rows(app)
            assert shown[str(flagged)][1] == "early-stopped ⚠"
            names = [
                shown[str(run)][0]
                for run in (first.with_name("医療専門知識モデル_v1-20250614-074300"), second)
            ]
            assert [n[-5:] for n in names] == ["07:43", "00:00"], names
            assert all(n.startswith("医") and "デル_v1" in n for n in names), names

    asyncio.run(go())
