"""Numbers, durations and sparklines as short text for table cells and panels."""

from __future__ import annotations

from collections.abc import Sequence

from mlxlora.runview import downsample

BARS = "▁▂▃▄▅▆▇█"


def num(value: float | None, spec: str = ".4f") -> str:
    """`value` formatted; "-" when unknown."""
    return "-" if value is None else format(value, spec)


def clock(seconds: float | None) -> str:
    """h:mm:ss; "-" when unknown."""
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def sparkline(values: Sequence[float], width: int = 12) -> str:
    """`values` as at most `width` bars (Textual's Sparkline widget cannot go in a DataTable
    cell), each the mean of its share, scaled min..max."""
    _, ys = downsample(values, values, width)
    if not ys:
        return ""
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or 1.0
    return "".join(BARS[round((y - lo) / span * (len(BARS) - 1))] for y in ys)
