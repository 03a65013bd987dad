"""What a run's events say, folded one event at a time: status, progress, loss curves, samples.

A face (the TUI's Runs and Compare tabs, later `runs show`) feeds a `RunView` the events of
one run, all at once or as `EventTail` delivers them, and draws from it. Folding is pure and
cheap (curves are flat arrays), so a run with 100,000 steps stays small and a live run costs
only its new events. Imports no mlx, torch or textual.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

from mlxlora.event_tail import StepBlock
from mlxlora.events import (
    Diagnosis,
    EarlyStop,
    EpochEnd,
    Eval,
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    Sample,
    Step,
    redone,
)
from mlxlora.findings import flag as diagnosis_flag
from mlxlora.metrics import ema
from mlxlora.runs import run_status


class Curve:
    """(x, y) points in two flat float arrays: 100,000 points take 1.6 MB, not 100,000 objects."""

    def __init__(self) -> None:
        self.x = array("d")
        self.y = array("d")

    def __len__(self) -> int:
        return len(self.x)

    def append(self, x: float, y: float) -> None:
        self.x.append(x)
        self.y.append(y)

    def extend(self, xs: array, ys: array) -> None:
        self.x.extend(xs)
        self.y.extend(ys)

    def drop_after(self, x: float) -> None:
        """Forget points past `x` (a resumed run repeats the steps after its checkpoint)."""
        while self.x and self.x[-1] > x:
            self.x.pop()
            self.y.pop()

    def last(self) -> float | None:
        return self.y[-1] if self.y else None


def downsample(
    xs: Sequence[float], ys: Sequence[float], points: int
) -> tuple[list[float], list[float]]:
    """At most `points` points: each the mean of a run of neighbours (one chart cell's worth).

    Sums array slices in C, so 100,000 points take milliseconds.
    """
    n = min(len(xs), len(ys))
    if n <= points:
        return list(xs[:n]), list(ys[:n])
    out_x, out_y = [], []
    for b in range(max(points, 1)):
        lo, hi = b * n // points, (b + 1) * n // points
        if hi > lo:
            out_x.append(math.fsum(xs[lo:hi]) / (hi - lo))
            out_y.append(math.fsum(ys[lo:hi]) / (hi - lo))
    return out_x, out_y


LOG_SIZE = 200  # events a view keeps for a log (a bulk reader keeps this many whole)


class RunView:
    """One run as its events describe it; `add` folds new events in (`StepBlock`s too).

    Attributes:
        started: The latest `run_started` (a resumed run has one per session).
        last_step: The latest `step` event.
        train, smooth, val: Train loss raw and smoothed (EMA), validation loss, by step.
        epoch_ends: Steps at which an epoch ended.
        ending: The `run_finished` or `run_failed` event that ended the latest session.
        samples: The latest answer per (when, prompt).
        log: The last events, newest last, for an event log.
        summary: The run's summary.json as last read ({} before the run wrote one); values
            read with `.get()`, its fields change between versions.
        eval: The run's eval.json as last read ({} before `mlxlora eval` wrote one).
        diagnoses: The `diagnosis` events, one per kind, in the order found.
    """

    def __init__(self, path: Path, log_size: int = LOG_SIZE):
        self.path = Path(path)
        self.started: RunStarted | None = None
        self.last_step: Step | None = None
        self.session_first_step: Step | None = None
        self.train, self.smooth, self.val = Curve(), Curve(), Curve()
        self.evals: list[Eval] = []
        self.epoch_ends: list[int] = []
        self.ending: RunFinished | RunFailed | None = None
        self.early_stop: EarlyStop | None = None
        self.samples: dict[tuple[str, str], Sample] = {}
        self.log: deque[Event] = deque(maxlen=log_size)
        self.summary: dict = {}
        self.eval: dict = {}
        self.diagnoses: dict[str, Diagnosis] = {}
        self.first_time: float | None = None  # of the first event: when the run began
        self.events_seen = 0
        self.peak_memory_gb = 0.0
        self.tokens_per_sec = Curve()

    def add(self, events: Iterable[Event | StepBlock]) -> None:
        for event in events:
            self.first_time = self.first_time or event.time
            if isinstance(event, StepBlock):  # older than the events a log shows
                self.events_seen += len(event)
            else:
                self.events_seen += 1
                self.log.append(event)
            handler = _HANDLERS.get(type(event))
            if handler:
                handler(self, event)

    def _started(self, e: RunStarted) -> None:
        self.started, self.ending, self.session_first_step = e, None, None
        # what the session records again goes: each step and evaluation is shown once
        resumed_from = e.resumed_from_step
        for curve in (self.train, self.smooth, self.tokens_per_sec):
            curve.drop_after(resumed_from)
        self.evals = [v for v in self.evals if not redone(v.step, resumed_from)]
        self.val = Curve()
        for v in self.evals:
            self.val.append(v.step, v.val_loss)
        self.epoch_ends = [s for s in self.epoch_ends if not redone(s, resumed_from)]
        # a finding from steps the session trains again is found again, or (a resume with
        # another configuration) not at all
        kept = self.diagnoses.items()
        self.diagnoses = {k: d for k, d in kept if not redone(d.step, resumed_from)}

    def _step(self, e: Step) -> None:
        self.last_step = e
        self.session_first_step = self.session_first_step or e
        # the engine's EMA saw every step (log_every may skip some); older runs lack it
        smooth = e.loss_ema if e.loss_ema is not None else ema(self.smooth.last(), e.loss)
        self.smooth.append(e.step, smooth)
        self.train.append(e.step, e.loss)
        self.peak_memory_gb = max(self.peak_memory_gb, e.peak_memory_gb)
        self.tokens_per_sec.append(e.step, e.tokens_per_sec)

    def _step_block(self, b: StepBlock) -> None:
        self.last_step = b.last
        self.session_first_step = self.session_first_step or b.first
        self.smooth.extend(b.steps, b.losses_ema)  # a block's steps all carry loss_ema
        self.train.extend(b.steps, b.losses)
        self.peak_memory_gb = max(self.peak_memory_gb, b.peak_memory_gb)
        self.tokens_per_sec.extend(b.steps, b.tokens_per_sec)

    def _eval(self, e: Eval) -> None:
        self.evals.append(e)
        self.val.append(e.step, e.val_loss)

    def _epoch_end(self, e: EpochEnd) -> None:
        self.epoch_ends.append(e.step)

    def _sample(self, e: Sample) -> None:
        self.samples[(e.when, e.prompt)] = e

    def _diagnosis(self, e: Diagnosis) -> None:
        self.diagnoses.setdefault(e.kind, e)

    def _early_stop(self, e: EarlyStop) -> None:
        self.early_stop = e

    def _ending(self, e: RunFinished | RunFailed) -> None:
        self.ending = e

    # --- what a face shows ----------------------------------------------------------------

    def status(self, locked: bool) -> str:
        """running | finished | early-stopped | stopped | failed | interrupted | new.

        `locked`: a live process holds the run's lock (only then is a started run running).
        """
        latest = [e for e in (self.ending or self.started,) if e is not None]
        status = run_status(latest, locked)
        return "early-stopped" if status == "finished" and self.early_stop else status

    @property
    def step(self) -> int:
        return self.last_step.step if self.last_step else 0

    @property
    def total_steps(self) -> int:
        return self.started.total_steps if self.started else 0

    @property
    def best_eval(self) -> Eval | None:
        """The lowest validation loss after training began, as the run's summary counts it:
        the baseline (step 0, the untouched model) is no checkpoint to keep."""
        trained = [e for e in self.evals if e.step > 0]
        return min(trained, key=lambda e: e.val_loss, default=None)

    @property
    def mean_tokens_per_sec(self) -> float | None:
        """The mean of the steps' tok/s (a step a resume trained again counted once)."""
        speeds = self.tokens_per_sec.y
        return math.fsum(speeds) / len(speeds) if speeds else None

    @property
    def elapsed_sec(self) -> float | None:
        """Training seconds from the summary while it is current (the latest session ended:
        its summary is written before its end); in a session resumed since, the summary's
        (its earlier sessions') plus this session's wall-clock so far; with no summary,
        wall-clock from the first event to the latest (stops included)."""
        elapsed = self.summary.get("elapsed_sec")
        latest = self.log[-1].time if self.log else None
        if elapsed is not None and (self.ending is not None or self.started is None):
            return elapsed
        if elapsed is not None and self.started and latest:
            return elapsed + max(0.0, latest - self.started.time)
        if latest and self.first_time:
            return latest - self.first_time
        return elapsed

    @property
    def peak_memory(self) -> float | None:
        """Peak GB: the summary's (the whole process's) or the highest a step reported."""
        return self.summary.get("peak_memory_gb") or self.peak_memory_gb or None

    @property
    def flag(self) -> str:
        """The run's diagnosis in a word or two for a list ("" when none)."""
        return diagnosis_flag(self.diagnoses.values())

    @property
    def failure(self) -> str | None:
        return self.ending.reason if isinstance(self.ending, RunFailed) else None

    def epoch_progress(self) -> tuple[float, int]:
        """(fraction of the current epoch done, epochs in the run), from the step count."""
        if not self.started or not self.started.steps_per_epoch:
            return 0.0, 0
        per_epoch = self.started.steps_per_epoch
        epochs = math.ceil(self.total_steps / per_epoch)
        if self.step >= self.total_steps:
            return 1.0, epochs
        return (self.step % per_epoch) / per_epoch, epochs

    def eta_seconds(self) -> float | None:
        """Seconds to the last step at this session's pace, were it still running; None before
        two steps were seen."""
        first, last = self.session_first_step, self.last_step
        if not first or not last or last.step <= first.step:
            return None
        per_step = (last.time - first.time) / (last.step - first.step)
        return max(self.total_steps - last.step, 0) * per_step


_HANDLERS = {
    RunStarted: RunView._started,
    Step: RunView._step,
    StepBlock: RunView._step_block,
    Eval: RunView._eval,
    EpochEnd: RunView._epoch_end,
    Sample: RunView._sample,
    EarlyStop: RunView._early_stop,
    Diagnosis: RunView._diagnosis,
    RunFinished: RunView._ending,
    RunFailed: RunView._ending,
}


def read_config(path: Path) -> dict:
    """A run's resolved config.yaml as a dict, or {} when missing or unreadable."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
