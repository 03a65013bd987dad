"""RunView: a run's events folded into status, curves and progress; locks; downsampling."""

from __future__ import annotations

from mlxlora import events, runlist, runs
from mlxlora.event_tail import EventTail, StepBlock, parse_bulk
from mlxlora.events import (
    Diagnosis,
    Eval,
    EventWriter,
    RunFinished,
    RunStarted,
    Step,
    read_events,
)
from mlxlora.metrics import ema
from mlxlora.runview import RunView, downsample


def started(resumed_from: int = 0) -> RunStarted:
    return RunStarted(
        "r", "m", "mlx", "cpu", 8, 2, 100, 10, 1, 2, 0.1, resumed_from_step=resumed_from
    )


def step(n: int, loss: float, at: float) -> Step:
    return Step(n, n / 10, loss, 1e-3, 10, 100.0, 0.5, time=at)


def test_a_resumed_runs_elapsed_time_goes_on_from_its_last_summary(tmp_path):
    view = RunView(tmp_path)
    first = started()
    view.add([first, step(4, 2.0, first.time + 70)])  # log_every 4: step 5 not logged
    view.summary = {"elapsed_sec": 77.0, "steps": 5}  # written when it stopped at step 5
    view.add([RunFinished(step=5, best_val_loss=None, best_step=None, elapsed_sec=77.0)])
    assert view.elapsed_sec == 77.0
    resumed = started(resumed_from=5)
    view.add([resumed, step(6, 1.0, resumed.time + 30)])  # the summary is the stop's
    assert view.elapsed_sec == 77.0 + 30  # it froze at 77 before


def test_a_resumed_run_drops_the_steps_it_repeats(tmp_path):
    view = RunView(tmp_path)
    view.add([started(), *(step(n, 2.0, n) for n in range(1, 8))])  # killed after step 7
    view.add([started(resumed_from=5), step(6, 1.0, 100), step(7, 1.0, 102)])
    assert list(view.train.x) == [1, 2, 3, 4, 5, 6, 7]
    assert list(view.train.y) == [2.0] * 5 + [1.0, 1.0]
    assert view.smooth.y[-1] == ema(ema(2.0, 1.0), 1.0)
    assert view.eta_seconds() == 93 * 2.0  # this session's pace: 2 s a step
    assert view.status(locked=False) == "interrupted"


def test_a_resumed_run_drops_the_findings_of_the_steps_it_repeats(tmp_path):
    """A finding recorded after the checkpoint a run resumes from is found again by the
    steps trained again, or not at all (a resume with --fit trains them otherwise): the
    earlier session's is not shown; one from before the checkpoint stays."""

    def finding(kind: str, at: int) -> Diagnosis:
        return Diagnosis(step=at, kind=kind, severity="warning", message=kind)

    view = RunView(tmp_path)
    view.add([started(), *(step(n, 2.0, n) for n in range(1, 8))])
    view.add([finding("truncation", 4), finding("plateau", 7)])  # killed after step 7
    view.add([started(resumed_from=5), step(6, 1.0, 100)])
    assert list(view.diagnoses) == ["truncation"]
    assert [e.kind for e in events.once(view.log) if isinstance(e, Diagnosis)] == ["truncation"]


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
    assert runlist.run_info(path).status == "interrupted"


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


def test_bulk_reading_folds_to_the_same_view_as_event_by_event(tmp_path):
    """A long run read in bulk (StepBlocks, in slices) gives the curves, numbers and log that
    parsing every event gives: through a resume, an old step without loss_ema, an eval, a
    corrupt line and a line cut off mid-write."""
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as w:
        w.emit(started())
        for n in range(1, 600):
            w.emit(
                Step(n, n / 10, 3.0 - n / 1000, 1e-3, 10, 100.0 + n, 0.5 + n / 1e4, loss_ema=2.5)
            )
        w.emit(Eval(599, 59.9, 1.5, 4.5, time=2.0))
        w.emit(started(resumed_from=500))
        w.emit(Step(501, 50.1, 0.7, 1e-3, 10, 90.0, 0.3, time=3.0))  # no loss_ema: an old run
        for n in range(502, 900):
            w.emit(Step(n, n / 10, 1.0, 1e-3, 10, 80.0, 0.4, loss_ema=0.9, time=4.0))
    with open(path, "a") as f:
        f.write('{"type": "step", "time": 5.0, "step": 9\n{"type": "step", "time": 6.0, "st')

    whole, bulk = RunView(tmp_path, log_size=50), RunView(tmp_path, log_size=50)
    whole.add(read_events(path))
    tail = EventTail(path)
    while news := tail.read_bulk(max_bytes=20_000, keep=50):  # slices, as the app reads
        bulk.add(news)
    assert any(isinstance(e, StepBlock) for e in parse_bulk(path.read_bytes()[:60_000], 50))
    for curve in ("train", "smooth", "val"):
        assert getattr(bulk, curve).x == getattr(whole, curve).x
        assert getattr(bulk, curve).y == getattr(whole, curve).y
    assert list(bulk.log) == list(whole.log) and bulk.events_seen == whole.events_seen == 1001
    assert (bulk.last_step, bulk.session_first_step) == (whole.last_step, whole.session_first_step)
    assert bulk.peak_memory_gb == whole.peak_memory_gb == 0.5 + 599 / 1e4
    assert abs(bulk.mean_tokens_per_sec - whole.mean_tokens_per_sec) < 1e-9


def test_run_info_reads_the_head_and_the_tail_of_a_long_run(tmp_path, monkeypatch):
    """A list of runs must not re-read every run's whole history (the studio shows it often)."""
    run = tmp_path / "long"
    run.mkdir()
    (run / "config.yaml").write_text("name: long\n")
    with EventWriter(run / "events.jsonl") as w:
        w.emit(started())
        for n in range(1, 3001):
            w.emit(step(n, 5.0 - n / 1000, at=1000.0 + n))
    for module in (runs, events):  # reading every event must not happen
        monkeypatch.setattr(module, "read_events", None)
    info = runlist.run_info(run)
    assert (info.status, info.step, info.loss_ema, info.model) == ("interrupted", 3000, 2.0, "m")
    with EventWriter(run / "events.jsonl") as w:
        w.emit(RunFinished(step=3000, best_val_loss=1.5, best_step=3000, elapsed_sec=9.0))
    assert runlist.run_info(run).status == "finished"


def test_the_baseline_evaluation_is_no_best(tmp_path):
    """Stopped right after the untouched model's evaluation (step 0): the Runs tab said best
    val 1.6569 where runs list and the summary say none (no adapter holds it)."""
    view = RunView(tmp_path)
    view.add([started(), Eval(step=0, epoch=0.0, val_loss=1.6569, perplexity=5.2)])
    assert view.best_eval is None and view.val.last() == 1.6569  # on the chart, not the best
    view.add([Eval(step=4, epoch=0.4, val_loss=1.9, perplexity=6.7)])
    assert view.best_eval.step == 4  # the best checkpoint, even when worse than the baseline
