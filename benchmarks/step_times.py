"""Per-step timing shared by the training benchmarks: a mean hides whether a slow side is
slow throughout or pays a few spikes (a compiled step tracing again for a new shape)."""

from __future__ import annotations


def spread(step_seconds: list[float]) -> str:
    """', step median M s, slowest S s' for a side's timed steps ('' when it has none)."""
    times = sorted(step_seconds)
    if not times:
        return ""
    return f", step median {times[len(times) // 2]:.3f} s, slowest {times[-1]:.3f} s"
