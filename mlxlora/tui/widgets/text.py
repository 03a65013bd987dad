"""Numbers, durations, sparklines and names as short text for table cells and panels."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.cells import cell_len
from rich.text import Text

from mlxlora import runs
from mlxlora.fmt import clock, num  # noqa: F401 (the tabs import them from here)
from mlxlora.runview import downsample

BARS = "▁▂▃▄▅▆▇█"
REPEATED_NAME_CELLS = 8  # a name two runs share keeps this much beside when each started
SWEEP_HINT_CELLS = 6  # "  (" and the start of the sweep's name, after a sweep's run cut to fit


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


def end_cut(text: str, cells: int) -> str:
    """`text` in at most `cells` terminal cells, its end cut with "…" (as a list cuts a label)."""
    cut = Text(text)
    cut.truncate(cells, overflow="ellipsis")
    return cut.plain


def own_name(path: Path, sweep: str | None) -> str:
    """A run's given name; a sweep's run's without the sweep's name."""
    name = runs.given_name(path)
    return name.removeprefix(f"{sweep}-") if sweep else name


def run_labels(
    paths: Sequence[Path], sweep_of: Callable[[Path], str | None], room: int | None
) -> list[str]:
    """Each run as a list shows it in `room` cells (None: whole), what tells it from the
    others first (what does not fit is cut at the end of the line): its name, then when it started
    (`11-26 15:39`); a sweep's run without the sweep's name (`rank8  (sweep, 11-26 15:39)`).
    A name too long is cut in the middle (names share prefixes and differ at the end), and
    the time left out unless another run has the same name; a sweep's run keeps the start of
    its sweep's name where another sweep has a run of the same name."""
    owns = [own_name(path, sweep_of(path)) for path in paths]
    alike = Counter(owns)
    owned_at = [(own, _clock(path)) for path, own in zip(paths, owns, strict=True)]
    at_once = Counter(owned_at)
    return [
        _run_label(path, sweep_of(path), room, alike[own] > 1, at_once[(own, at)] == 1)
        for path, (own, at) in zip(paths, owned_at, strict=True)
    ]


def _clock(path: Path) -> str:
    """The time of day a run started (`07:43`), "" when its directory does not say."""
    return runs.started_text(path)[-5:]


def _run_label(
    path: Path, sweep: str | None, room: int | None, repeated: bool, clock_apart: bool = False
) -> str:
    """`clock_apart`: the time of day alone tells the run from others of its name."""
    name, when = runs.given_name(path), runs.started_text(path)
    if sweep and name.startswith(f"{sweep}-"):
        own = own_name(path, sweep)
        # the list cuts what follows with "…": one cell, or a few more to show the sweep
        fits = None if room is None else room - (SWEEP_HINT_CELLS if repeated else 1)
        if fits is not None and cell_len(own) > fits:
            own = middle_cut(own, fits)
        return f"{own}  ({', '.join(filter(None, (sweep, when)))})"
    label = f"{name}  {when}".rstrip()
    if room is None or cell_len(label) <= room:
        return label
    if not repeated:
        return middle_cut(name, room)
    if clock_apart and room - len(when) - 2 < REPEATED_NAME_CELLS:
        when = _clock(path)  # the time of day alone: `11-27 07:43` left `…v1` of the name
    return f"{middle_cut(name, room - len(when) - 2)}  {when}"
