"""The Compare tab: pick runs (or a whole sweep at once); their numbers and differing config
keys side by side, and their loss curves overlaid, one colour per run. Keys: `p` names the best
run and why (`compare --pick`), `h` writes the HTML report (`compare --report`), `m` merges the
picked runs' adapters (`merge`, in a dialog).

Only the picked runs' events are read (a `RunWatcher` restricted to them), so a workspace of
many long runs costs nothing until they are compared. The pick and the report only read run
directories, through the same core as `mlxlora compare`: they run in a thread worker.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from rich.cells import cell_len
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, SelectionList, Static

from mlxlora import experiments, report, runs
from mlxlora.errors import MlxloraError
from mlxlora.experiments import (
    metric_text,
    run_metrics,
    setting_differences,
    setting_text,
    shown_metrics,
)
from mlxlora.runview import read_config
from mlxlora.sweep import run_sweep
from mlxlora.tui.messages import RunsPolled
from mlxlora.tui.runwatch import RunBook, watch
from mlxlora.tui.screens.merge import MergeDialog
from mlxlora.tui.widgets.loss_chart import PALETTE, LossChart, Series
from mlxlora.tui.widgets.text import middle_cut, run_labels

DRAW_SEC = 0.5
SWEEP = "sweep:"  # the value of a sweep's entry in the pick list
CHECKBOX_CELLS = 4  # "▐X▌ " before each run in the pick list


def _newest_first(paths: list[Path]) -> list[Path]:
    """By the time stamp in the directory name, then the name (no events need reading)."""
    return sorted(paths, key=lambda p: (p.name[len(runs.given_name(p)) :], p.name), reverse=True)


class CompareTab(Vertical):
    """Runs to pick beside their curves; below, a row per picked run: the config keys that
    differ, then the numbers."""

    DEFAULT_CSS = """
    CompareTab #compare-top { height: 1fr; }
    CompareTab #compare-pick { width: 30%; min-width: 30; max-width: 50; }
    CompareTab LossChart { width: 1fr; }
    CompareTab #compare-table { height: auto; max-height: 45%; }
    CompareTab #compare-verdict {
        height: auto; max-height: 50%; overflow-y: auto; background: $boost;
    }
    """
    BINDINGS = [
        Binding("p", "pick_best", "Pick the best"),
        Binding("h", "write_report", "HTML report"),
        Binding("m", "merge_runs", "Merge adapters"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.book = RunBook()
        self.picked: list[Path] = []
        self._listed: list[Path] = []
        self._room: int | None = None  # the cells a label had when the list was drawn
        self._dirty = False
        self._sweeps: dict[Path, str | None] = {}  # run -> its sweep, read once
        self._sweeps_picked: set[str] = set()

    def compose(self) -> ComposeResult:
        with Horizontal(id="compare-top"):
            yield SelectionList[str](id="compare-pick")
            yield LossChart("train loss (smoothed) and val loss (o)", id="compare-chart")
        yield DataTable(id="compare-table", cursor_type="row")
        yield Static("", id="compare-verdict", markup=False)

    def on_mount(self) -> None:
        self._draw_table([])  # the hint to pick runs
        self.query_one("#compare-verdict").display = False
        self.watch_runs()
        self.set_interval(DRAW_SEC, self.redraw)

    def on_resize(self) -> None:
        self._dirty = True  # the labels are cut to the list's width

    def on_show(self) -> None:
        self.query_one(SelectionList).focus()  # space picks a run straight away
        self.call_after_refresh(self.redraw)  # what arrived while another tab was in view

    @work(thread=True, exit_on_error=False, group="compare-watch")
    def watch_runs(self) -> None:
        watch(self, only=lambda: set(self.picked))

    def on_runs_polled(self, message: RunsPolled) -> None:
        self._dirty = self.book.apply(message.poll) or self._dirty

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        pick = event.selection_list
        sweeps = {v.removeprefix(SWEEP) for v in pick.selected if v.startswith(SWEEP)}
        for sweep in sweeps ^ self._sweeps_picked:  # a sweep picked or dropped: all its runs
            change = pick.select if sweep in sweeps else pick.deselect
            for path in self._members(sweep):
                change(str(path))
        self._sweeps_picked = sweeps
        self.picked = [Path(v) for v in pick.selected if not v.startswith(SWEEP)]
        self.query_one("#compare-verdict").display = False  # it was about other runs
        self._dirty = True

    def _sweep_of(self, path: Path) -> str | None:
        if path not in self._sweeps:  # a run's config never changes: read it once
            self._sweeps[path] = run_sweep(path)
        return self._sweeps[path]

    def _members(self, sweep: str) -> list[Path]:
        return [p for p in self._listed if self._sweep_of(p) == sweep]

    def redraw(self) -> None:
        """Draw what changed; nothing while another tab is in view."""
        # the list's room also changes when its scrollbar appears: the labels are cut again
        if not (self._dirty or self._list_room() != self._room) or not self.is_on_screen:
            return
        self._dirty = False
        self._draw_list()
        picked = [p for p in self.picked if p in self.book.views]
        self._draw_table(picked)
        self._draw_chart(picked)

    def _draw_list(self) -> None:
        present = _newest_first(self.book.present)
        pick = self.query_one(SelectionList)
        room = self._list_room()
        if (present, room) == (self._listed, self._room):
            return
        self._room = room
        highlighted = pick.highlighted or 0  # the first space picks a run, the cursor stays put
        pick.clear_options()
        self._listed = present
        sweeps = dict.fromkeys(s for s in map(self._sweep_of, present) if s)  # newest first
        pick.add_options(
            (self._sweep_label(s, room), SWEEP + s, s in self._sweeps_picked) for s in sweeps
        )
        labels = run_labels(present, self._sweep_of, room)
        pick.add_options(
            (label, str(p), p in self.picked) for label, p in zip(labels, present, strict=True)
        )
        if pick.option_count:
            pick.highlighted = min(highlighted, pick.option_count - 1)
        self.picked = [p for p in self.picked if p in present]

    def _sweep_label(self, sweep: str, room: int | None) -> str:
        """A sweep's entry, `▸ 掃引 (4 runs)`; where that does not fit, its name cut in the
        middle to the room: sweeps named after their first config share its prefix
        (医療専門知識モデル_sweep, 医療専門知識モデル_v1-sweep)."""
        label = f"▸ {sweep} ({len(self._members(sweep))} runs)"
        if room is None or cell_len(label) <= room:
            return label
        return f"▸ {middle_cut(sweep, room - 2)}"

    def _list_room(self) -> int | None:
        """The cells a label has in the pick list (None: not laid out yet)."""
        width = self.query_one(SelectionList).scrollable_content_region.width
        return width - CHECKBOX_CELLS if width else None

    def _draw_table(self, picked: list[Path]) -> None:
        table = self.query_one(DataTable)
        table.clear(columns=True)
        if len(picked) < 2:
            table.add_column("pick two or more runs to compare them")
            return
        configs = [read_config(runs.RunPaths(p).config) for p in picked]
        differing = setting_differences(configs)
        rows = [run_metrics(self.book.views[path]) for path in picked]
        shown = shown_metrics(rows)  # score columns only once a run has eval.json
        table.add_column("run")
        for _, title, _ in shown:  # the numbers first: a differing list (stages) is wide
            table.add_column(title)
        for key in _short_names(list(differing), taken={title for _, title, _ in shown}):
            table.add_column(key)
        names = _names(picked)
        for i, (path, metrics) in enumerate(zip(picked, rows, strict=True)):
            cells = [Text(names[i], style=PALETTE[i % len(PALETTE)])]
            cells += [Text(metric_text(metrics.get(key), spec)) for key, _, spec in shown]
            cells += [Text(setting_text(values[i])) for values in differing.values()]
            table.add_row(*cells, key=str(path))

    def _draw_chart(self, picked: list[Path]) -> None:
        series = []
        for i, (path, name) in enumerate(zip(picked, _names(picked), strict=True)):
            view, color = self.book.views[path], PALETTE[i % len(PALETTE)]
            series.append(Series(name, view.smooth.x, view.smooth.y, color))
            series.append(Series("", view.val.x, view.val.y, color, points=True))
        self.query_one(LossChart).plot(series)

    # --- pick, report, merge ---------------------------------------------------------------

    def _two_or_more(self, what: str) -> list[Path] | None:
        if len(self.picked) < 2:
            self.notify(f"Pick two or more runs (space) to {what}", severity="warning")
            return None
        return list(self.picked)

    def action_pick_best(self) -> None:
        """`compare --pick`: the run that best trades quality against cost, and why."""
        if paths := self._two_or_more("pick the best"):
            self._compare(paths, None)

    def action_write_report(self) -> None:
        """`compare --pick --report FILE`: the HTML page, under the workspace's reports/."""
        if paths := self._two_or_more("write a report"):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self._compare(paths, runs.home() / "reports" / f"compare-{stamp}.html")

    @work(thread=True, exclusive=True, group="compare-pick", exit_on_error=False)
    def _compare(self, paths: list[Path], report_path: Path | None) -> None:
        """Reads every picked run's events whole: off the UI thread. A thread runs on when a
        newer one cancels it, and the runs picked may change meanwhile: its verdict is shown
        only for the runs picked now."""
        try:
            comparison = experiments.compare(paths)
            chosen = experiments.pick(comparison)
            if report_path is not None:
                report.write(report_path, comparison, chosen)
        except (MlxloraError, OSError) as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error")
            return
        self.app.call_from_thread(self._show_verdict, paths, chosen.reason, report_path)

    def _show_verdict(self, paths: list[Path], reason: str, report_path: Path | None) -> None:
        if set(paths) == set(self.picked):
            verdict = self.query_one("#compare-verdict", Static)
            verdict.update(Text.assemble(("pick ", "bold green"), reason))
            verdict.display = True
        if report_path is not None:  # written all the same
            self.notify(f"Report written: {report_path}", title="compare --report", timeout=10)

    def action_merge_runs(self) -> None:
        """The merge dialog for the picked runs' adapters (`mlxlora merge` as a child)."""
        if paths := self._two_or_more("merge their adapters"):
            self.app.push_screen(MergeDialog(paths))


def _names(paths: list[Path]) -> list[str]:
    """Each run's name, and when it started where runs share the name (every job the Train
    form starts is named "run" until renamed): the table and the legend said "run" twice."""
    names = [runs.given_name(p) for p in paths]
    alike = Counter(names)
    return [
        f"{name}  {runs.started_text(path)}".rstrip() if alike[name] > 1 else name
        for name, path in zip(names, paths, strict=True)
    ]


def _short_names(keys: list[str], taken: set[str]) -> list[str]:
    """Column titles: a key's last part (`rank`) where no other key ends the same and no
    metric column has it as its title (training.epochs beside the epochs run)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [
        part if last.count(part) == 1 and part not in taken else key
        for key, part in zip(keys, last, strict=True)
    ]
