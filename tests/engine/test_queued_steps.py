"""On CUDA the torch backend returns a step's loss and gradient norm as values the GPU still
computes (DeviceScalar), and the engine reads them once the next step is queued. Here, on the
CPU, a stand-in that reads like one (and logs when) runs the real engine: the same losses as
read at once, reads one step behind, a stop and a resume that match an uninterrupted run,
and a non-finite loss that fails the run at its own step."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("peft")

from mlxlora import engine  # noqa: E402
from mlxlora.errors import TrainingFailed  # noqa: E402
from mlxlora.events import RunFailed, Step, read_events  # noqa: E402
from mlxlora.runs import RunPaths  # noqa: E402
from tests.engine.test_train import make_config, steps, stop_at  # noqa: E402

OVERRIDES = ("backend=torch", "training.max_steps=8", "training.eval_every=4")
EVAL_SECONDS = 0.5


class LateScalar:
    """Reads as DeviceScalar does (float() gives scalar / divisor), and logs the read."""

    def __init__(self, scalar, divisor, log):
        self._value, self._log = scalar.item() / divisor, log

    def __float__(self) -> float:
        self._log.append("read")
        return self._value


@pytest.fixture
def late_reads(monkeypatch):
    """The torch backend's numbers read late, as on CUDA; the log of queued steps and reads."""
    from mlxlora.backends.torch import TorchBackend

    log: list[str] = []
    update = TorchBackend.update

    def logged_update(self, lr, grad_clip):
        log.append("queued")
        return update(self, lr, grad_clip)

    monkeypatch.setattr(
        TorchBackend, "_read", lambda self, s, divisor=1: LateScalar(s, divisor, log)
    )
    monkeypatch.setattr(TorchBackend, "update", logged_update)
    return log


def test_a_step_is_read_once_the_next_is_queued_and_loses_nothing(
    home, quickstart_data, tmp_path, late_reads, monkeypatch
):
    from mlxlora.trainer import Trainer

    evaluate, evaluations = Trainer.evaluate, []

    def slow_evaluate(self):
        start = time.time()  # the clock of the events' times
        time.sleep(EVAL_SECONDS)
        loss = evaluate(self)
        evaluations.append((start, time.time()))
        return loss

    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    cfg = make_config(quickstart_data, *OVERRIDES)
    engine.train(cfg, tmp_path / "late")
    # a step's time is its own: the evaluation after steps 4 and 8 is not in theirs. Each
    # step's time ends as its event is made, and overlaps no evaluation (its length against
    # EVAL_SECONDS told it on an idle machine only: a step took 2-4 s on two busy cores)
    timed = [e for e in read_events(tmp_path / "late" / "events.jsonl") if isinstance(e, Step)]
    spans = {e.step: (e.time - e.tokens / e.tokens_per_sec, e.time) for e in timed}
    assert evaluations
    for start, end in evaluations:
        overlaps = {s: min(b, end) - max(a, start) for s, (a, b) in spans.items()}
        assert max(overlaps.values()) < EVAL_SECONDS / 2, overlaps
    # the first step's two numbers (loss, norm) were read after the second step was queued,
    # and every step's were read before the run ended
    assert late_reads[:4] == ["queued", "queued", "read", "read"]
    assert late_reads.count("read") == 2 * late_reads.count("queued") == 16
    late = steps(tmp_path / "late")
    with pytest.MonkeyPatch.context() as undo:
        from mlxlora.backends.torch import TorchBackend

        undo.setattr(TorchBackend, "_read", lambda self, s, divisor=1: s.item() / divisor)
        engine.train(cfg, tmp_path / "at-once")
    assert late == steps(tmp_path / "at-once")  # the same losses, steps and checkpoints
    assert sorted(late) == list(range(1, 9))


def test_a_stop_and_resume_with_late_reads_match_an_uninterrupted_run(
    home, quickstart_data, tmp_path, late_reads
):
    cfg = make_config(quickstart_data, *OVERRIDES, "lora.dropout=0.1")
    full, part = tmp_path / "full", tmp_path / "part"
    engine.train(cfg, full)
    # step 3's event comes once step 4 is queued: the run stops with step 4 done
    assert engine.train(cfg, part, listeners=[stop_at(part, 3)])["steps"] == 4
    engine.train(None, part, resume=True)
    expected, got = steps(full), steps(part)
    assert sorted(got) == list(range(1, 9))
    np.testing.assert_allclose([got[s] for s in got], [expected[s] for s in got], rtol=1e-6)


def test_a_non_finite_loss_read_late_fails_the_run_at_its_own_step(
    home, quickstart_data, tmp_path, late_reads
):
    run = tmp_path / "run"
    paths = RunPaths(run)
    good = make_config(quickstart_data, "backend=torch", "training.max_steps=6")
    assert engine.train(good, run, listeners=[stop_at(run, 2)])["steps"] == 3
    # resumed with an absurd learning rate, step 4's update ruins the weights: step 5's
    # numbers are read once step 6 is queued, and the run fails at step 5
    bad = paths.config.read_text().replace("learning_rate: 0.005", "learning_rate: 1.0e+30")
    paths.config.write_text(bad.replace("grad_clip: 1.0", "grad_clip: 0.0"))
    with pytest.raises(TrainingFailed, match="nan|inf"):
        engine.train(None, run, resume=True)
    failed = [e for e in read_events(paths.events) if isinstance(e, RunFailed)][-1]
    assert " at step 5;" in failed.reason and failed.step == 4  # done before the failed one
    assert failed.last_checkpoint == str(paths.latest_checkpoint())
    assert paths.latest_checkpoint().name == "step-0000003"


def test_a_step_that_fails_to_queue_leaves_the_step_before_recorded(
    home, quickstart_data, tmp_path, late_reads, monkeypatch
):
    from mlxlora.backends.torch import TorchBackend

    accumulate, calls = TorchBackend.accumulate, []

    def out_of_memory_at_the_third(self, batch, seed):
        calls.append(seed)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory (a stand-in)")
        return accumulate(self, batch, seed)

    monkeypatch.setattr(TorchBackend, "accumulate", out_of_memory_at_the_third)
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.train(make_config(quickstart_data, *OVERRIDES), tmp_path / "run")
    assert sorted(steps(tmp_path / "run")) == [1, 2]  # step 2 was still unread


def test_an_epoch_ends_with_every_step_of_it_read(home, quickstart_data, tmp_path, late_reads):
    """The last step of an epoch is still unread when the epoch ends: its loss counts in the
    epoch's mean all the same, as when every step is read at once."""
    from mlxlora.backends.torch import TorchBackend
    from mlxlora.events import EpochEnd

    cfg = make_config(quickstart_data, "backend=torch", "training.epochs=2")
    engine.train(cfg, tmp_path / "late")
    with pytest.MonkeyPatch.context() as undo:
        undo.setattr(TorchBackend, "_read", lambda self, s, divisor=1: s.item() / divisor)
        engine.train(cfg, tmp_path / "at-once")
    late, at_once = (
        [e for e in read_events(tmp_path / run / "events.jsonl") if isinstance(e, EpochEnd)]
        for run in ("late", "at-once")
    )
    assert [e.epoch for e in late] == [1, 2]
    assert [e.train_loss for e in late] == [e.train_loss for e in at_once]
    assert steps(tmp_path / "late") == steps(tmp_path / "at-once")


def test_a_step_s_peak_memory_is_its_own_not_the_next_step_s(
    home, quickstart_data, tmp_path, late_reads, monkeypatch
):
    """A GPU's allocator counts a step's memory as it is queued: read once the next step is
    queued too, the peak was that step's (a review finding)."""
    from mlxlora.backends.torch import TorchBackend

    # a stand-in peak that grows by 1 GB with each step queued
    monkeypatch.setattr(
        TorchBackend, "peak_memory_bytes", lambda self: int(late_reads.count("queued") * 1e9)
    )
    engine.train(make_config(quickstart_data, *OVERRIDES), tmp_path / "run")
    timed = [e for e in read_events(tmp_path / "run" / "events.jsonl") if isinstance(e, Step)]
    assert [e.peak_memory_gb for e in timed] == [float(e.step) for e in timed]
