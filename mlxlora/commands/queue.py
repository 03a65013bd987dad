"""`mlxlora queue add|list|rm|stop|resume|clear|work`: jobs that run one at a time in a detached
runner."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from mlxlora.commands import ConfigFileErrors, actions


def register(sub) -> None:
    p = sub.add_parser(
        "queue",
        help="queue training jobs; a background runner trains them one at a time",
        description="Queue training jobs. A detached runner (started when a job is added) "
        "trains them one at a time, in order, and outlives the terminal and the app.",
    )
    qs = actions(p, "queue_command")
    add = qs.add_parser("add", help="queue a training job (starts the runner if needed)")
    add.add_argument("config", help="YAML config (see configs/)")
    add.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, as in `train` (repeatable)",
    )
    add.add_argument("--no-start", action="store_true", help="queue only; start no runner")
    add.set_defaults(func=add_job)
    ls = qs.add_parser("list", help="queued, running and finished jobs, oldest first")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_jobs)
    rm = qs.add_parser("rm", help="drop a queued job")
    rm.add_argument("job", help="job id (as `queue list` shows it, or the full id) or name")
    rm.set_defaults(func=remove_job)
    stop = qs.add_parser(
        "stop",
        help="stop a running job (checkpoint kept) or take a queued one off the queue",
        description="Stop a job or a run: a queued job leaves the queue; a running one "
        "checkpoints and stops after its current step, as the studio's s stops it, and "
        "resumes with `queue resume RUN`.",
    )
    stop.add_argument("job", metavar="JOB-or-RUN", help="job id or name, or a run's name")
    stop.set_defaults(func=stop_job)
    resume = qs.add_parser(
        "resume",
        help="queue a resume of a stopped, interrupted or failed run (starts the runner)",
        description="Queue `mlxlora train --resume RUN` for the runner, as the studio's r "
        "does: a run the memory budget stopped resumes refitted (--fit).",
    )
    resume.add_argument("run", metavar="RUN", help="run name or directory (see `runs list`)")
    resume.add_argument("--no-start", action="store_true", help="queue only; start no runner")
    resume.set_defaults(func=resume_run)
    clear = qs.add_parser(
        "clear",
        help="forget finished (done, stopped or failed) jobs; never a queued or running one",
        description="Forget the finished jobs (done, stopped or failed) with their logs, so "
        "`queue list` shows what is waiting and running. Their runs stay (`mlxlora runs rm`).",
    )
    clear.set_defaults(func=clear_jobs)
    work = qs.add_parser("work", help="be the runner: train queued jobs until none is left")
    work.add_argument("--lock-fd", type=int, help=argparse.SUPPRESS)  # from ensure_runner
    work.set_defaults(func=work_jobs)


def add_job(args) -> int:
    from mlxlora import config, queue, queue_runner
    from mlxlora.prepare import check_references

    cfg = config.load(args.config, args.overrides)
    with ConfigFileErrors(args.config, args.overrides):
        check_references(cfg)  # what the run would refuse at its start
    job = queue.add_train(cfg.to_yaml(), cfg.name)
    started = False if args.no_start else queue_runner.ensure_runner()
    print(f"queued {queue.short_id(job.id)} ({job.name}); {_runner_note(started)}")
    return 0


def list_jobs(args) -> int:
    from rich.console import Console

    from mlxlora import queue, queue_runner
    from mlxlora.commands.runs import listing_table

    found = queue.jobs()
    if args.json:
        print(json.dumps([asdict(j) for j in found], indent=2, ensure_ascii=False))
        return 0
    shorts = Counter(queue.short_id(j.id) for j in found)
    rows = []
    for j in found:
        short = queue.short_id(j.id)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created))
        state = j.state if j.exit_code in (None, 0) else f"{j.state} (exit {j.exit_code})"
        shown_id = short if shorts[short] == 1 else j.id  # an id shown is one that finds it
        detail = " · ".join(filter(None, (_run_name(j.run_dir), j.error)))
        rows.append([shown_id, j.name, j.kind, state, when, detail or "—"])
    console = Console()
    columns = ["id", "name", "kind", "state", "queued", "run / error"]
    title = f"jobs in {queue.root()}"
    console.print(
        listing_table(title, columns, rows, console.width, whole=2, names=(5,), unbroken=(4,))
    )
    if why := queue_runner.stalled():
        print(why)
    return 0


def _run_name(run_dir: str | None) -> str | None:
    """A workspace run by its name (what `runs show` takes), any other by its path."""
    from mlxlora.runs import runs_root

    if not run_dir:
        return None
    path = Path(run_dir)
    return path.name if path.parent.resolve() == runs_root().resolve() else run_dir


def remove_job(args) -> int:
    from mlxlora import queue

    job = queue.remove(args.job)
    print(f"removed {queue.short_id(job.id)} ({job.name})")
    return 0


def stop_job(args) -> int:
    from mlxlora import runcontrol

    print(runcontrol.stop_named(args.job))
    return 0


def resume_run(args) -> int:
    from mlxlora import queue, queue_runner, runcontrol

    job = runcontrol.resume_named(args.run)
    started = False if args.no_start else queue_runner.ensure_runner()
    fitted = " fitted to the memory budget" if job.fit else ""
    print(f"queued {queue.short_id(job.id)}: resume {job.name}{fitted}; {_runner_note(started)}")
    return 0


def _runner_note(started: bool) -> str:
    """Who trains a job just queued: `--no-start` with no runner alive was told "the runner
    will take it in turn", and the job waited for none."""
    from mlxlora import queue_runner

    if started:
        return "runner started; see `mlxlora queue list`"
    return queue_runner.stalled() or "the runner will take it in turn; see `mlxlora queue list`"


def clear_jobs(args) -> int:
    from mlxlora import queue
    from mlxlora.fmt import counted

    cleared = queue.clear_finished()
    print(f"cleared {counted(len(cleared), 'finished job')}")
    return 0


def work_jobs(args) -> int:
    from mlxlora import queue_runner

    ran = queue_runner.work(lock_fd=args.lock_fd)
    print("another runner is working the queue" if ran is None else f"ran {ran} jobs")
    return 0
