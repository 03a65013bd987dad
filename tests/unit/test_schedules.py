"""Learning-rate schedules: warmup, constant, linear, cosine and staged."""

from __future__ import annotations

import pytest

from mlxlora import config, schedules


def build(steps_per_epoch=10, total=100, **training):
    cfg = config.from_dict({"data": {"dataset": "x"}, "training": training})
    return schedules.build(cfg.training, steps_per_epoch, total)


def test_warmup_then_constant():
    s = build(learning_rate=1e-3, warmup_steps=10)
    assert s(1) == pytest.approx(1e-4) and s(5) == pytest.approx(5e-4)
    assert s(10) == pytest.approx(1e-3) and s(11) == s(100) == pytest.approx(1e-3)


def test_linear_and_cosine_decay_to_zero():
    lin = build(learning_rate=1e-3, schedule="linear")
    assert lin(50) == pytest.approx(5e-4) and lin(100) == pytest.approx(0.0)
    cos = build(learning_rate=1e-3, schedule="cosine", warmup_steps=20)
    assert cos(20) == pytest.approx(1e-3)
    assert cos(60) == pytest.approx(5e-4)
    assert cos(100) == pytest.approx(0.0, abs=1e-12)


def test_staged_follows_epochs():
    # tutorial: 1e-4 for 2 epochs, 5e-5 for 2, 1e-5 for 1
    stages = [
        {"learning_rate": 1e-4, "epochs": 2},
        {"learning_rate": 5e-5, "epochs": 2},
        {"learning_rate": 1e-5, "epochs": 1},
    ]
    s = build(steps_per_epoch=10, total=50, schedule="staged", stages=stages)
    assert [s(1), s(20), s(21), s(40), s(41), s(50)] == pytest.approx(
        [1e-4, 1e-4, 5e-5, 5e-5, 1e-5, 1e-5]
    )
