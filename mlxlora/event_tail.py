"""Reading an events file cheaply: `EventTail` reads a live file incrementally (a studio polls
many runs), and `parse_bulk` folds long runs of step lines into `StepBlock` columns (100,000
`Step` objects take seconds to parse). Imports no mlx, torch or textual.
"""

from __future__ import annotations

import dataclasses
import re
from array import array
from dataclasses import dataclass
from pathlib import Path

from mlxlora.events import Event, Step, parse


@dataclass
class StepBlock:
    """Consecutive step events read in bulk as columns, for a face that folds a long run:
    100,000 `Step` objects take seconds to parse, these columns a fraction of that.

    `first` and `last` are the block's first and last steps as full events.
    """

    first: Step
    last: Step
    steps: array
    losses: array
    losses_ema: array
    peak_memory_gb: float
    tokens_per_sec: array

    @property
    def time(self) -> float:
        return self.first.time

    def __len__(self) -> int:
        return len(self.steps)


# A step line exactly as EventWriter writes it, every field a JSON number (a line written
# otherwise, say with a null loss_ema, is parsed by `parse`). A match's groups: the line, the
# columns a `StepBlock` holds, then any other line.
_BLOCK_COLUMNS = ("step", "loss", "loss_ema", "peak_memory_gb", "tokens_per_sec")
_CAPTURED = [f.name for f in dataclasses.fields(Step) if f.name in _BLOCK_COLUMNS]  # in order
_NUMBER = rb"-?[0-9][0-9.eE+-]*|NaN|-?Infinity"
_STEP_LINE = re.compile(
    rb'^(?:(\{"type": "step", '
    + b", ".join(
        b'"%s": (%s%s)' % (f.name.encode(), b"" if f.name in _BLOCK_COLUMNS else b"?:", _NUMBER)
        for f in dataclasses.fields(Step)
    )
    + rb"\})|(.*))$",
    re.MULTILINE,
)


def parse_bulk(lines: bytes, keep: int = 200) -> list[Event | StepBlock]:
    """Complete JSONL lines (no trailing newline) as events, in order; runs of step lines
    before the last `keep` events come as `StepBlock`s (a reader folds them, keeping the
    latest events whole, e.g. for a log). Unparseable lines are skipped, as by `parse`."""
    rows = _STEP_LINE.findall(lines) if lines else []
    latest, split = [], len(rows)  # the last `keep` events whole, unparseable lines aside
    while split and len(latest) < keep:
        split -= 1
        event = parse((rows[split][0] or rows[split][-1]).decode("utf-8", "replace"))
        if event is not None:
            latest.append(event)
    out: list = []
    block: list[tuple] = []
    for row in rows[:split]:
        if row[0]:
            block.append(row)
            continue
        if block:
            out.append(_step_block(block))
            block = []
        out.append(parse(row[-1].decode("utf-8", "replace")))
    if block:
        out.append(_step_block(block))
    return [e for e in out if e is not None] + latest[::-1]


def _step_block(rows: list[tuple]) -> StepBlock:
    column = dict(zip(_CAPTURED, list(zip(*rows, strict=True))[1:-1], strict=True))
    return StepBlock(
        first=parse(rows[0][0].decode()),
        last=parse(rows[-1][0].decode()),
        steps=array("d", map(float, column["step"])),
        losses=array("d", map(float, column["loss"])),
        losses_ema=array("d", map(float, column["loss_ema"])),
        peak_memory_gb=max(map(float, column["peak_memory_gb"])),
        tokens_per_sec=array("d", map(float, column["tokens_per_sec"])),
    )


class EventTail:
    """Reads a growing events file incrementally: each `read()` returns only the events
    appended since the last call, never re-reading the file (a TUI polls many runs cheaply).

    A half-written last line waits for its newline; a corrupt line is skipped; a file that was
    replaced or shrank is read again from the start.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0
        self._pending = b""
        self._inode: int | None = None

    @property
    def offset(self) -> int:
        """Bytes of the file read so far (a reader compares it with the size to catch up)."""
        return self._offset

    def read(self, max_bytes: int = 1 << 24) -> list[Event]:
        """New complete events, reading at most `max_bytes` this call (the rest next time)."""
        lines = self._complete_lines(max_bytes)
        events = (parse(line.decode("utf-8", "replace")) for line in lines.split(b"\n"))
        return [e for e in events if e is not None] if lines else []

    def read_bulk(self, max_bytes: int = 1 << 24, keep: int = 200) -> list[Event | StepBlock]:
        """Like `read`, with runs of steps as `StepBlock`s but the last `keep` lines whole
        (`parse_bulk`)."""
        return parse_bulk(self._complete_lines(max_bytes), keep)

    def _complete_lines(self, max_bytes: int) -> bytes:
        """The complete lines appended since the last call, without the last newline (at
        most `max_bytes` read); b"" when there are none."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return b""
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self._inode, self._offset, self._pending = stat.st_ino, 0, b""
        if stat.st_size == self._offset:
            return b""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read(max_bytes)
        self._offset += len(chunk)
        lines, newline, self._pending = (self._pending + chunk).rpartition(b"\n")
        return lines if newline else b""
