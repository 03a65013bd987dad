"""Numbers, durations, sparklines and names as short text for table cells and panels."""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len

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


def middle_cut(text: str, cells: int) -> str:
    """`text` in at most `cells` terminal cells, cut in the middle (`医療専門…ル_early_stop`):
    names that share a long prefix differ at their end, which a cut at the end loses."""
    if cell_len(text) <= cells:
        return text
    room = max(cells - 1, 0)  # the ellipsis takes one
    tail = ""
    for char in reversed(text):  # the tail gets two thirds: it tells names apart
        if cell_len(char + tail) > room - room // 3:
            break
        tail = char + tail
    head = ""
    for char in text:
        if cell_len(head + char) > room - cell_len(tail):
            break
        head += char
    return head + "…" + tail
