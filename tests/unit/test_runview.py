"""RunView: a run's events folded into status, curves and progress; locks; downsampling."""

from __future__ import annotations

from mlxlora import runs
from mlxlora.events import EventWriter, RunStarted, Step
from mlxlora.metrics import ema
from mlxlora.runview import RunView, downsample


def started(resumed_from: int = 0) -> RunStarted:
    return RunStarted(
        "r", "m", "mlx", "cpu", 8, 2, 100, 10, 1, 2, 0.1, resumed_from_step=resumed_from
    )


def step(n: int, loss: float, at: float) -> Step:
    return Step(n, n / 10, loss, 1e-3, 10, 100.0, 0.5, time=at)


def test_a_resumed_run_drops_the_steps_it_repeats(tmp_path):
    view = RunView(tmp_path)
    view.add([started(), *(step(n, 2.0, n) for n in range(1, 8))])  # killed after step 7
    view.add([started(resumed_from=5), step(6, 1.0, 100), step(7, 1.0, 102)])
    assert list(view.train.x) == [1, 2, 3, 4, 5, 6, 7]
    assert list(view.train.y) == [2.0] * 5 + [1.0, 1.0]
    assert view.smooth.y[-1] == ema(ema(2.0, 1.0), 1.0)
    assert view.eta_seconds() == 93 * 2.0  # this session's pace: 2 s a step
    assert view.status(locked=False) == "interrupted"


def test_downsample_keeps_the_mean_of_each_bucket():
    xs = list(range(100_000))
    x, y = downsample(xs, [1.0, 3.0] * 50_000, 100)
    assert len(x) == 100 and y == [2.0] * 100 and x[0] == 499.5


def test_an_empty_lock_file_is_not_a_running_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXLORA_HOME", str(tmp_path))
    path = runs.runs_root() / "r"
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("name: r\n")
    with EventWriter(path / "events.jsonl") as w:
        w.emit(started())
    (path / ".lock").write_text("")  # kill(0, 0) asks about our own process group: alive
    assert runs.run_info(path).status == "interrupted"


def test_a_half_written_summary_does_not_break_runs_list(home, capsys):
    from mlxlora.cli import main

    run = runs.runs_root() / "half-20261125-000000"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: half\n")
    with EventWriter(run / "events.jsonl") as w:
        w.emit(started())
    (run / "summary.json").write_text('{"outcome": "compl')  # killed mid-write
    assert main(["runs", "list"]) == 0
    assert "half-2026" in capsys.readouterr().out  # the name, wrapped at 80 columns
