"""Training events: the only seam between the engine and its faces (CLI, TUI, reports).

A run writes one JSON object per line to `events.jsonl`; every object has `type` and `time`.
Readers parse lines back into the same dataclasses and can follow a live file. Imports no
mlx, torch or textual.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar


@dataclass
class Event:
    type: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict:
        return {"type": self.type, **dataclasses.asdict(self)}


@dataclass
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    run_dir: str
    model: str
    backend: str
    device: str
    train_records: int
    val_records: int
    total_steps: int
    steps_per_epoch: int
    trainable_params: int
    total_params: int
    estimated_peak_gb: float
    dataset: str = ""
    truncated_records: int = 0
    resumed_from_step: int = 0
    warnings: list[str] = field(default_factory=list)
    memory_budget_gb: float | None = None  # what training may use on this device, if known
    datasets: dict[str, str] = field(default_factory=dict)  # stored name -> sha256 of records
    sources: dict[str, str] = field(default_factory=dict)  # config field -> the file it named


@dataclass
class Step(Event):
    type: ClassVar[str] = "step"
    step: int
    epoch: float
    loss: float
    lr: float
    tokens: int  # effective (non-padding, labelled) tokens in this step
    tokens_per_sec: float
    peak_memory_gb: float
    grad_norm: float = 0.0
    padding_fraction: float = 0.0
    loss_ema: float | None = None  # smoothed loss (metrics.ema over every step); `loss` is raw


@dataclass
class Eval(Event):
    type: ClassVar[str] = "eval"
    step: int
    epoch: float
    val_loss: float
    perplexity: float
    best: bool = False


@dataclass
class EpochEnd(Event):
    type: ClassVar[str] = "epoch_end"
    epoch: int
    step: int
    train_loss: float


@dataclass
class Sample(Event):
    type: ClassVar[str] = "sample"
    step: int
    when: str  # before | after (training)
    prompt: str
    answer: str


@dataclass
class Checkpoint(Event):
    type: ClassVar[str] = "checkpoint"
    step: int
    path: str
    best: bool = False


@dataclass
class EarlyStop(Event):
    type: ClassVar[str] = "early_stop"
    step: int
    best_step: int
    best_val_loss: float
    patience: int


@dataclass
class Diagnosis(Event):
    """A problem diagnosis.py found in the run so far (each kind once, when first seen)."""

    type: ClassVar[str] = "diagnosis"
    step: int
    kind: str  # overfitting | oscillation | lr_too_high | plateau | slow_convergence | ...
    severity: str  # info | warning | critical
    message: str
    evidence: dict = field(default_factory=dict)  # steps and values that show it
    remedy: list[str] = field(default_factory=list)  # config changes that address it


@dataclass
class RunFinished(Event):
    type: ClassVar[str] = "run_finished"
    step: int
    best_val_loss: float | None
    best_step: int | None
    elapsed_sec: float
    stopped: bool = False  # stopped on request (Ctrl-C, stop file) rather than completed
    signal: str | None = None  # SIGINT or SIGTERM when a signal stopped it (None: STOP file)
    train_loss_last_epoch: float | None = None  # mean of the last (or the partial) epoch
    train_loss_ema: float | None = None  # smoothed loss at the last step


@dataclass
class MemoryFit(Event):
    """training.fit chose these settings for the memory budget (before the first step)."""

    type: ClassVar[str] = "memory_fit"
    budget_bytes: int
    estimated_bytes: int
    changes: dict = field(default_factory=dict)
    fits: bool = True
    reason: str = ""


@dataclass
class RunFailed(Event):
    type: ClassVar[str] = "run_failed"
    reason: str
    step: int = 0
    last_checkpoint: str | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        RunStarted,
        Step,
        Eval,
        EpochEnd,
        Sample,
        Checkpoint,
        EarlyStop,
        Diagnosis,
        RunFinished,
        MemoryFit,
        RunFailed,
    )
}


# Looked up once, not per line: a 100,000-step run is parsed line by line when a face opens it.
FIELD_NAMES = {
    cls: frozenset(f.name for f in dataclasses.fields(cls)) for cls in EVENT_TYPES.values()
}


def parse(line: str) -> Event | None:
    """Parse one JSONL line; None for blank, partial or unknown lines (a reader must not crash)."""
    try:
        data: dict[str, Any] = json.loads(line)
        cls = EVENT_TYPES[data.pop("type")]
        names = FIELD_NAMES[cls]
        return cls(**{k: v for k, v in data.items() if k in names})
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class EventWriter:
    """Appends events to a JSONL file, one flushed line each, and passes them to listeners."""

    def __init__(self, path: str | Path, listeners: list | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        if _ends_mid_line(self.path):  # a write a full disk cut short: the next event on its own
            self._file.write("\n")
        self.listeners = list(listeners or [])

    def emit(self, event: Event) -> Event:
        self._file.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
        # flush, not fsync: a killed process loses nothing the OS already holds, and an fsync
        # per training step would cost milliseconds in the hot loop.
        self._file.flush()
        for listener in self.listeners:
            listener(event)
        return event

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        except OSError:
            if exc[0] is None:
                raise
            # the lines still buffered met the error already on its way (a full disk): that
            # error, not this one, says what happened


def _ends_mid_line(path: Path) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def redone(step: int, resumed_from: int) -> bool:
    """Whether what an earlier session recorded at `step` (a step, an evaluation, a sample,
    an epoch's end, a diagnosis) is recorded again by a session resumed from step
    `resumed_from`: all past its checkpoint, and, from step 0, the start's too (the baseline
    evaluation, the samples before training). A face shows each once, as the resumed
    session recorded it."""
    return step > resumed_from or resumed_from == 0


def once(events: list[Event]) -> list[Event]:
    """`events` without what a later resume recorded again (see `redone`)."""
    kept: list[Event] = []
    for e in events:
        if isinstance(e, RunStarted):
            kept = [k for k in kept if not _recorded_again(k, e.resumed_from_step)]
        kept.append(e)
    return kept


def _recorded_again(e: Event, resumed_from: int) -> bool:
    return isinstance(e, (Step, Eval, Sample, EpochEnd, Diagnosis)) and redone(e.step, resumed_from)


def read_events(path: str | Path) -> list[Event]:
    """All complete events in a file (a missing file has none)."""
    p = Path(path)
    if not p.exists():
        return []
    # a line of other bytes (a disk error, a hand edit) is skipped as parse skips a partial one
    with open(p, encoding="utf-8", errors="replace") as f:
        return [e for e in map(parse, f) if e is not None]


def read_events_of(path: str | Path, *types: type[Event]) -> list[Event]:
    """The events of these types in a file, in order, parsing no other line: a line is read
    only when it begins as EventWriter begins theirs (`{"type": "diagnosis"`), found by a
    byte search, so a listing of long runs neither parses nor scans their step events line
    by line. A missing or empty file has none."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            lines = sorted(line for t in types for line in _lines_starting(data, t.type))
    except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
        return []
    found = (parse(line.decode("utf-8", "replace")) for _, line in lines)
    return [e for e in found if isinstance(e, types)]


def _lines_starting(data: mmap.mmap, event_type: str) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of each line of `data` that is an event of this type."""
    start = b'{"type": "%s"' % event_type.encode()
    at = data.find(start)
    while at != -1:
        end = data.find(b"\n", at)
        end = len(data) if end == -1 else end
        if at == 0 or data[at - 1] == ord("\n"):  # not the text inside another event
            yield at, data[at:end]
        at = data.find(start, end)


def follow(path: str | Path, poll: float = 0.2, stop=lambda: False) -> Iterator[Event]:
    """Yield events as they are appended, like `tail -f`; ends after a terminal event or `stop()`.

    A line is only parsed once it ends in a newline, so a half-written line is never lost.
    """
    p = Path(path)
    while not p.exists():
        if stop():
            return
        time.sleep(poll)
    with open(p, encoding="utf-8") as f:
        pending = ""
        while True:
            chunk = f.readline()
            if not chunk:
                if stop():
                    return
                time.sleep(poll)
                continue
            pending += chunk
            if not pending.endswith("\n"):
                continue
            event, pending = parse(pending), ""
            if event is None:
                continue
            yield event
            if isinstance(event, (RunFinished, RunFailed)):
                return
