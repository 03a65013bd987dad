"""Diagnosis on synthetic curves: each kind fires on its own curve, none on a healthy one."""

from __future__ import annotations

import math

import pytest

from mlxlora import diagnosis, findings
from mlxlora.diagnosis import Diagnoser, diagnose
from mlxlora.events import Diagnosis, Eval, RunFailed, RunStarted, Step

TOTAL = 100


def started(truncated: int = 0, budget: float | None = 8.0, estimated: float = 0.5, **kw):
    return RunStarted(
        run_dir="r",
        model="builtin:tiny",
        backend="mlx",
        device="cpu",
        train_records=108,
        val_records=12,
        total_steps=TOTAL,
        steps_per_epoch=20,
        trainable_params=1,
        total_params=2,
        estimated_peak_gb=estimated,
        truncated_records=truncated,
        memory_budget_gb=budget,
        **kw,
    )


def healthy_loss(step: int) -> float:
    return 3.0 * math.exp(-step / 30) + 1.0 + 0.03 * math.sin(step)


def run_events(loss=healthy_loss, val=None, steps=TOTAL, peak=0.5, **start) -> list:
    """A run: run_started, a step event per step, an eval every 10 steps (and a baseline)."""
    val = val or (lambda s: healthy_loss(s) + 0.2)
    events = [started(**start), Eval(step=0, epoch=0.0, val_loss=val(0), perplexity=1.0)]
    for s in range(1, steps + 1):
        events.append(
            Step(
                step=s,
                epoch=s / 20,
                loss=loss(s),
                lr=1e-4,
                tokens=100,
                tokens_per_sec=1.0,
                peak_memory_gb=peak,
            )
        )
        if s % 10 == 0:
            events.append(Eval(step=s, epoch=s / 20, val_loss=val(s), perplexity=1.0))
    return events


def kinds(events) -> list[str]:
    return [f.kind for f in diagnose(events)]


def test_healthy_run_has_no_finding():
    assert kinds(run_events()) == []


def test_overfitting_val_rising_while_train_falls():
    def val(s):  # falls to step 50, then rises 0.05 per evaluation
        return healthy_loss(min(s, 50)) + 0.2 + 0.005 * max(s - 50, 0)

    found = diagnose(run_events(val=val))
    assert [f.kind for f in found] == ["overfitting"]
    f = found[0]
    assert f.step == 70 and f.evidence["steps"] == [50, 60, 70]  # the second rise in a row
    assert f.evidence["val_loss"][0] < f.evidence["val_loss"][1] < f.evidence["val_loss"][2]
    assert f.evidence["train_loss"][2] < f.evidence["train_loss"][0]
    assert any("early_stopping.patience" in r for r in f.remedy)


def test_val_rising_with_train_rising_is_not_overfitting():
    def rising(s):
        return 2.0 + 0.01 * s

    assert "overfitting" not in kinds(run_events(loss=rising, val=rising))


def test_oscillation_alternating_loss():
    found = diagnose(run_events(loss=lambda s: healthy_loss(s) + 0.8 * (-1) ** s))
    assert [f.kind for f in found] == ["oscillation"]
    f = found[0]
    assert f.step == 10 and f.evidence["steps"] == [1, 10]  # seen at the first evaluation
    assert f.evidence["relative_scatter"] > diagnosis.OSCILLATION_RATIO
    assert any("learning_rate" in r for r in found[0].remedy)


def test_spike_is_a_learning_rate_too_high():
    found = diagnose(run_events(loss=lambda s: 9.0 if s == 40 else healthy_loss(s)))
    assert [f.kind for f in found] == ["lr_too_high"]
    assert found[0].step == 40 and found[0].evidence["loss"] == 9.0
    assert found[0].severity == "warning"


def test_nan_failure_is_a_learning_rate_too_high():
    events = run_events(steps=12)
    events.append(RunFailed(reason="loss became nan at step 13; lower the learning rate", step=12))
    found = diagnose(events)
    assert [f.kind for f in found] == ["lr_too_high"] and found[0].severity == "critical"


def test_plateau_after_an_early_fall():
    def flat(s):  # falls until step 40, then flat
        return healthy_loss(min(s, 40)) - 0.03 * math.sin(min(s, 40))

    found = diagnose(run_events(loss=flat, val=lambda s: flat(s) + 0.2))
    assert [f.kind for f in found] == ["plateau"]
    # the smoothed train loss (EMA, about 10 steps' memory) settles by step 70
    assert found[0].step == 100 and found[0].evidence["steps"] == [70, 100]
    assert found[0].message.startswith("under 1% progress over steps 70-100: best val loss")
    before, now = found[0].evidence["best_val_loss"]
    assert before - now < diagnosis.PLATEAU_MIN_GAIN * before


def test_slow_convergence_loss_hardly_falls():
    def slow(s):
        return 5.0 - 0.004 * s

    found = diagnose(run_events(loss=slow, val=lambda s: slow(s) + 0.2))
    assert [f.kind for f in found] == ["slow_convergence"]
    assert found[0].step == 50  # half the steps done, 4% below the start
    assert diagnose(run_events(loss=slow, steps=49)) == []
    # the val loss fell 20% from the baseline: the model is learning, whatever the batches say
    assert kinds(run_events(loss=slow, val=lambda s: 5.0 - 0.02 * s)) == []


def test_a_short_run_is_not_slow_to_converge():
    """A run of a few steps: the smoothed loss has barely moved yet (a real 6-step run fired)."""
    events = run_events(loss=lambda s: 2.0, steps=6)
    events[0].total_steps = 6
    assert kinds(events) == []


def test_truncation_share_sets_severity():
    found = diagnose(run_events(truncated=30))
    assert [(f.kind, f.severity) for f in found] == [("truncation", "warning")]
    assert found[0].evidence == {"truncated_records": 30, "share": 0.2778}  # of 108
    assert diagnose(run_events(truncated=3))[0].severity == "info"


@pytest.mark.parametrize(("peak", "severity"), [(0.95, "warning"), (1.2, "critical")])
def test_memory_near_or_over_the_budget(peak, severity):
    found = diagnose(run_events(peak=peak, budget=1.0))
    assert [(f.kind, f.severity) for f in found] == [("memory", severity)]
    assert found[0].evidence["peak_gb"] == peak
    # what to lower, never a fixed number (a run of max_length 256 was told "1024")
    assert any("lower data.max_length" in r for r in found[0].remedy)
    assert not any(ch.isdigit() for r in found[0].remedy for ch in r)
    assert kinds(run_events(peak=0.85, budget=1.0)) == []


def test_new_findings_once_each_and_resumed_history_counts():
    d = Diagnoser()
    d.add(run_events(truncated=30, steps=10))
    assert [f.kind for f in d.new_findings()] == ["truncation"]
    assert d.new_findings() == []
    # a Diagnosis already in the events (an earlier session emitted it) is not emitted again
    again = Diagnoser().add([*run_events(truncated=30, steps=10), d.findings()[0].event()])
    assert again.new_findings() == []


def test_a_resume_forgets_the_findings_of_the_steps_it_trains_again():
    """A finding an earlier session recorded after the checkpoint a session resumes from is
    checked again on the steps trained again (a resume with --fit trains them otherwise), and
    emitted again only if found again: it is neither kept nor counted as shown."""
    plateau = Diagnosis(step=8, kind="plateau", severity="info", message="flat")
    resumed = Diagnoser().add([*run_events(steps=10), plateau])
    assert [f.kind for f in resumed.findings()] == ["plateau"]
    resumed.add([started(resumed_from_step=5)])
    assert resumed.findings() == [] and resumed.new_findings() == []
    kept = Diagnoser().add([*run_events(steps=10), plateau, started(resumed_from_step=8)])
    assert [f.kind for f in kept.findings()] == ["plateau"]  # recorded at the checkpoint


def test_finding_event_round_trips():
    finding = diagnose(run_events(truncated=30))[0]
    event = finding.event()
    assert isinstance(event, Diagnosis) and event.kind == "truncation"
    assert event.remedy == findings.REMEDIES["truncation"]
    assert Diagnoser().add([event]).findings()[0].evidence == finding.evidence


def test_a_healthy_run_of_a_few_short_records_a_step_is_flagged_for_nothing():
    """The quick start's per-step losses (README's first command, a few short records a
    step) run from 0.001 to 1.05 at random on a healthy run: it was flagged lr_too_high (a
    step at 3x, later 6x and 12x the window's median) and oscillation (scatter 72%)."""
    quick = [1.803, 1.687, 0.173, 1.052, 1.017, 0.728, 0.233, 0.097, 0.643, 0.381, 0.133,
             0.122, 0.019, 0.945, 0.017, 0.022, 0.17, 0.287, 0.078, 0.659, 0.023, 0.258,
             0.005, 0.172, 0.753, 0.535, 0.421, 0.025, 0.002, 0.315, 0.191, 0.552, 0.461,
             0.259, 0.564, 0.159, 0.06, 0.053, 0.091, 0.017, 0.035, 0.016, 0.003, 0.003,
             0.179, 0.141, 0.51, 0.001, 0.234, 0.001, 0.193, 0.01, 0.066, 0.585]  # fmt: skip
    found = diagnose(run_events(steps=len(quick), loss=lambda s: quick[s - 1]))
    assert not {"lr_too_high", "oscillation"} & {f.kind for f in found}
