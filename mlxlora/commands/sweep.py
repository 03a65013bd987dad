"""`mlxlora sweep CONFIG --grid KEY=V1,V2 ...` and `mlxlora sweep status [NAME]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlxlora.commands import nonblank_arg


def register(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="queue a run per combination of settings (grid search, A/B test); rank them",
        description="Queue one named run per combination of --grid values (and of --config "
        "files: an A/B test) in the job queue the TUI uses; they train one at a time. Every "
        "combination is validated before anything is queued. Running the same sweep again "
        "continues it (finished runs are skipped, stopped ones resumed). `mlxlora sweep status "
        "NAME` lists its runs and ranks the finished ones. Example: mlxlora sweep "
        "configs/tiny.yaml --grid lora.rank=8,12,16 --grid training.learning_rate=5e-5,3e-5",
    )
    p.add_argument("target", nargs="?", metavar="CONFIG", help="YAML config, or `status`")
    p.add_argument("status_name", nargs="?", metavar="NAME", help=argparse.SUPPRESS)
    p.add_argument(
        "--config",
        dest="configs",
        action="append",
        default=[],
        metavar="FILE",
        help="another config to run with every combination (repeat for an A/B test)",
    )
    p.add_argument(
        "--grid",
        dest="grids",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="values to try for a config key, split at commas (, 、 or ，; repeatable: every "
        "combination runs)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value in every run, as in `train` (repeatable)",
    )
    p.add_argument(
        "--name",
        type=nonblank_arg,  # blank read as left out: the default name, maybe an existing sweep
        help="the sweep's name (default: the first config's name + -sweep, unless it ends so)",
    )
    p.add_argument("--no-start", action="store_true", help="queue only; start no runner")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from mlxlora.errors import ConfigError

    if args.target == "status":
        return show_status(args.status_name or args.name, args.json)
    if args.status_name:
        raise ConfigError([f"unexpected argument {args.status_name!r}"], "sweep")
    configs = ([args.target] if args.target else []) + args.configs
    if not configs:
        raise ConfigError(["give a CONFIG (and --grid KEY=V1,V2 or --config B.yaml)"], "sweep")
    if len({Path(c).resolve() for c in configs}) < len(configs):
        raise ConfigError(["a config is given twice: each --config is another setting"], "sweep")
    if len(configs) == 1 and not args.grids:
        raise ConfigError(["nothing to sweep: give --grid KEY=V1,V2 or a second --config"], "sweep")
    return start(args, configs)


def start(args, configs: list[str]) -> int:
    from mlxlora import config, queue_runner, sweep

    name = args.name or sweep.default_name(config.load(configs[0], args.overrides).name)
    done = sweep.start(name, configs, args.grids, args.overrides)
    started = False if args.no_start else queue_runner.ensure_runner()
    if args.json:
        rows = [{"run": m.name, "values": m.values, "action": a} for m, a in done]
        print(json.dumps({"sweep": name, "members": rows}, indent=2, ensure_ascii=False))
        return 0
    for member, action in done:
        print(f"{action:14} {member.name}")
    queued = sum(a in ("queued", "resume queued") for _, a in done)
    note = "; runner started" if started else ""
    print(f"sweep {name}: {queued} of {len(done)} runs queued{note}; see `mlxlora sweep status`")
    return 0


def show_status(name: str | None, as_json: bool) -> int:
    from mlxlora import experiments, sweep

    if not name:
        found = sweep.sweep_names()
        print(json.dumps(found, ensure_ascii=False) if as_json else "\n".join(found) or "no sweeps")
        return 0
    members = sweep.status(name)
    finished = [m.run for m in members if m.state in sweep.DONE and m.run is not None]
    ranked = ranking(experiments.compare(finished)) if finished else []
    if as_json:
        rows = [
            {"run": m.member.name, "values": m.member.values, "state": m.state, "path": _str(m.run)}
            for m in members
        ]
        print(
            json.dumps(
                {"sweep": name, "members": rows, "ranked": ranked}, indent=2, ensure_ascii=False
            )
        )
        return 0
    print_status(name, members, ranked)
    return 0


def ranking(comparison) -> list[dict]:
    """Finished runs best first, by compare --pick's cost."""
    from mlxlora import experiments

    chosen = experiments.pick(comparison)
    rows = sorted(zip(chosen.costs, comparison.runs, strict=True), key=lambda pair: pair[0])
    ranked = [
        {"run": r.name, "cost": cost, "best_val_loss": r.metrics["best_val_loss"]}
        for cost, r in rows
    ]
    return [{**ranked[0], "why": chosen.reason}, *ranked[1:]] if ranked else []


def _str(path: Path | None) -> str | None:
    return str(path) if path else None


def print_status(name: str, members, ranked: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from mlxlora.commands.runs import listing_table
    from mlxlora.fmt import num

    table = Table(title=Text(f"sweep {name}"))
    for col in ("run", "state", "run directory"):  # folded, never cut: the ends tell them apart
        table.add_column(col, overflow="fold")
    for m in members:  # the run without its sweep's name, which the title gives
        short = m.member.name.removeprefix(f"{name}-") or m.member.name
        table.add_row(Text(short), m.state, Text(_str(m.run) or "—"))
    console = Console()
    console.print(table)
    if ranked:
        # as the table above, each run without its sweep's name: a line with it passed 80
        # columns and wrapped; never cut, the rows stack where even they do not fit
        rows = [
            [str(i), r["run"].removeprefix(f"{name}-"), f"{r['cost']:.3f}", num(r["best_val_loss"])]
            for i, r in enumerate(ranked, 1)
        ]
        console.print("ranked (compare --pick's weighted cost, lower is better):")
        columns = ["#", "run", "cost", "best val"]
        console.print(listing_table("", columns, rows, console.width, whole=2))
        console.print(f"pick: {ranked[0]['why']}", markup=False)
