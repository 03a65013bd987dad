"""Numbers, durations and sparklines as short text for table cells and panels."""

from __future__ import annotations

from collections.abc import Sequence

from mlxlora.fmt import clock, num  # noqa: F401 (the tabs import them from here)
from mlxlora.runview import downsample

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 12) -> str:
    """`values` as at most `width` bars (Textual's Sparkline widget cannot go in a DataTable
    cell), each the mean of its share, scaled min..max."""
    _, ys = downsample(values, values, width)
    if not ys:
        return ""
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or 1.0
    return "".join(BARS[round((y - lo) / span * (len(BARS) - 1))] for y in ys)
