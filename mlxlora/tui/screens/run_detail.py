"""The Runs tab's lower half: one run's loss chart, numbers, progress, failure, samples, log."""

from __future__ import annotations

from rich.cells import cell_len
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.widgets import Label, Log, ProgressBar, Static

from mlxlora.events import (
    Checkpoint,
    Diagnosis,
    EarlyStop,
    EpochEnd,
    Eval,
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    Sample,
    Step,
)
from mlxlora.fmt import NONE, answer
from mlxlora.memory import fmt_bytes
from mlxlora.queue import ENDED, Job, short_id
from mlxlora.runview import RunView
from mlxlora.scoring import score_rows
from mlxlora.tui.widgets.loss_chart import LossChart, Series
from mlxlora.tui.widgets.text import clock, num

LOG_LINES = 200


def describe(event: Event) -> str:
    """One log line for an event."""
    match event:
        case Step():
            return f"step {event.step} loss {event.loss:.4f} lr {event.lr:.1e}"
        case Eval():
            return f"eval step {event.step} val {event.val_loss:.4f}" + (
                " best" if event.best else ""
            )
        case RunStarted():
            resumed = (
                f" resumed at step {event.resumed_from_step}" if event.resumed_from_step else ""
            )
            # the backend as `train` names it: a torch job showed "on cpu", as an MLX one did
            return f"started {event.model} on {event.backend} ({event.device}){resumed}"
        case EpochEnd():
            return f"epoch {event.epoch} ended, train loss {event.train_loss:.4f}"
        case Checkpoint():
            return f"checkpoint step {event.step}" + (" (best)" if event.best else "")
        case Sample():
            return f"sample {event.when}: {event.prompt}"
        case Diagnosis():
            return f"diagnosis: {event.kind} ({event.severity}) at step {event.step}"
        case EarlyStop():
            return f"early stop at step {event.step}: best {event.best_val_loss:.4f}"
        case RunFinished():
            return f"stopped at step {event.step}" if event.stopped else "finished"
        case RunFailed():
            return f"failed: {event.reason}"
    return event.type


class RunDetail(Horizontal):
    """What one run (or a job that has no run yet) shows; `show()` redraws it."""

    DEFAULT_CSS = """
    RunDetail { height: 1fr; }
    RunDetail LossChart { width: 1fr; }
    RunDetail #run-side { width: 40; padding: 0 0 0 1; scrollbar-gutter: stable; }
    RunDetail .bar { height: 1; }
    RunDetail .bar Label { width: 6; }
    RunDetail .bar ProgressBar, RunDetail .bar Bar { width: 1fr; }
    RunDetail #run-failure { color: $error; text-style: bold; }
    RunDetail #run-diagnosis { color: $warning; margin-top: 1; }
    RunDetail #run-eval { margin-top: 1; }
    RunDetail .optional { display: none; }
    RunDetail #run-samples { margin-top: 1; }
    RunDetail Log { height: 12; margin-top: 1; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.machine_bytes: int | None = None
        self._logged: tuple[object, int] = (None, 0)  # (run shown, events written to the log)
        self._texts: dict[str, str] = {}  # panel id -> text shown

    def compose(self) -> ComposeResult:
        yield LossChart("loss", id="run-chart")
        with VerticalScroll(id="run-side"):
            yield Static(id="run-stats")
            with Horizontal(classes="bar"):
                yield Label("epoch")
                yield ProgressBar(id="epoch-progress", show_eta=False)
            with Horizontal(classes="bar"):
                yield Label("total")
                yield ProgressBar(id="total-progress", show_eta=False)
            yield Static(id="run-failure")
            yield Static(id="run-diagnosis", classes="optional")
            yield Static(id="run-eval", classes="optional")
            yield Static(id="run-samples")
            yield Log(id="run-log", max_lines=LOG_LINES)

    def show(self, view: RunView, status: str) -> None:
        self._show_bars(True)
        self._put("run-stats", self._stats(view, status))
        epoch_done, _ = view.epoch_progress()
        self.query_one("#epoch-progress", ProgressBar).update(total=1.0, progress=epoch_done)
        self.query_one("#total-progress", ProgressBar).update(
            total=view.total_steps or None, progress=view.step
        )
        self._put("run-failure", f"failed: {view.failure}" if view.failure else "")
        self._put_optional("run-diagnosis", _diagnosis(view))
        self._put_optional("run-eval", _eval(view.eval))
        self._put("run-samples", _samples(view))
        self._log(view)
        self.query_one(LossChart).plot(
            [
                Series("train", view.train.x, view.train.y, "gray"),
                Series("smoothed", view.smooth.x, view.smooth.y, "cyan"),
                Series("val", view.val.x, view.val.y, "orange", points=True),
            ],
            vlines=[s for s in view.epoch_ends if s < view.step],  # not the last step's
        )

    def show_job(self, job: Job, status: str, stalled: str | None = None) -> None:
        """A queued job (`stalled`: why no runner trains it), or one that failed before it
        started a run."""
        # the id `queue list` shows and `queue stop` takes (the whole id wrapped at 80 columns)
        stats = f"{job.name}\nstatus  {status}\njob     {short_id(job.id)} ({job.kind})"
        self._put("run-stats", stats)
        self._show_bars(True)
        waiting = job.state not in ENDED  # a bar that moves only for a job yet to start
        for bar in self.query(ProgressBar):
            bar.update(total=None if waiting else 1, progress=0)
        self._put("run-failure", f"failed: {job.error}" if job.error else stalled or "")
        self._put_optional("run-diagnosis", "")
        self._put_optional("run-eval", "")
        self._put("run-samples", "")
        self.query_one(Log).clear()
        self._logged = (job, 0)
        self.query_one(LossChart).plot([])

    def show_nothing(self) -> None:
        """No run and no job (a new workspace, the last run deleted): what to do, not an
        empty chart beside two bars that seem to wait for something."""
        self._put("run-stats", "no runs yet: press 2 to train one")
        self._show_bars(False)
        for panel in ("run-failure", "run-samples"):
            self._put(panel, "")
        for panel in ("run-diagnosis", "run-eval"):
            self._put_optional(panel, "")
        self.query_one(Log).clear()
        self._logged = (None, 0)
        self.query_one(LossChart).plot([])

    def _show_bars(self, shown: bool) -> None:
        for bar in self.query(".bar"):
            bar.display = shown

    def _put(self, panel: str, text: str) -> None:
        """Show `text` in a panel; without a layout pass when its height stays the same (a
        live run redraws four times a second, and a layout pass costs the whole screen)."""
        old = self._texts.get(panel)
        if text == old:
            return
        static = self.query_one(f"#{panel}", Static)
        rows = _rows(text, static.size.width)
        layout = rows is None or rows != _rows(old, static.size.width)
        if layout:
            # Textual (8.2) keeps a widget's box model until its count of layouts asked goes
            # up, which a layout asked while an earlier one is pending does not do: a layout
            # pass run meanwhile kept the panel at its earlier height (on a new workspace the
            # one line of "no runs yet" cut a queued job's lines)
            static._box_model_cache.clear()
        static.update(Content(text), layout=layout)
        self._texts[panel] = text

    def _put_optional(self, panel: str, text: str) -> None:
        """`_put`, and a panel with nothing to say takes no room (its margin neither)."""
        self._put(panel, text)
        self.query_one(f"#{panel}", Static).display = bool(text)

    def _stats(self, view: RunView, status: str) -> str:
        start, step = view.started, view.last_step
        best = view.best_eval
        _, epochs = view.epoch_progress()
        eta = view.eta_seconds() if status == "running" else None
        lines = [
            f"{view.path.name}",
            f"status  {status}",
            f"model   {start.model if start else '-'}",
            f"step    {view.step}/{view.total_steps or '-'}"
            + (f"  epoch {step.epoch:.2f}/{epochs}" if step else ""),
            f"loss    {num(step.loss if step else None)}  smoothed {num(view.smooth.last())}",
            f"val     {num(view.val.last())}  best {num(best.val_loss if best else None)}"
            + (f" @{best.step}" if best else ""),
            f"lr      {num(step.lr if step else None, '.2e')}",
            f"tok/s   {num(step.tokens_per_sec if step else None, '.0f')}"  # as Compare: the mean
            f"  mean {num(view.mean_tokens_per_sec, '.0f')}",
            f"memory  {self._memory(view)}",
            f"ETA     {clock(eta)}  elapsed {clock(view.elapsed_sec)}",
        ]
        return "\n".join(lines)

    def _memory(self, view: RunView) -> str:
        """The run's peak against the budget it ran under (the engine's GB are 1e9 bytes)."""
        budget = view.started.memory_budget_gb if view.started else None
        if budget:
            of = f" of {fmt_bytes(budget * 1e9)}"  # its budget (the line has ~28 cells)
        else:  # a run from before budgets were recorded
            of = f" of {fmt_bytes(self.machine_bytes)} RAM" if self.machine_bytes else ""
        peak = view.peak_memory
        return f"{fmt_bytes(peak * 1e9)} peak{of}" if peak else f"{NONE} (no step yet){of}"

    def _log(self, view: RunView) -> None:
        """Write only the events not yet written (all of the last ones for a new run)."""
        log = self.query_one(Log)
        shown, written = self._logged
        if shown is not view:
            log.clear()
            written = 0
        new = min(view.events_seen - written, len(view.log))
        if new:
            start = view.first_time or 0.0
            lines = list(view.log)[-new:]
            log.write_lines(f"{clock(e.time - start)} {describe(e)}" for e in lines)
        self._logged = (view, view.events_seen)


def _rows(text: str | None, width: int) -> int | None:
    """Rows `text` takes at `width` cells; None when unknown (empty, or a line would wrap)."""
    if not text:
        return None
    lines = text.split("\n")
    return len(lines) if all(cell_len(line) <= width for line in lines) else None


def _samples(view: RunView) -> str:
    prompts = dict.fromkeys(prompt for _, prompt in view.samples)
    parts = []
    for prompt in prompts:
        parts.append(f"Q: {prompt}")
        for when in ("before", "after"):
            sample = view.samples.get((when, prompt))
            if sample:
                parts.append(f"  {when}: {answer(sample.answer)}")
    return "\n".join(parts)


def _diagnosis(view: RunView) -> str:
    """Each finding: what, where, and the remedies to try, as `runs show` lists them."""
    lines = []
    for d in view.diagnoses.values():
        lines.append(f"⚠ {d.kind} ({d.severity}) @{d.step}: {d.message}")
        lines += [f"  {'try' if i == 0 else ' or'} {r}" for i, r in enumerate(d.remedy)]
    return "\n".join(lines)


def _eval(measured: dict) -> str:
    """eval.json's numbers, tuned and (when measured) base side by side."""
    if measured.get("val_loss") is None:
        return ""
    base = measured.get("base") is not None
    head = f"eval {measured.get('dataset', '')} ({measured.get('records', '?')} records)"
    lines = [head + ("  tuned / base" if base else "")]
    for label, tuned, base_value in score_rows(measured):
        lines.append(f"  {label:<13}{tuned}" + (f" / {base_value}" if base else ""))
    return "\n".join(lines)
