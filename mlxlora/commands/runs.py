"""`mlxlora runs list|show`: what the workspace's runs did, read from their directories."""

from __future__ import annotations

import json
import time


def register(sub) -> None:
    p = sub.add_parser("runs", help="list and inspect training runs")
    rs = p.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    ls = rs.add_parser("list", help="all runs in the workspace, newest first")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_runs)
    show = rs.add_parser("show", help="one run: config, progress, evaluations, summary")
    show.add_argument("run", help="run name (or unique prefix) or directory")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_run)


def _fmt(value, spec=".4f") -> str:
    return "-" if value is None else format(value, spec)


def list_runs(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from mlxlora import runs

    infos = runs.list_runs()
    if args.json:
        print(json.dumps([{**vars(i), "path": str(i.path)} for i in infos], indent=2))
        return 0
    table = Table(title=f"runs in {runs.runs_root()}")
    for col in ("name", "status", "model", "step", "loss", "best val", "started"):
        table.add_column(col)
    for i in infos:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(i.started)) if i.started else "-"
        table.add_row(
            i.name,
            i.status,
            i.model,
            str(i.step),
            _fmt(i.last_loss),
            _fmt(i.best_val_loss),
            started,
        )
    Console().print(table)
    return 0


def show_run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from mlxlora import runs
    from mlxlora.events import Eval, read_events

    path = runs.find_run(args.run)
    info = runs.run_info(path)
    paths = runs.RunPaths(path)
    summary = json.loads(paths.summary.read_text()) if paths.summary.exists() else {}
    evals = [e for e in read_events(paths.events) if isinstance(e, Eval)]
    if args.json:
        print(
            json.dumps(
                {
                    "info": {**vars(info), "path": str(path)},
                    "summary": summary,
                    "evals": [e.to_dict() for e in evals],
                },
                indent=2,
            )
        )
        return 0
    console = Console()
    console.print(f"[bold]{info.name}[/]  {info.status}  model {info.model}  step {info.step}")
    console.print(f"directory {path}")
    table = Table(title="evaluations")
    for col in ("step", "epoch", "val loss", "perplexity", "best"):
        table.add_column(col)
    for e in evals:
        table.add_row(
            str(e.step),
            f"{e.epoch:.2f}",
            f"{e.val_loss:.4f}",
            f"{e.perplexity:.2f}",
            "*" if e.best else "",
        )
    console.print(table)
    for key, value in summary.items():
        console.print(f"  {key.replace('_', ' ')}: {value}")
    return 0
