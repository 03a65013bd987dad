"""`mlxlora train`: run or resume a job headless, with a rich progress bar or JSON events."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from mlxlora.commands import ConfigFileErrors, path_arg
from mlxlora.events import (
    EarlyStop,
    Eval,
    Event,
    MemoryFit,
    RunFinished,
    RunStarted,
    Sample,
    Step,
)
from mlxlora.fmt import clock, counted
from mlxlora.memory import fmt_bytes
from mlxlora.runs import RunPaths


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model with LoRA",
        description="Fine-tune a model with LoRA. Example: mlxlora train configs/quickstart.yaml",
    )
    p.add_argument("config", nargs="?", help="YAML config (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set lora.rank=16 (repeatable)",
    )
    p.add_argument("--run-dir", type=path_arg, help="write the run here instead of the workspace")
    p.add_argument("--resume", metavar="RUN", help="continue a stopped or killed run")
    p.add_argument(
        "--json",
        action="store_true",
        help="print events as JSON lines on stdout (with --dry-run: the plan as one object)",
    )
    p.add_argument(
        "--fit",
        action="store_true",
        help="choose micro-batch, accumulation, checkpointing and loss chunk to fit the memory "
        "budget (training.fit=auto); with --resume, refit the run's config",
    )
    p.add_argument(
        "--memory-budget",
        metavar="SIZE",
        help="memory the run may use, e.g. 12GB (training.memory_budget); it stops with a "
        "checkpoint before a step would pass it",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the memory estimate (breakdown, budget, verdict) and exit without training",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    """Train or resume; exit 0 when the run ends (or a STOP file stops it), 128 + the signal's
    number when SIGINT or SIGTERM stopped it (130, 143)."""
    from mlxlora import config, engine, runs
    from mlxlora.backends import select
    from mlxlora.errors import ConfigError

    flags = memory_overrides(args)
    if args.resume is not None:  # an empty one too: `--resume "$RUN"` with RUN unset
        if args.config or args.overrides:
            raise ConfigError(
                ["--resume takes the run's own config; drop CONFIG and --set"], "train"
            )
        run_dir, cfg = runs.find_run(args.resume), None
        runs.check_resumable(runs.RunPaths(run_dir))  # before a dry run plans a run that cannot
        if flags:  # refit the run's own config (after a budget stop)
            cfg = config.load(runs.RunPaths(run_dir).config, flags=flags)
    else:
        if not args.config:
            raise ConfigError(
                ["give a CONFIG file (try configs/quickstart.yaml) or --resume RUN"], "train"
            )
        cfg = config.load(args.config, args.overrides, flags=flags)
        run_dir = args.run_dir  # None: the engine names one in the workspace once prepared
    named = ConfigFileErrors(args.config, args.overrides)  # None with --resume: its own
    if args.dry_run:
        cfg = cfg or config.load(runs.RunPaths(run_dir).config)
        with named:
            return dry_run(cfg, as_json=args.json)
    view = JsonView() if args.json else ProgressView()
    ending = Ending()
    listeners = [view.on_event, ending, say_fit, named]
    with view, named:
        summary = engine.train(cfg, run_dir, resume=args.resume is not None, listeners=listeners)
    if not args.json and select.process_rank() == 0:  # the others' runs are deleted scratch
        view.print_summary(summary)
    return ending.exit_code()


def memory_overrides(args) -> list[str]:
    """--fit and --memory-budget as config overrides; a bad --memory-budget is refused here,
    naming the flag the user typed (as an override it read as `--set training.memory_budget`)."""
    from mlxlora.config import memory_budget_problem
    from mlxlora.errors import ConfigError

    budget = args.memory_budget
    if budget is not None and not budget.strip():  # the config's blank means "not given"
        raise ConfigError(["--memory-budget: blank (a size such as 12GB)"], "train")
    if problem := memory_budget_problem(budget):
        raise ConfigError([f"--memory-budget: {problem}"], "train")
    out = ["training.fit=auto"] if args.fit else []
    return out + ([f"training.memory_budget={args.memory_budget}"] if args.memory_budget else [])


def say_fit(event: Event) -> None:
    """The fit's choice, one line on stderr whatever the view (JSON goes to stdout)."""
    if isinstance(event, MemoryFit):
        chose = ", ".join(f"{k}={v}" for k, v in event.changes.items()) or "the config as it is"
        print(
            f"fit: {chose} (~{fmt_bytes(event.estimated_bytes)} of "
            f"{fmt_bytes(event.budget_bytes)}): {event.reason}",
            file=sys.stderr,
            flush=True,
        )


def dry_run(cfg, as_json: bool = False) -> int:
    """Print what a run of `cfg` would hold in memory (`as_json`: as one JSON object, what
    the studio's Train tab reads), and exit 0 (1 when it will not fit)."""
    from rich.console import Console
    from rich.table import Table

    from mlxlora.backends import select
    from mlxlora.prepare import check_references, memory_plan

    check_references(cfg)  # what the run would refuse first, its dataset above all
    backend = select.create(cfg.backend)
    plan = memory_plan(cfg, backend)
    if as_json:
        facts = {k: plan[k] for k in ("length", "budget", "verdict", "advice")}
        print(json.dumps({**facts, "total": plan["estimate"].total}, ensure_ascii=False))
        return 1 if plan["verdict"] == "will not fit" else 0
    if plan["fit"] is not None:
        say_fit(plan["fit"])
    t, d = plan["config"].training, plan["config"].data
    length = plan["length"]
    cut = "" if length >= d.max_length else f" (the longest record; data.max_length {d.max_length})"
    # the backend as the run's first line names it: `--set backend=torch` went unconfirmed.
    # A line of its own: as the table's title it wrapped to the table's ~45 columns.
    heading = (
        f"memory of {cfg.model} on {backend.info.name} ({backend.info.device}): "
        f"batch {t.batch_size} x {length}{cut}, "
        f"accumulation {t.grad_accumulation}, checkpointing {'on' if t.grad_checkpoint else 'off'}"
    )
    table = Table(show_header=False, box=None)
    for label, n in plan["estimate"].breakdown():
        table.add_row(label, fmt_bytes(n))
    budget = fmt_bytes(plan["budget"]) if plan["budget"] else "unknown"
    table.add_row("budget", budget)
    table.add_row("verdict", plan["verdict"])
    console = Console()
    console.print(heading, markup=False, highlight=False)
    console.print(table)
    for line in plan["warnings"]:
        print(f"  warning: {line}")
    for line in plan["advice"]:
        print(f"  try: {line}")
    return 1 if plan["verdict"] == "will not fit" else 0


class Ending:
    """Keeps the run_finished event: the signal that stopped a run decides the exit code."""

    def __init__(self):
        self.finished: RunFinished | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunFinished):
            self.finished = event

    def exit_code(self) -> int:
        stopped_by = self.finished.signal if self.finished else None
        return 128 + signal.Signals[stopped_by].value if stopped_by else 0


class JsonView:
    """The events as JSON lines on stdout. A reader that goes away (`--json | head`) stops the
    run as a STOP file does: at a step's end, checkpointed and resumable, not failed."""

    def __init__(self):
        self.run_dir: str | None = None
        self.reader_gone = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def on_event(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.run_dir = event.run_dir
        if self.reader_gone:
            return
        try:
            print(json.dumps(event.to_dict(), ensure_ascii=False), flush=True)
        except BrokenPipeError:
            self.reader_gone = True
            # later writes, Python's own flush at exit included, go nowhere instead of failing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            if self.run_dir:
                RunPaths(Path(self.run_dir)).stop_request.touch()


class ProgressView:
    """A rich progress bar with loss, lr, tokens/s, memory and ETA; notes for evals and saves.

    Without a terminal (a log file, CI) the bar cannot redraw, so a plain line with the same
    numbers is printed at the first step, then every `plain_every` seconds and at the last.
    """

    def __init__(self, plain_every: float = 10.0):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        self.plain_every = plain_every
        self._last_plain: float | None = None
        # Fits an 80-column terminal: step count, bar, the numbers that matter, ETA.
        self.progress = Progress(
            MofNCompleteColumn(),
            BarColumn(bar_width=16),
            TextColumn("{task.fields[stats]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(compact=True),
            console=self.console,
        )
        self.task = None
        self.run_dir = ""  # from run_started: the resume command names it

    def __enter__(self):
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.progress.stop()
        return False

    def log(self, text: str) -> None:
        self.progress.console.print(text)

    def on_event(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._started(event)
        elif isinstance(event, Step):
            self._step(event)
        elif isinstance(event, Eval):
            mark = "  [green]best[/]" if event.best else ""
            ppl = f"ppl {event.perplexity:.2f}"
            self.log(f"step {event.step}: val loss {event.val_loss:.4f}  {ppl}{mark}")
        elif isinstance(event, Sample):
            from rich.markup import escape

            answer = escape(" ".join(event.answer.split()))
            prompt = escape(" ".join(event.prompt.split()))
            self.log(f"[bold]{event.when} training[/] '{prompt}'\n  -> {answer}")
        elif isinstance(event, EarlyStop):
            self.log(
                f"[yellow]early stop[/] at step {event.step}: no improvement beyond "
                f"early_stopping.min_delta for {event.patience} evaluations "
                f"(best {event.best_val_loss:.4f} at step {event.best_step})"
            )
        elif isinstance(event, RunFinished) and event.stopped:
            self._stopped(event)

    def _stopped(self, e: RunFinished) -> None:
        from rich.markup import escape

        from mlxlora.runs import resume_command

        by = f" by {e.signal}" if e.signal else ""
        command = escape(resume_command(Path(self.run_dir)))
        # not wrapped: the command is copied from the terminal as one line
        self.progress.console.print(
            f"[yellow]stopped[/]{by} at step {e.step}; resume with: {command}", soft_wrap=True
        )

    def _step(self, e: Step) -> None:
        # The smoothed loss: one micro-batch's loss jumps too much to read.
        stats = (
            f"ema loss {e.loss_ema:.3f} lr {e.lr:.1e} {e.tokens_per_sec:,.0f} tok/s"
            f" {fmt_bytes(e.peak_memory_gb * 1e9)}"
        )
        self.progress.update(self.task, completed=e.step, stats=stats)  # also feeds the ETA
        if self.live:
            return
        task = self.progress.tasks[0]  # the one task this view adds
        now = time.monotonic()
        due = self._last_plain is None or now - self._last_plain >= self.plain_every
        if due or e.step == task.total:
            self._last_plain = now
            self.log(f"step {e.step}/{task.total:.0f}  {stats}  ETA {clock(task.time_remaining)}")

    def _started(self, e: RunStarted) -> None:
        self.run_dir = e.run_dir
        resumed = f", resumed at step {e.resumed_from_step}" if e.resumed_from_step else ""
        self.log(f"[bold]{e.model}[/] on {e.backend} ({e.device}){resumed}")
        self.log(
            f"  dataset [bold]{e.dataset}[/]: {e.train_records} train / {e.val_records} validation"
            f" records; {counted(e.total_steps, 'step')} ({e.steps_per_epoch} per epoch)"
        )
        self.log(
            f"  LoRA: {e.trainable_params:,} trainable of {e.total_params:,} parameters; "
            f"estimated peak memory {fmt_bytes(e.estimated_peak_gb * 1e9)}"
        )
        for warning in e.warnings:
            self.log(f"  [yellow]warning:[/] {warning}")
        self.log(f"  run directory: {e.run_dir}")
        self.task = self.progress.add_task(
            "train", total=e.total_steps, completed=e.resumed_from_step, stats=""
        )

    def print_summary(self, summary: dict) -> None:
        from rich.console import Console
        from rich.table import Table

        from mlxlora.commands.runs import summary_rows

        table = Table(title="summary", show_header=False, box=None)
        table.add_column(no_wrap=True)
        table.add_column(overflow="fold")  # a path or hash folds whole, never cut to "…"
        for label, text in summary_rows(summary):
            table.add_row(label, text)
        Console().print(table)
