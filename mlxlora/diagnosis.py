"""The tutorial's monitoring and troubleshooting, computed from a run's events: overfitting,
oscillation, plateau, slow convergence, a learning rate too high, truncation, memory near the
limit. Each finding names its evidence and the remedy in mlxlora's config keys (findings.py).

`Diagnoser` folds events one at a time (the trainer feeds it live, a face after the fact);
`diagnose(events)` is the whole run at once. Pure; imports no mlx, torch or textual.
"""

from __future__ import annotations

import bisect
import math
import re
import statistics
from collections.abc import Iterable

from mlxlora.events import Diagnosis, Eval, Event, RunFailed, RunStarted, Step, redone
from mlxlora.findings import REMEDIES, Finding
from mlxlora.memory import fmt_bytes
from mlxlora.metrics import ema

# Thresholds, each the smallest signal worth a user's attention on a small LoRA run.
OVERFIT_EVALS = 2  # validation loss rising this many evaluations in a row (the tutorial's 2)
OSCILLATION_WINDOW = 20  # the latest steps whose scatter around their trend line is measured
OSCILLATION_MIN_STEPS = 10
OSCILLATION_RATIO = 0.2  # scatter around the trend / mean loss beyond which loss oscillates
# ... up and down in turn: residuals correlated at most this much with the step before's
# (a learning rate too high overshoots back and forth, -1; a few short records a step scatter
# at random, about 0: the quick start's -0.18 was flagged)
OSCILLATION_ALTERNATION = -0.4
MAD_TO_STD = 1.4826
SPIKE_WINDOW = 10  # a step's loss against the median of this many steps before it
# a spike: SPIKE_RATIO times the highest of the SPIKE_WINDOW steps before it, and above the
# loss the run started at (the median of its first SPIKE_WINDOW steps). Not the median of
# the window alone: with a few short records a step, losses of 0.005 and 0.5 follow each
# other on a healthy run near its end (the quick start was flagged at 6x and at 12x it)
SPIKE_RATIO = 2.0
PLATEAU_EVALS = 3  # evaluations (after the baseline) over which the best must improve
PLATEAU_MIN_GAIN = 0.01  # relative improvement of best val loss and smoothed train loss
SLOW_MIN_GAIN = 0.1  # after half the steps the smoothed loss should be this far below its start
SLOW_START_STEPS = 5  # the start and the end: means of this many losses (one batch may be odd)
SLOW_MIN_STEPS = 20
TRUNCATION_WARN_SHARE = 0.1
MEMORY_NEAR_SHARE = 0.9
MEMORY_STOP = "memory: "  # how the trainer's run_failed reason begins when the budget stopped it

_NON_FINITE = re.compile(r"became (nan|inf|-inf)", re.IGNORECASE)


def _finding(kind: str, severity: str, step: int, message: str, **evidence) -> Finding:
    return Finding(kind, severity, step, message, evidence, list(REMEDIES[kind]))


class Diagnoser:
    """A run's findings as its events arrive. `new_findings()` returns each kind once, the
    first time it shows (kinds already in `diagnosis` events count as shown)."""

    def __init__(self) -> None:
        self.started: RunStarted | None = None
        self.steps: list[tuple[int, float]] = []  # (step, raw loss)
        self.smooth: list[tuple[int, float]] = []  # (step, smoothed loss)
        self.evals: list[Eval] = []
        self.failed: RunFailed | None = None
        self.peak_gb = 0.0
        self.spikes_checked = 0  # steps lr_too_high has looked at
        self.found: dict[str, Finding] = {}
        self.shown: set[str] = set()

    def add(self, events: Iterable[Event]) -> Diagnoser:
        for e in events:
            if isinstance(e, RunStarted):
                self._restart(e)
            elif isinstance(e, Step):
                self.steps.append((e.step, e.loss))
                previous = self.smooth[-1][1] if self.smooth else None
                self.smooth.append((e.step, e.loss_ema or ema(previous, e.loss)))
                self.peak_gb = max(self.peak_gb, e.peak_memory_gb)
            elif isinstance(e, Eval):
                self.evals.append(e)
                self._check()  # at each evaluation, as the trainer does: first sightings
            elif isinstance(e, RunFailed):
                self.failed = e
                self._check()
            elif isinstance(e, Diagnosis):
                self.shown.add(e.kind)
                self.found.setdefault(e.kind, _from_event(e))
        return self

    def _restart(self, e: RunStarted) -> None:
        """A resumed session repeats the steps after its checkpoint: forget them."""
        self.started, self.failed = e, None
        resumed_from = e.resumed_from_step
        self.steps = [s for s in self.steps if not redone(s[0], resumed_from)]
        self.smooth = [s for s in self.smooth if not redone(s[0], resumed_from)]
        self.evals = [v for v in self.evals if not redone(v.step, resumed_from)]
        self.spikes_checked = min(self.spikes_checked, len(self.steps))
        # found again, or not, from the steps trained again: shown again when found again
        self.found = {k: f for k, f in self.found.items() if not redone(f.step, resumed_from)}
        self.shown &= self.found.keys()

    def _check(self) -> None:
        for check in CHECKS:
            if check.__name__ not in self.found:
                found = check(self)
                if found:
                    self.found[found.kind] = found

    def findings(self) -> list[Finding]:
        """Every kind found so far, the first sighting of each (checked at each evaluation and
        now), in the order found."""
        self._check()
        return list(self.found.values())

    def new_findings(self) -> list[Finding]:
        """Findings not yet shown; marks them shown."""
        new = [f for f in self.findings() if f.kind not in self.shown]
        self.shown.update(f.kind for f in new)
        return new


def diagnose(events: Iterable[Event]) -> list[Finding]:
    """Every finding in a run's events."""
    return Diagnoser().add(events).findings()


def _from_event(e: Diagnosis) -> Finding:
    return Finding(e.kind, e.severity, e.step, e.message, dict(e.evidence), list(e.remedy))


# --- the checks ------------------------------------------------------------------------------


def overfitting(d: Diagnoser) -> Finding | None:
    """Val loss rose at each of the last OVERFIT_EVALS evaluations while train loss fell."""
    evals = d.evals[-(OVERFIT_EVALS + 1) :]
    if len(evals) < OVERFIT_EVALS + 1 or not d.smooth:
        return None
    if not all(b.val_loss > a.val_loss for a, b in zip(evals, evals[1:], strict=False)):
        return None
    train = [_smooth_at(d, e.step) for e in evals]
    if None in train or not train[-1] < train[0]:
        return None
    first, last = evals[0], evals[-1]
    return _finding(
        "overfitting",
        "warning",
        last.step,
        f"val loss rose {first.val_loss:.4f} -> {last.val_loss:.4f} (steps {first.step}-"
        f"{last.step}) while train loss fell {train[0]:.4f} -> {train[-1]:.4f}",
        steps=[e.step for e in evals],
        val_loss=[round(e.val_loss, 4) for e in evals],
        train_loss=[round(t, 4) for t in train],
    )


def oscillation(d: Diagnoser) -> Finding | None:
    """The latest losses scatter around their trend line (robust_line; robust standard
    deviation of the residuals) by more than OSCILLATION_RATIO of their mean, up and down in
    turn (OSCILLATION_ALTERNATION)."""
    window = d.steps[-OSCILLATION_WINDOW:]
    if len(window) < OSCILLATION_MIN_STEPS:
        return None
    xs, ys = [float(s) for s, _ in window], [loss for _, loss in window]
    if not all(map(math.isfinite, ys)):
        return None
    slope, intercept = robust_line(xs, ys)
    residuals = [y - (slope * x + intercept) for x, y in zip(xs, ys, strict=True)]
    mean = statistics.fmean(ys)
    # the median absolute residual, scaled to a standard deviation for normal noise: one
    # spike (lr_too_high's finding) does not make a curve oscillate
    scatter = MAD_TO_STD * statistics.median(abs(r) for r in residuals)
    ratio = scatter / mean if mean > 0 else 0.0
    if ratio <= OSCILLATION_RATIO or lag_one_correlation(residuals) > OSCILLATION_ALTERNATION:
        return None
    return _finding(
        "oscillation",
        "warning",
        window[-1][0],
        f"train loss scatters {ratio:.0%} of its mean around its trend over steps "
        f"{window[0][0]}-{window[-1][0]} (threshold {OSCILLATION_RATIO:.0%})",
        steps=[window[0][0], window[-1][0]],
        relative_scatter=round(ratio, 4),
        threshold=OSCILLATION_RATIO,
    )


def lag_one_correlation(xs: list[float]) -> float:
    """Correlation of each value with the one before it (-1: strictly alternating)."""
    mean = statistics.fmean(xs)
    spread = sum((x - mean) ** 2 for x in xs)
    if not spread:
        return 0.0
    return sum((a - mean) * (b - mean) for a, b in zip(xs, xs[1:], strict=False)) / spread


def lr_too_high(d: Diagnoser) -> Finding | None:
    """A non-finite loss (the run failed on it), or a step's loss SPIKE_RATIO times the
    highest of the SPIKE_WINDOW steps before it and above where the run started."""
    if d.failed and _NON_FINITE.search(d.failed.reason):
        return _finding(
            "lr_too_high",
            "critical",
            d.failed.step,
            f"training failed at step {d.failed.step}: {d.failed.reason}",
            steps=[d.failed.step],
            reason=d.failed.reason,
        )
    # steps already checked are not checked again: the trainer asks at every evaluation
    first = [x for _, x in d.steps[:SPIKE_WINDOW]]
    start = statistics.median(first) if first else 0.0
    for i in range(max(SPIKE_WINDOW, d.spikes_checked), len(d.steps)):
        d.spikes_checked = i + 1
        step, loss = d.steps[i]
        window = [x for _, x in d.steps[i - SPIKE_WINDOW : i]]
        before = statistics.median(window)
        if before > 0 and loss > max(SPIKE_RATIO * max(window), start):
            return _finding(
                "lr_too_high",
                "warning",
                step,
                f"loss spiked to {loss:.4f} at step {step}, {loss / before:.1f}x the median "
                f"{before:.4f} of the {SPIKE_WINDOW} steps before",
                steps=[step],
                loss=round(loss, 4),
                median_before=round(before, 4),
            )
    return None


def plateau(d: Diagnoser) -> Finding | None:
    """Over the last PLATEAU_EVALS evaluations neither the best val loss nor the smoothed
    train loss improved by PLATEAU_MIN_GAIN (relative)."""
    evals = [e for e in d.evals if e.step > 0]
    if len(evals) < PLATEAU_EVALS + 1:
        return None
    before, recent = evals[:-PLATEAU_EVALS], evals[-PLATEAU_EVALS:]
    best_before = min(e.val_loss for e in before)
    best_now = min(best_before, *(e.val_loss for e in recent))
    train = [_smooth_at(d, before[-1].step), _smooth_at(d, recent[-1].step)]
    if None in train or best_before <= 0 or train[0] <= 0:
        return None
    val_gain, train_gain = 1 - best_now / best_before, 1 - train[1] / train[0]
    if val_gain >= PLATEAU_MIN_GAIN or train_gain >= PLATEAU_MIN_GAIN:
        return None
    steps = [before[-1].step, recent[-1].step]
    return _finding(
        "plateau",
        "info",
        steps[1],
        # "no progress" read wrong beside a val loss that fell a little at every evaluation
        f"under {PLATEAU_MIN_GAIN:.0%} progress over steps {steps[0]}-{steps[1]}: best val "
        f"loss {best_before:.4f} -> {best_now:.4f}, smoothed train loss {train[0]:.4f} -> "
        f"{train[1]:.4f}",
        steps=steps,
        best_val_loss=[round(best_before, 4), round(best_now, 4)],
        train_loss=[round(t, 4) for t in train],
    )


def slow_convergence(d: Diagnoser) -> Finding | None:
    """Half the run's steps (and SLOW_MIN_STEPS) done, and neither the train loss (the mean of
    the latest SLOW_START_STEPS against the first ones; raw losses, as a smoothed one lags on a
    short run) nor the val loss (against the step-0 baseline) SLOW_MIN_GAIN lower."""
    s = d.started
    if not s or s.resumed_from_step or len(d.steps) < SLOW_MIN_STEPS:
        return None
    step = d.steps[-1][0]
    first = statistics.fmean(loss for _, loss in d.steps[:SLOW_START_STEPS])
    now = statistics.fmean(loss for _, loss in d.steps[-SLOW_START_STEPS:])
    if step < s.total_steps / 2 or first <= 0 or now < first * (1 - SLOW_MIN_GAIN):
        return None
    if (
        d.evals
        and d.evals[0].step == 0
        and d.evals[-1].val_loss < d.evals[0].val_loss * (1 - SLOW_MIN_GAIN)
    ):
        return None
    return _finding(
        "slow_convergence",
        "info",
        step,
        f"after {step} of {s.total_steps} steps the loss is {now:.4f}, less than "
        f"{SLOW_MIN_GAIN:.0%} below the first steps' {first:.4f}",
        steps=[d.steps[0][0], step],
        loss=[round(first, 4), round(now, 4)],
    )


def truncation(d: Diagnoser) -> Finding | None:
    s = d.started
    if not s or not s.truncated_records:
        return None
    # truncated counts training records, those dropped for it too (train_records does not)
    share = s.truncated_records / max(s.train_records, s.truncated_records, 1)
    severity = "warning" if share >= TRUNCATION_WARN_SHARE else "info"
    return _finding(
        "truncation",
        severity,
        s.resumed_from_step,
        f"{s.truncated_records} training records ({share:.0%}) were cut at data.max_length: "
        "the model never sees their ends",
        truncated_records=s.truncated_records,
        share=round(share, 4),
    )


def memory(d: Diagnoser) -> Finding | None:
    """A run the budget stopped, the estimate over the budget, or a measured peak within 10%
    of it."""
    if d.failed and d.failed.reason.startswith(MEMORY_STOP):
        reason = d.failed.reason.removeprefix(MEMORY_STOP)
        return _finding("memory", "critical", d.failed.step, f"stopped for memory: {reason}")
    s = d.started
    budget = s.memory_budget_gb if s else None
    if not budget:
        return None
    peak = d.peak_gb or s.estimated_peak_gb
    if peak < MEMORY_NEAR_SHARE * budget:
        return None
    measured = "measured" if d.peak_gb else "estimated"
    step = d.steps[-1][0] if d.steps else s.resumed_from_step
    return _finding(
        "memory",
        "critical" if peak > budget else "warning",
        step,
        f"{measured} peak {fmt_bytes(peak * 1e9)} is {peak / budget:.0%} of the "
        f"{fmt_bytes(budget * 1e9)} this device can use",
        peak_gb=round(peak, 3),
        budget_gb=round(budget, 3),
        measured=bool(d.peak_gb),
    )


def robust_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(slope, intercept) by Theil-Sen: the median of the pairwise slopes, so one spike does
    not tilt the trend as it would a least-squares line (20 points: 190 pairs)."""
    slopes = [
        (ys[j] - ys[i]) / (xs[j] - xs[i])
        for i in range(len(xs))
        for j in range(i + 1, len(xs))
        if xs[j] != xs[i]
    ]
    slope = statistics.median(slopes) if slopes else 0.0
    return slope, statistics.median(y - slope * x for x, y in zip(xs, ys, strict=True))


def _smooth_at(d: Diagnoser, step: int) -> float | None:
    """The smoothed train loss at the last step at or before `step`."""
    i = bisect.bisect_right(d.smooth, step, key=lambda point: point[0])
    return d.smooth[i - 1][1] if i else None


CHECKS = (truncation, memory, lr_too_high, overfitting, oscillation, plateau, slow_convergence)
