"""`mlxlora queue add|list|rm|work`: jobs that run one at a time in a detached runner."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict


def register(sub) -> None:
    p = sub.add_parser(
        "queue",
        help="queue training jobs; a background runner trains them one at a time",
        description="Queue training jobs. A detached runner (started when a job is added) "
        "trains them one at a time, in order, and outlives the terminal and the app.",
    )
    qs = p.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
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
    rm.add_argument("job", help="job id (or unique prefix)")
    rm.set_defaults(func=remove_job)
    work = qs.add_parser("work", help="be the runner: train queued jobs until none is left")
    work.add_argument("--lock-fd", type=int, help=argparse.SUPPRESS)  # from ensure_runner
    work.set_defaults(func=work_jobs)


def add_job(args) -> int:
    from mlxlora import config, queue

    cfg = config.load(args.config, args.overrides)
    job = queue.add_train(cfg.to_yaml(), cfg.name)
    started = False if args.no_start else queue.ensure_runner()
    note = "runner started" if started else "the runner will take it in turn"
    print(f"queued {job.id} ({job.name}); {note}; see `mlxlora queue list`")
    return 0


def list_jobs(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from mlxlora import queue

    found = queue.jobs()
    if args.json:
        print(json.dumps([asdict(j) for j in found], indent=2, ensure_ascii=False))
        return 0
    table = Table(title=f"jobs in {queue.root()}")
    for col in ("id", "name", "kind", "state", "queued", "run / error"):
        table.add_column(col)
    for j in found:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created))
        state = j.state if j.exit_code in (None, 0) else f"{j.state} (exit {j.exit_code})"
        table.add_row(j.id, j.name, j.kind, state, when, j.error or j.run_dir or "—")
    Console().print(table)
    return 0


def remove_job(args) -> int:
    from mlxlora import queue

    job = queue.remove(args.job)
    print(f"removed {job.id} ({job.name})")
    return 0


def work_jobs(args) -> int:
    from mlxlora import queue

    ran = queue.work(lock_fd=args.lock_fd)
    print("another runner is working the queue" if ran is None else f"ran {ran} jobs")
    return 0
