"""The Runs tab: every run and queued job with live status; the selected one in detail.

A worker thread tails every run's events (`RunWatcher`) and posts the news; this widget folds
it into one `RunView` per run and redraws what changed at most `DRAW_SEC` apart, however fast
events arrive, and only while the tab is in view. Stop, Resume, Delete, Evaluate, Export (to
Ollama) and Fuse (into a model directory) act on the selected row.
"""

from __future__ import annotations

from pathlib import Path

from rich.cells import cell_len
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable

from mlxlora import machine, queue, queue_runner, runcontrol, runlist, runs
from mlxlora.errors import MlxloraError
from mlxlora.events import RunFailed
from mlxlora.sweep import run_sweep
from mlxlora.tui.children import Child
from mlxlora.tui.messages import RunsPolled
from mlxlora.tui.runwatch import RunBook, watch
from mlxlora.tui.screens.eval_dialog import EvalChoice, EvalDialog
from mlxlora.tui.screens.export import ExportDialog
from mlxlora.tui.screens.fuse import FuseDialog
from mlxlora.tui.screens.run_detail import RunDetail
from mlxlora.tui.widgets.confirm import Confirm
from mlxlora.tui.widgets.text import end_cut, middle_cut, num, own_name, run_labels, sparkline

DRAW_SEC = 0.25
COLUMNS = ("name", "status", "step", "ema loss", "best val", "loss curve")
NAME_MIN_CELLS = 12  # a name is cut no shorter: past it the table scrolls sideways


class RunsTab(Vertical):
    """Runs and queued jobs in a table; the highlighted one's chart and numbers below."""

    DEFAULT_CSS = """
    RunsTab #runs-table { height: auto; max-height: 30%; min-height: 4; }
    """
    BINDINGS = [
        Binding("s", "stop_run", "Stop run"),
        Binding("r", "resume_run", "Resume run"),
        Binding("d", "delete_run", "Delete run"),
        Binding("e", "evaluate_run", "Evaluate"),
        Binding("x", "export_run", "Export to Ollama"),
        Binding("f", "fuse_run", "Fuse model"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.book = RunBook()
        # the first poll draws, whatever it holds (none: "no runs yet"); nothing before it
        self._dirty = True  # news arrived since the last redraw
        self._catching_up = True
        self._rows: dict[str, tuple] = {}  # row key -> cells as drawn
        self._sweeps: dict[Path, str | None] = {}  # run -> its sweep, read once
        self._following: str | None = None  # a job id to select, then its run (`follow`)
        self._width = 0  # the table's width its names were cut for

    def compose(self) -> ComposeResult:
        yield DataTable(id="runs-table", cursor_type="row")
        yield RunDetail(id="run-detail")

    def on_mount(self) -> None:
        _add_columns(self.query_one(DataTable))
        self.query_one(RunDetail).machine_bytes = machine.total_memory()
        self.watch_runs()
        self.set_interval(DRAW_SEC, self.redraw)

    def on_show(self) -> None:
        self.query_one(DataTable).focus()  # the tab's keys act on the table's selected row
        # what arrived while another tab was in view, once the tab is on screen: the key that
        # showed it is answered first (a chart drawing is 50 ms)
        self.call_after_refresh(self.redraw)

    @work(thread=True, exit_on_error=False, group="runs-watch")
    def watch_runs(self) -> None:
        watch(self)

    def on_runs_polled(self, message: RunsPolled) -> None:
        self._dirty = self.book.apply(message.poll) or self._dirty
        caught_up = self._catching_up and not message.poll.behind
        self._catching_up = message.poll.behind  # a big run is still arriving: draw it once
        if caught_up:
            self.redraw()  # now, not at the next tick: the runs just opened

    # --- drawing --------------------------------------------------------------------------

    def rows(self) -> dict[str, tuple]:
        """Cells of every row by key: jobs without a run first, then runs newest first, each
        named in the room the other columns leave (they all stay on screen)."""
        jobs, rest = {}, {}  # row key -> a job's name; every row's cells after its name
        latest = {j.run_dir: j for j in self.book.jobs if j.run_dir}  # jobs come oldest first
        for job in self.book.jobs:
            status = _job_status(job, latest.get(job.run_dir) is job and not self._wrote(job))
            if status:
                # a resume's job is named by its run's directory: shown cut in the middle,
                # that read `メモ…61127-074135`; by the run's name it reads as the run's row
                own = runs.given_name(Path(job.run_dir)) if job.run_dir else job.name
                jobs[f"job:{job.id}"] = own
                rest[f"job:{job.id}"] = (status, "", "", "", "")
        views = self._grouped()
        runs_rest = {str(view.path): self._cells(view) for view in views}
        room = self._name_room([*rest.values(), *runs_rest.values()])
        if room < self._widest_name(jobs, views):
            # a diagnosis's kind (`⚠ slow_convergence`) left the names a dozen cells at 80
            # columns (`医療…デル_v1`) and pushed the curve off screen: the name matters more,
            # and the selected run's panel names its findings. Short names too, by their own
            # width, not NAME_MIN_CELLS: `⚠ slow_convergence +1` left `実験1` less at 80
            # columns, and 82-88 columns, where it fits whole, lost the kind for nothing
            runs_rest = {str(view.path): self._cells(view, kind=False) for view in views}
            room = self._name_room([*rest.values(), *runs_rest.values()])
        room = max(room, NAME_MIN_CELLS)
        rest |= runs_rest
        names = {key: middle_cut(name, room) for key, name in jobs.items()}
        labels = run_labels([view.path for view in views], self._sweep_of, room)
        # a sweep's run's label runs on past the room (its sweep, its time): cut as a list would
        for view, label in zip(views, labels, strict=True):
            names[str(view.path)] = end_cut(label, room)
        return {key: (name, *rest[key]) for key, name in names.items()}

    def _wrote(self, job: queue.Job) -> bool:
        """A failed resume whose session in its run ended failed (a `run_failed` since its
        child started): the run's row shows that ending, and a row of the job's own beside it
        showed one run twice (`resume failed` and `failed`). A child killed mid-session wrote
        no ending: its row stays, the only place its error shows."""
        if job.kind != "resume" or job.state != "failed":
            return False
        mine = Path(job.run_dir).resolve()
        view = next((v for p, v in self.book.views.items() if p.resolve() == mine), None)
        ending = view.ending if view else None
        return isinstance(ending, RunFailed) and ending.time >= (job.pid_start or job.created)

    def _cells(self, view, kind: bool = True) -> tuple:
        """A run's cells after its name; `kind`: the diagnosis flag names its worst kind."""
        best = view.best_eval
        flag = (f" ⚠ {view.flag}" if kind else " ⚠") if view.flag else ""
        return (
            self.book.status(view.path) + flag,
            f"{view.step}/{view.total_steps or '-'}",
            num(view.smooth.last()),  # as `train` shows it live
            num(best.val_loss if best else None),
            sparkline(view.smooth.y, 12),
        )

    def _widest_name(self, jobs: dict[str, str], views: list) -> int:
        """The cells the widest name takes whole (a sweep's run's without its sweep's)."""
        names = [own_name(view.path, self._sweep_of(view.path)) for view in views]
        return max(map(cell_len, [*jobs.values(), *names]), default=0)

    def _name_room(self, rest: list[tuple]) -> int:
        """The cells a name has: the table's width less the other columns at their widest
        (each padded both sides); under NAME_MIN_CELLS where they leave less."""
        table = self.query_one(DataTable)
        padding = 2 * table.cell_padding
        columns = zip(COLUMNS[1:], *rest, strict=True)  # each column's title and cells
        others = sum(max(map(cell_len, column)) + padding for column in columns)
        return table.scrollable_content_region.width - padding - others

    def _grouped(self) -> list:
        """Runs newest first, a sweep's runs together where its newest run is."""
        by_age = sorted(self.book.views.values(), key=lambda v: v.first_time or 0, reverse=True)
        groups: dict[str, list] = {}
        for view in by_age:
            sweep = self._sweep_of(view.path)
            groups.setdefault(sweep or str(view.path), []).append(view)
        return [view for group in groups.values() for view in group]

    def _sweep_of(self, path: Path) -> str | None:
        if path not in self._sweeps:  # a run's config never changes: read it once
            self._sweeps[path] = run_sweep(path)
        return self._sweeps[path]

    def redraw(self) -> None:
        """Draw what changed; nothing while another tab is in view (news is still folded)."""
        # first: the Train tab's Start mounts this tab and follows its job before it has a table
        if self._catching_up or not self.is_on_screen:
            return
        # the names are cut to the table's width: a resize, or its scrollbar showing, redraws
        width = self.query_one(DataTable).scrollable_content_region.width
        if not (self._dirty or width != self._width):
            return
        self._width = width
        self._draw_table()
        self._draw_detail()
        self._dirty = False

    def _draw_table(self) -> None:
        table = self.query_one(DataTable)
        rows = self.rows()
        if list(rows) == list(self._rows):
            for key, cells in rows.items():
                for column, old, new in zip(COLUMNS, self._rows[key], cells, strict=True):
                    if old != new:
                        table.update_cell(key, column, Text(new), update_width=True)
        else:
            selected, at = self.selected_key(), table.cursor_row
            # the columns too: clear() keeps each column as wide as its widest cell ever, so
            # a name cut shorter since (beside a wider status) pushed the curve off screen
            table.clear(columns=True)
            _add_columns(table)
            for key, cells in rows.items():
                table.add_row(*map(Text, cells), key=key)
            if selected in rows:
                table.move_cursor(row=list(rows).index(selected))
            elif rows:  # its row went (deleted): the row now in its place, not the first
                table.move_cursor(row=min(at, len(rows) - 1))
        self._rows = rows
        self._follow_job(table, rows)

    def follow(self, job_id: str) -> None:
        """Select a job just queued (the Train tab's Start), then the run it becomes."""
        self._following = job_id
        self._dirty = True
        self.redraw()

    def _follow_job(self, table: DataTable, rows: dict) -> None:
        job = next((j for j in self.book.jobs if j.id == self._following), None)
        if job is None:
            return
        run = str(job.run_dir) if job.run_dir else None
        key = run if run in rows else f"job:{job.id}"
        if key in rows and self.selected_key() != key:
            table.move_cursor(row=list(rows).index(key))
        if key == run:
            self._following = None  # arrived: the user's cursor from here on

    def _draw_detail(self) -> None:
        key, book = self.selected_key(), self.book
        detail = self.query_one(RunDetail)
        if job := self._selected_job():
            stalled = queue_runner.stalled() if job.state == "queued" else None
            detail.show_job(job, _job_status(job, True) or job.state, stalled)
        elif key and Path(key) in book.views:
            path = Path(key)
            detail.show(book.views[path], book.status(path))
        elif key is None:
            detail.show_nothing()

    def selected_key(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self.call_after_refresh(self._draw_detail)  # the cursor moves on screen first

    # --- actions --------------------------------------------------------------------------

    def _selected_run(self) -> Path | None:
        key = self.selected_key()
        return Path(key) if key and Path(key) in self.book.views else None

    def _selected_job(self) -> queue.Job | None:
        """The job whose own row is selected (a queued one, or one that failed to start)."""
        key = self.selected_key()
        return next((j for j in self.book.jobs if f"job:{j.id}" == key), None)

    def action_stop_run(self) -> None:
        """Stop the selected run or job (`runcontrol`, as `mlxlora queue stop`): a running
        one checkpoints and stops after its current step; a queued one, a resume queued by
        mistake included, leaves the queue."""
        job = self._selected_job()
        path = self._selected_run()
        try:
            if job is not None:
                done = runcontrol.stop(job)
            elif path is not None:
                done = runcontrol.stop_run(path)
            else:
                return
        except MlxloraError as exc:  # it names the run or job and its state
            self.notify(str(exc), severity="warning")
            return
        self.notify(done[:1].upper() + done[1:])

    def action_resume_run(self) -> None:
        """Queue the selected stopped, interrupted or failed run to continue."""
        job = self._selected_job()
        if job is not None and not job.run_dir:  # failed before its run began
            self.notify(
                "This job wrote no run to resume: fix what its error says, then start it "
                "again (d forgets the job)",
                severity="warning",
            )
            return
        path = Path(job.run_dir) if job is not None else self._selected_run()
        if path is None:
            return
        try:  # refused for a run running, queued, finished or without a checkpoint
            job = runcontrol.resume(path)
        except MlxloraError as exc:
            self.notify(str(exc), severity="error")
            return
        queue_runner.ensure_runner()
        self.notify(f"Queued: resume {path.name}" + (", fitted to memory" if job.fit else ""))

    def action_export_run(self) -> None:
        """Open the Export dialog for the selected run (it runs `mlxlora export` as a child)."""
        if path := self._trained_run("exports"):
            self.app.push_screen(ExportDialog(path))

    def action_fuse_run(self) -> None:
        """Open the Fuse dialog for the selected run (it runs `mlxlora fuse` as a child)."""
        if path := self._trained_run("fuses"):
            self.app.push_screen(FuseDialog(path))

    def _trained_run(self, verb: str) -> Path | None:
        """The selected run when it has a trained adapter to use; else None, said why."""
        path = self._selected_run()
        status = self.book.status(path) if path else None
        if path is None or status in ("running", "failed"):
            self.notify(f"Only a finished or stopped run {verb}", severity="warning")
            return None
        return path

    def action_evaluate_run(self) -> None:
        """Ask what to evaluate on (EvalDialog), then `mlxlora eval` as a child process;
        eval.json shows when it is written."""
        path = self._selected_run()
        if path is None or self.book.status(path) not in ("finished", "early-stopped", "stopped"):
            self.notify("Evaluate a run that has trained (finished or stopped)", severity="warning")
            return
        self.app.push_screen(
            EvalDialog(path), lambda choice: choice and self.evaluate(path, choice)
        )

    @work(group="runs-eval", exit_on_error=False)
    async def evaluate(self, path: Path, choice: EvalChoice) -> None:
        self.notify(f"Evaluating {path.name} {choice.describe()}…")
        child = await Child.start(*choice.arguments(path))
        try:
            result = await child.json()  # read whole: a full stdout pipe would block the child
        except ValueError:
            result = None
        finally:
            await child.stop()  # also when the tab goes away first
        if result is None:
            self.notify(f"{path.name}: {child.error_line()}", severity="error")
            return
        base = (result.get("base") or {}).get("val_loss")
        versus = f" (base {num(base)})" if choice.base else ""
        on = result["dataset"]
        self.notify(f"{path.name} on {on}: val loss {num(result['val_loss'])}{versus}; see eval")

    def action_delete_run(self) -> None:
        """Delete the selected run's directory (asks first), or drop a queued job."""
        key = self.selected_key()
        if key is None:
            return
        if key.startswith("job:"):
            self._delete_job(key.removeprefix("job:"))
            return
        path = self._selected_run()
        if path is None:
            return
        if self.book.status(path) == "running":
            self.notify("A running run is not deleted; stop it first", severity="warning")
            return
        try:  # a queued resume refuses it: say so before asking
            runlist.check_deletable(runs.RunPaths(path))
        except MlxloraError as exc:
            self.notify(str(exc), severity="warning")
            return
        question = f"Delete run {path.name} with its adapters and checkpoints?"
        self.app.push_screen(Confirm(question), lambda yes: yes and self._delete_run(path))

    def _delete_run(self, path: Path) -> None:
        try:  # as `mlxlora runs rm`: refused if it started or was queued since the question
            runlist.delete_run(path)
        except MlxloraError as exc:  # it names the run
            self.notify(str(exc), severity="error")
            return
        except OSError as exc:
            self.notify(f"{path.name}: {exc}", severity="error")
            return
        self.notify(f"Deleted {path.name}")

    def _delete_job(self, job_id: str) -> None:
        job = next((j for j in self.book.jobs if j.id == job_id), None)
        try:
            if job is not None and job.state in queue.ENDED:  # a failed job's row: forget it
                queue.forget(job)
            else:
                job = queue.remove(job_id)
        except queue.NotQueued as exc:  # it started, or ran, since the row was drawn
            todo = "press s to stop it" if exc.job.state == "running" else "d again forgets it"
            self.notify(f"Job {exc.job.name} is {exc.job.state}; {todo}", severity="warning")
            return
        except MlxloraError as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(f"Removed {job.state} job {job.name}")


def _add_columns(table: DataTable) -> None:
    for column in COLUMNS:
        table.add_column(column, key=column)


def _job_status(job: queue.Job, alone: bool) -> str | None:
    """How a job shows as a row of its own; None for a job its run's row shows. A resume
    that failed before the run started again (its dataset removed, say) wrote nothing in
    the run: its row says so while it is the run's latest job and wrote nothing (`alone`).
    One cut off by a killed runner (no exit code) ended as its run did, which the run's
    row shows."""
    if job.run_dir:
        failed = job.state == "failed" and job.exit_code not in (None, 0) and alone
        return "resume failed" if failed and job.kind == "resume" else None
    if job.state == "running":
        return "starting"
    return None if job.state in ("done", "stopped") else job.state
