"""The System tab: what the tutorial read from `docker stats` and `free -h`.

Memory (every 2 s, `mlxlora.machine.memory_usage`) with the peak of the job training now (its
events tailed); the workspace's disk use (`du`-like, bounded, every 30 s) and free space; the
device, backend, BLAS and versions from one `mlxlora doctor --json` child (the app never
imports mlx).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Static

from mlxlora import machine
from mlxlora.event_tail import EventTail
from mlxlora.events import RunStarted, Step
from mlxlora.memory import fmt_bytes
from mlxlora.runs import RunPaths, home, running_runs
from mlxlora.tui.children import Child

MEMORY_SECONDS = 2.0
DISK_SECONDS = 30.0


def size(n: float | None) -> str:
    return fmt_bytes(n) if n is not None else "unknown"


async def doctor_report() -> dict:
    """`mlxlora doctor --json` from a child process (it imports mlx; the app must not)."""
    child = await Child.start("doctor", "--json")
    try:
        report = await child.json()
    except ValueError:
        report = None
    finally:
        await child.stop()  # the app closing cancels us: nothing is left running
    if child.process.returncode != 0 or not isinstance(report, dict):
        raise RuntimeError(child.error_line())
    return report


@dataclass
class JobPeak:
    """The memory of a job training now, from its events."""

    name: str
    step: int = 0
    peak_gb: float | None = None  # the engine's GB: 1e9 bytes
    estimated_gb: float | None = None

    def describe(self) -> str:
        """Its peak so far, the step it was read at and the engine's estimate."""
        if self.peak_gb is None:
            return "starting"
        text = f"{size(self.peak_gb * 1e9)} at step {self.step}"
        return text + (f", estimated {size(self.estimated_gb * 1e9)}" if self.estimated_gb else "")


class JobWatch:
    """Peaks of the running jobs, each events file tailed (only what was appended is read)."""

    def __init__(self):
        self._tails: dict[Path, tuple[EventTail, JobPeak]] = {}
        self._lock = threading.Lock()  # a refresh now and the timer's may overlap

    def peaks(self) -> list[JobPeak]:
        with self._lock:
            running = running_runs()
            self._tails = {p: self._tails.get(p) or self._watch(p) for p in running}
            for tail, peak in self._tails.values():
                for event in tail.read():
                    if isinstance(event, RunStarted):
                        peak.estimated_gb = event.estimated_peak_gb
                    elif isinstance(event, Step):
                        peak.step, peak.peak_gb = event.step, event.peak_memory_gb
            return [peak for _, peak in self._tails.values()]

    @staticmethod
    def _watch(path: Path) -> tuple[EventTail, JobPeak]:
        return EventTail(RunPaths(path).events), JobPeak(path.name)


class Facts(Static):
    """A titled box of (label, value) rows."""

    DEFAULT_CSS = """
    Facts {
        border: round $primary;
        padding: 0 1;
        width: 1fr;
        height: auto;
    }
    """

    def __init__(self, title: str, **kwargs):
        super().__init__(**kwargs)
        self.border_title = title
        self.rows: dict[str, str] = {}

    def show(self, rows: list[tuple[str, str]]) -> None:
        self.rows = dict(rows)
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for label, value in rows:
            table.add_row(label, Text(value, overflow="fold"))  # long paths fold, not cut
        self.update(table)


class SystemTab(Vertical):
    """Memory and the running job's peak; the workspace's disk; the machine as doctor sees it."""

    BINDINGS = [Binding("ctrl+r", "refresh_all", "Refresh now")]

    class Sampled(Message):
        """New rows for one box (`target` is its id), read from `read_at` (monotonic) on."""

        def __init__(self, target: str, rows: list[tuple[str, str]], read_at: float):
            super().__init__()
            self.target, self.rows, self.read_at = target, rows, read_at

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.jobs = JobWatch()
        self.doctor: dict | None = None
        self.timers: list[Timer] = []
        self.shown_read_at: dict[str, float] = {}  # box id -> when its rows were read

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="sys-scroll"):  # at 80x24 the versions are a scroll away
            yield Facts("Memory", id="sys-memory")
            yield Facts("Workspace", id="sys-disk")
            yield Facts("Machine (mlxlora doctor)", id="sys-machine")

    def on_show(self) -> None:
        self.query_one("#sys-scroll").focus()  # so the tab's bindings answer
        if not self.timers:  # first shown: nothing is read for a tab never opened
            self.query_one("#sys-machine", Facts).show([("doctor", "asking…")])
            self._ask_doctor()
            self.timers = [
                self.set_interval(MEMORY_SECONDS, self._sample_memory),
                self.set_interval(DISK_SECONDS, self._sample_disk),
            ]
        for timer in self.timers:
            timer.resume()
        self.action_refresh_all()

    def on_hide(self) -> None:
        for timer in self.timers:
            timer.pause()  # a hidden tab costs nothing

    def action_refresh_all(self) -> None:
        self._sample_memory()
        self._sample_disk()

    @work(exclusive=True, group="sys-doctor", exit_on_error=False)
    async def _ask_doctor(self) -> None:
        from mlxlora.commands.doctor import machine_rows

        try:
            self.doctor = await self.app.doctor()
            rows = machine_rows(self.doctor)
        except (OSError, RuntimeError) as exc:
            self.doctor, rows = {}, [("doctor", f"failed: {exc}")]
        self.post_message(self.Sampled("sys-machine", rows, time.monotonic()))
        self._sample_memory()  # the rows that come from doctor

    @work(thread=True, exclusive=True, group="sys-memory", exit_on_error=False)
    def _sample_memory(self) -> None:
        """A thread runs on when a newer sample cancels it (a slow `vm_stat`, the timer's
        next tick): its figures, older, must not land after the newer ones."""
        read_at = time.monotonic()
        self.post_message(self.Sampled("sys-memory", self.memory_rows(), read_at))

    def memory_rows(self) -> list[tuple[str, str]]:
        usage = machine.memory_usage()
        if usage is None:
            rows = [("memory", "unknown on this system")]
        else:
            share = f" ({usage.used / usage.total:.0%})" if usage.total else ""
            rows = [
                ("total", size(usage.total)),
                ("used", size(usage.used) + share),
                ("available", size(usage.available)),
            ]
        rows += self._budget_rows()
        jobs = self.jobs.peaks()
        if not jobs:
            return [*rows, ("running job", "none")]
        for i, job in enumerate(jobs, 1):
            n = "" if len(jobs) == 1 else f" {i}"
            rows += [(f"running job{n}", job.name), (f"its peak{n}", job.describe())]
        return rows

    def _budget_rows(self) -> list[tuple[str, str]]:
        if not self.doctor:
            return [("GPU may use", "asking doctor…" if self.doctor is None else "unknown")]
        wired = self.doctor.get("device_budget_bytes")
        return [
            ("GPU may use", size(wired) if wired else "- (no GPU in use)"),
            ("training budget", size(self.doctor.get("training_budget_bytes"))),
        ]

    @work(thread=True, exclusive=True, group="sys-disk", exit_on_error=False)
    def _sample_disk(self) -> None:
        from mlxlora.commands.doctor import workspace_problem

        # a walk of the workspace: one started before may end after (see _sample_memory)
        read_at = time.monotonic()
        root = home()
        used = machine.disk_use(root)
        problem = workspace_problem(root)  # a file there: every command that writes stops
        self.post_message(
            self.Sampled(
                "sys-disk",
                [
                    ("path", str(root) + (f" ({problem})" if problem else "")),
                    ("disk use", size(used.bytes) + ("" if used.complete else "+ (counting cut)")),
                    ("free", size(machine.disk_free(root))),
                ],
                read_at,
            )
        )

    @on(Sampled)
    def _show(self, message: Sampled) -> None:
        if message.read_at < self.shown_read_at.get(message.target, 0.0):
            return  # read before the rows shown
        self.shown_read_at[message.target] = message.read_at
        self.query_one(f"#{message.target}", Facts).show(message.rows)
