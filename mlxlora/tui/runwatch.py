"""Watching the workspace's runs and queue: what changed since the last look, read cheaply.

A `RunWatcher` belongs to one worker thread: each `poll()` lists the run directories and reads
each watched run's new events (at most `max_bytes` per run, so a 100,000-step run arrives in
slices while the screen stays live), whether a process holds it, its summary when it changed,
and the queue's jobs. The tab folds the news into a `RunBook` on its own thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from textual.message_pump import MessagePump
from textual.worker import get_current_worker

from mlxlora import queue, runs
from mlxlora.event_tail import EventTail, StepBlock
from mlxlora.events import Event
from mlxlora.runs import read_json
from mlxlora.runview import LOG_SIZE, RunView
from mlxlora.tui.messages import RunsPolled

SLICE_BYTES = 1 << 22  # about 13,000 step events per run per poll (40 ms to parse)
POLL_SEC = 0.5


@dataclass
class RunNews:
    """One watched run's news from one poll."""

    path: Path
    events: list[Event | StepBlock] = field(default_factory=list)
    locked: bool = False
    summary: dict | None = None  # None: unchanged since the last poll
    eval: dict | None = None  # eval.json, likewise


@dataclass
class Poll:
    present: list[Path]  # every run directory in the workspace
    news: dict[Path, RunNews]  # the watched ones
    jobs: list[queue.Job]
    behind: bool  # some run has more to read: poll again without waiting


class RunWatcher:
    def __init__(self, root: Path | None = None, max_bytes: int = SLICE_BYTES):
        self.root = root or runs.runs_root()
        self.max_bytes = max_bytes
        self._tails: dict[Path, EventTail] = {}
        self._mtimes: dict[Path, float] = {}  # summary.json and eval.json as last read

    def poll(self, only: set[Path] | None = None) -> Poll:
        """What changed; `only`: read these runs alone (None: every run)."""
        present = self._run_dirs()
        for gone in set(self._tails) - set(present):
            del self._tails[gone]
            for file in (runs.RunPaths(gone).summary, runs.RunPaths(gone).eval):
                self._mtimes.pop(file, None)
        news, behind = {}, False
        for path in present:
            if only is None or path in only:
                news[path], more = self._read(path)
                behind = behind or more
        return Poll(present=present, news=news, jobs=_jobs(), behind=behind)

    def _run_dirs(self) -> list[Path]:
        try:
            return [p for p in self.root.iterdir() if (p / "config.yaml").is_file()]
        except OSError:  # no runs yet, or the folder went away
            return []

    def _read(self, path: Path) -> tuple[RunNews, bool]:
        paths = runs.RunPaths(path)
        tail = self._tails.setdefault(path, EventTail(paths.events))
        news = RunNews(path, tail.read_bulk(self.max_bytes, LOG_SIZE), runs.is_locked(paths))
        news.summary, news.eval = self._changed(paths.summary), self._changed(paths.eval)
        return news, (_stat(paths.events, "st_size") or 0) > tail.offset

    def _changed(self, file: Path) -> dict | None:
        """A JSON file's content when it changed since the last read, else None."""
        mtime = _stat(file, "st_mtime")
        if mtime is None or self._mtimes.get(file) == mtime:
            return None
        self._mtimes[file] = mtime
        return read_json(file)


def _stat(path: Path, attribute: str) -> float | None:
    try:
        return getattr(path.stat(), attribute)
    except OSError:
        return None


def _jobs() -> list[queue.Job]:
    try:
        return queue.jobs()
    except OSError:  # a queue folder that is being created or removed right now
        return []


def watch(target: MessagePump, only: Callable[[], set[Path] | None] = lambda: None) -> None:
    """Poll until the calling thread worker is cancelled, posting `RunsPolled` to `target`;
    a run with more to read is read on without waiting."""
    worker = get_current_worker()
    watcher = RunWatcher()
    while not worker.is_cancelled:
        poll = watcher.poll(only())
        target.post_message(RunsPolled(poll))
        if not poll.behind:
            time.sleep(POLL_SEC)


class RunBook:
    """The runs a tab knows, folded from polls on the tab's thread."""

    def __init__(self) -> None:
        self.present: list[Path] = []
        self.views: dict[Path, RunView] = {}
        self.locked: dict[Path, bool] = {}
        self.jobs: list[queue.Job] = []

    def apply(self, poll: Poll) -> bool:
        """Fold a poll in; True when anything a screen shows changed."""
        changed = poll.present != self.present
        self.present = poll.present
        for gone in set(self.views) - set(poll.present):
            for book in (self.views, self.locked):
                book.pop(gone, None)
        for path, news in poll.news.items():
            view = self.views.setdefault(path, RunView(path))
            view.add(news.events)
            changed = changed or bool(news.events) or self.locked.get(path) != news.locked
            self.locked[path] = news.locked
            if news.summary is not None:
                view.summary, changed = news.summary, True
            if news.eval is not None:
                view.eval, changed = news.eval, True
        if [vars(j) for j in poll.jobs] != [vars(j) for j in self.jobs]:
            self.jobs, changed = poll.jobs, True
        return changed

    def status(self, path: Path) -> str:
        """The run's status; "queued" for one waiting in the queue to resume."""
        status = self.views[path].status(self.locked.get(path, False))
        queued = bool(queue.jobs_of(path, self.jobs, states=("queued",)))
        return "queued" if queued and status != "running" else status
