"""Learning-rate schedules as plain functions of the optimizer step (1-based).

Backend-agnostic: the engine computes the rate on the host and hands it to the backend, so the
MLX and torch backends follow the same curve and a resumed run continues it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from mlxlora.config import TrainingConfig

Schedule = Callable[[int], float]


def build(cfg: TrainingConfig, steps_per_epoch: int, total_steps: int) -> Schedule:
    """The schedule for `cfg`: linear warmup from 0, then constant, linear, cosine or staged."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    peak = cfg.learning_rate
    decay_steps = max(total_steps - warmup, 1)

    if cfg.schedule == "staged":
        bounds, rates, end = [], [], 0.0
        for stage in cfg.stages:
            end += stage.epochs * steps_per_epoch
            bounds.append(round(end))
            rates.append(stage.learning_rate)
        peak = rates[0]

        def after_warmup(step: int) -> float:
            for bound, rate in zip(bounds, rates, strict=False):
                if step <= bound:
                    return rate
            return rates[-1]

    elif cfg.schedule == "linear":

        def after_warmup(step: int) -> float:
            return peak * max(0.0, 1.0 - (step - warmup) / decay_steps)

    elif cfg.schedule == "cosine":

        def after_warmup(step: int) -> float:
            progress = min(max((step - warmup) / decay_steps, 0.0), 1.0)
            return peak * 0.5 * (1.0 + math.cos(math.pi * progress))

    else:

        def after_warmup(step: int) -> float:
            return peak

    def schedule(step: int) -> float:
        if step <= warmup:
            return peak * step / warmup
        return after_warmup(step)

    return schedule
