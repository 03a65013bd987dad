"""`mlxlora compare RUN RUN ...`: the benchmark table, an HTML report, the pick."""

from __future__ import annotations

import json
from pathlib import Path

from mlxlora.commands import path_arg


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare runs: losses, eval scores, time, memory, differing settings",
        description="The benchmark table of runs: final and best validation loss, perplexity, "
        "validation-minus-training gap, eval scores (eval.json), training time, tokens/s, peak "
        "memory, and the config keys they differ in. --report writes one HTML page with the "
        "loss curves overlaid; --pick names the run that best trades quality against cost.",
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="run names (or prefixes) or directories")
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="NAME",
        help="add a sweep's finished runs (repeatable; see `mlxlora sweep status`)",
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--report", type=path_arg, metavar="FILE.html", help="write an HTML report")
    p.add_argument(
        "--pick",
        action="store_true",
        help="name the best run: weighted best val loss 0.35, eval score 0.25, val-train gap "
        "0.15, time 0.15, memory 0.10; on each a run costs how far it is behind the best, up to "
        "a decisive 0.1 nats of loss or gap, 0.1 of score, 2x the time, 1.5x the memory; a "
        "number some runs lack is left out (a missing val loss counts as behind); lowest wins",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from mlxlora import experiments, runs
    from mlxlora.errors import ConfigError

    found = [runs.find_run(ref).resolve() for ref in args.runs]
    found += [path.resolve() for name in args.sweep for path in sweep_runs(name)]
    paths = list(dict.fromkeys(found))
    if not paths:
        raise ConfigError(["give runs to compare (RUN ... or --sweep NAME)"], "compare")
    comparison = experiments.compare(paths)
    chosen = experiments.pick(comparison) if args.pick else None
    if args.report:
        from mlxlora import report

        report.write(args.report, comparison, chosen)
    if args.json:
        shown = comparison.to_dict()
        if chosen:
            shown["pick"] = {
                "run": chosen.run.name,
                "path": str(chosen.run.path),
                "reason": chosen.reason,
                "costs": [
                    {"run": r.name, "path": str(r.path), "cost": cost}
                    for r, cost in zip(comparison.runs, chosen.costs, strict=True)
                ],
                "weights": chosen.weights,
            }
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    print_table(comparison)
    if chosen:
        print(f"pick: {chosen.reason}")
    if args.report:
        print(f"report: {args.report}")
    return 0


def sweep_runs(name: str) -> list[Path]:
    from mlxlora import sweep

    return [m.run for m in sweep.status(name) if m.state in sweep.DONE and m.run is not None]


def print_table(comparison) -> None:
    """The numbers, one row per run; then the settings that differ, one row per setting
    (as columns, a few differing lists such as stages or prompts made the table unreadable)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from mlxlora.commands.runs import listing_table
    from mlxlora.experiments import metric_text, setting_text, shown_metrics

    rows = comparison.runs
    metrics = shown_metrics([r.metrics for r in rows])
    columns = ["#", "run", "status", *(t for _, t, _ in metrics)]
    cells = [
        [
            str(i),
            r.name,
            r.status,
            *(metric_text(r.metrics.get(k), spec) for k, _, spec in metrics),
        ]
        for i, r in enumerate(rows, 1)
    ]
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 200)  # a pipe or log keeps every column readable
    # as `runs list`: the runs' names and numbers whole (at 80 columns a bordered table cut
    # level1-basic and level2-intermediate to the same `leve…`), stacked where they do not fit
    console.print(listing_table("compare", columns, cells, console.width, whole=2))
    if comparison.differences:
        settings = Table(title="settings that differ")
        # a key is never cut (training.early_stopping.patience and .min_delta read alike
        # cut); long values wrap rather than end in `…`
        settings.add_column("setting", no_wrap=True)
        for i in range(1, len(rows) + 1):
            settings.add_column(f"#{i}", overflow="fold")
        for key, values in comparison.differences.items():
            settings.add_row(*map(Text, (key, *map(setting_text, values))))
        console.print(settings)
