"""Numbers derived from training events, shared by the engine and every face (CLI, TUI).

Imports no mlx, torch or textual.
"""

from __future__ import annotations

import math

# Weight of the past in the smoothed loss: about the last 10 steps count, as in the usual
# trainer dashboards; a single micro-batch's loss is too noisy to read.
LOSS_EMA_DECAY = 0.9


def ema(previous: float | None, value: float, decay: float = LOSS_EMA_DECAY) -> float:
    """Exponential moving average of a loss: `value` itself for the first step."""
    return value if previous is None else decay * previous + (1 - decay) * value


def perplexity(loss: float) -> float:
    """exp(mean cross-entropy), capped at exp(50) so a diverged loss still gives a number."""
    return math.exp(min(loss, 50.0))
