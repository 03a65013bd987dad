"""`mlxlora runs list|show|rm`: what the workspace's runs did, read from their directories."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

from mlxlora.commands import actions
from mlxlora.fmt import NONE, answer, clock, num
from mlxlora.memory import fmt_bytes


def register(sub) -> None:
    p = sub.add_parser("runs", help="list, inspect and delete training runs")
    rs = actions(p, "runs_command")
    ls = rs.add_parser("list", help="all runs in the workspace, newest first")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_runs)
    show = rs.add_parser(
        "show",
        help="one run: config, model, evaluations, samples, summary",
        description="One run: its settings that differ from the defaults (--json: the whole "
        "config), the model directory and an mlx_lm.generate command for its adapter, "
        "evaluations, the sample answers before and after training, and its summary.",
    )
    show.add_argument("run", help="run name (or unique prefix) or directory")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_run)
    rm = rs.add_parser(
        "rm",
        help="delete a run with its adapters and checkpoints",
        description="Delete a run's directory with its adapters and checkpoints (as the "
        "studio's Runs tab does with d). A running run, or one a queued job will resume, is "
        "refused.",
    )
    rm.add_argument("run", help="run name (whole: its directory's or the given one) or directory")
    rm.set_defaults(func=remove_run)


def fmt_value(value) -> str:
    """A run's value as `train` and `runs show` print it: 4 decimals, — for None."""
    if isinstance(value, float):
        return num(value)
    return NONE if value is None else str(value)


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    """(label, text) for each entry of a summary.json; sizes as the studio shows them (a tiny
    run's peak read "peak memory gb: 0.0140") and durations as a clock."""
    return [_summary_row(key, value) for key, value in summary.items()]


def _summary_row(key: str, value) -> tuple[str, str]:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and key.endswith("_gb"):
        return key.removesuffix("_gb").replace("_", " "), fmt_bytes(value * 1e9)
    if number and key.endswith("_sec"):
        return key.removesuffix("_sec").replace("_", " "), clock(value)
    return key.replace("_", " "), fmt_value(value)


def config_changes(cfg) -> dict:
    """The settings of a config that differ from the defaults, as {"key.sub": value}."""
    from mlxlora.config import Config

    defaults = _flatten(Config().to_dict())
    return {k: v for k, v in _flatten(cfg.to_dict()).items() if defaults.get(k) != v}


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def generate_command(model_dir: str, adapters: Path, prompt: str) -> str:
    """The mlx-lm command line that answers `prompt` with this run's adapter; for a base
    mlx-lm cannot load (a bitsandbytes QLoRA base, which trains on torch only), mlxlora's own,
    which answers on the run's backend (mlx-lm's failed on it)."""
    from mlxlora.errors import ModelError
    from mlxlora.models.info import refuse_bitsandbytes_in_mlx

    try:
        refuse_bitsandbytes_in_mlx(model_dir)
    except ModelError:
        run = adapters.parent
        return f"mlxlora generate --adapter {shlex.quote(str(run))} --prompt {shlex.quote(prompt)}"
    return (
        f"mlx_lm.generate --model {shlex.quote(model_dir)} "
        f"--adapter-path {shlex.quote(str(adapters))} --prompt {shlex.quote(prompt)}"
    )


def list_runs(args) -> int:
    from rich.console import Console

    from mlxlora import runlist, runs

    infos = runlist.list_runs()
    flags = [diagnosis_flag(i.path) for i in infos]
    if args.json:
        shown = [
            {**vars(i), "path": str(i.path), "flag": f} for i, f in zip(infos, flags, strict=True)
        ]
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    rows = []
    for i, flag in zip(infos, flags, strict=True):
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(i.started)) if i.started else "-"
        status = i.status + (f" ⚠ {flag}" if flag else "")  # as the TUI's Runs tab flags it
        rows.append(
            [i.name, status, i.model, str(i.step), num(i.loss_ema), num(i.best_val_loss), started]
        )
    console = Console()
    columns = ["name", "status", "model", "step", "ema loss", "best val", "started"]
    title = f"runs in {runs.runs_root()}"
    console.print(listing_table(title, columns, rows, console.width, unbroken=(6,)))
    return 0


WORD_CAP = 12  # a longer word (a path) folds rather than squeeze the other columns


def listing_table(
    title: str,
    columns: list[str],
    rows: list[list[str]],
    width: int,
    whole=1,
    names=(),
    unbroken=(),
):
    """A rich table whose first `whole` columns (what a user types back: a run's name, a job's
    id and name) are never cut: they keep one line and the other columns wrap beside them,
    each keeping its longest word (`fit_widths`; a column in `names`, a run's name, its
    longest word however long; a column in `unbroken`, a date and time, its whole text).
    Where those do not fit beside them, the rows are `stacked` instead. No borders: at 80
    columns their cells are better spent on the text."""
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    cells = [[column, *(row[n] for row in rows)] for n, column in enumerate(columns)]
    natural = [max(map(cell_len, texts)) for texts in cells]
    words = [max(cell_len(w) for text in texts for w in [*text.split(), ""]) for texts in cells]
    least = [w if n in names else min(WORD_CAP, w) for n, w in enumerate(words)]
    least = [natural[n] if n in unbroken else w for n, w in enumerate(least)]
    room = width - 2 * (len(columns) - 1) - sum(natural[:whole])  # 2: the gap between columns
    if room < sum(least[whole:]):  # the other columns would fold inside their words
        return stacked(title, columns, rows, whole, width)
    widths = natural[:whole] + fit_widths(natural[whole:], least[whole:], room)
    table = Table(title=title, box=None, padding=(0, 1), pad_edge=False, header_style="bold")
    for n, column in enumerate(columns):
        table.add_column(column, no_wrap=n < whole, overflow="fold", width=widths[n])
    for row in rows:
        table.add_row(*map(Text, row))  # text, never markup: an error may hold [brackets]
    return table


def stacked(title: str, columns: list[str], rows: list[list[str]], whole: int, width: int):
    """A listing too wide for the terminal: each row's whole columns on a line of their own,
    then its other columns as `title value` pairs, indented, a line broken only between
    pairs (rich breaks at any space, a non-breaking one too)."""
    from rich.cells import cell_len
    from rich.console import Group
    from rich.text import Text

    lines = [Text(title, style="italic")] if title else []
    for row in rows:
        lines.append(Text("  ".join(row[:whole]), style="bold"))
        line = ""
        for c, v in zip(columns[whole:], row[whole:], strict=True):
            pair = f"{c} {v}" if v else ""
            if pair and line and cell_len(f"  {line} · {pair}") > width:
                lines.append(Text(f"  {line}"))
                line = ""
            line = f"{line} · {pair}" if line and pair else line or pair
        lines.append(Text(f"  {line}"))
    return Group(*lines)


def fit_widths(natural: list[int], least: list[int], room: int) -> list[int]:
    """Column widths within `room` cells (at least the sum of `least`): each its natural width
    when all fit, else its longest word (`least`) and the rest shared in proportion to what
    each still wants."""
    least = [min(a, b) for a, b in zip(least, natural, strict=True)]
    if sum(natural) <= room:
        return natural
    want = [n - w for n, w in zip(natural, least, strict=True)]
    spare = room - sum(least)
    return [w + spare * more // sum(want) for w, more in zip(least, want, strict=True)]


def remove_run(args) -> int:
    from mlxlora import names, runlist, runs
    from mlxlora.errors import RunError

    path = runs.find_run(args.run)
    typed = names.normalize(args.run)
    if path.name != Path(args.run).name and typed not in (path.name, runs.given_name(path)):
        # a prefix finds a run to show, never one to delete
        raise RunError(f"{args.run}: give the whole name to delete {path.name}")
    in_workspace = path.resolve().parent == runs.runs_root().resolve()
    if not in_workspace and os.sep not in args.run and "/" not in args.run:
        # a bare name deletes a workspace run, never a same-named folder where you stand
        raise RunError(f"{args.run}: no workspace run of that name; give a path to delete {path}")
    runlist.delete_run(path)
    print(f"deleted run {path.name} ({path.resolve().parent})")
    return 0


def diagnosis_flag(path: Path) -> str:
    """The run's diagnosis flag as the TUI's Runs tab shows it, from the `diagnosis` events
    the run wrote (only those lines are parsed); "" when none."""
    from mlxlora import findings
    from mlxlora.events import Diagnosis, read_events_of
    from mlxlora.runs import RunPaths

    return findings.flag(read_events_of(RunPaths(path).events, Diagnosis))


def show_run(args) -> int:
    from mlxlora import config, runlist, runs
    from mlxlora.diagnosis import diagnose
    from mlxlora.events import Eval, Sample, once, read_events

    path = runs.find_run(args.run).resolve()
    info = runlist.run_info(path)
    paths = runs.RunPaths(path)
    cfg = config.load(paths.config)
    summary = runs.read_json(paths.summary)
    model_dir = runs.model_dir_of(paths, summary)
    events = once(read_events(paths.events))  # a step a resume trained again: once
    evals = [e for e in events if isinstance(e, Eval)]
    samples = [e for e in events if isinstance(e, Sample)]
    measured = runs.read_json(paths.eval) or None
    earlier = sorted(p.name for p in paths.evals.glob("*.json"))
    findings = [vars(f) for f in diagnose(events)]  # the trainer's, and any found since
    if args.json:
        shown = {
            "info": {**vars(info), "path": str(path)},
            "config": cfg.to_dict(),
            "model_dir": model_dir,
            "summary": summary,
            "evals": [e.to_dict() for e in evals],
            "samples": [e.to_dict() for e in samples],
            "eval": measured,
            "earlier_evals": earlier,
            "diagnosis": findings,
        }
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    _print_run(info, cfg, model_dir, paths, evals, samples, summary)
    _print_eval(measured, path)
    if earlier:  # a later evaluation replaced them as eval.json
        print(f"earlier evaluations in {paths.evals}: {', '.join(earlier)}")
    _print_diagnosis(findings)
    return 0


def _print_run(info, cfg, model_dir, paths, evals, samples, summary) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from mlxlora.experiments import setting_text
    from mlxlora.runs import ADAPTER_FILES

    console = Console(highlight=False, soft_wrap=True)  # paths and commands stay whole
    console.print(f"[bold]{escape(info.name)}[/]  {info.status}  step {info.step}")
    console.print(f"directory {escape(str(paths.root))}")
    console.print(f"model {escape(cfg.model)}: {escape(model_dir or NONE)}")
    if model_dir and (paths.adapters / ADAPTER_FILES[0]).exists():
        prompt = cfg.samples[0] if cfg.samples else "Hello"
        command = generate_command(model_dir, paths.adapters, prompt)
        console.print(f"  {escape(command)}")
    elif model_dir:  # the command would name an adapter that is not there
        console.print("  no trained adapter to try: the run kept no checkpoint past step 0")
    console.print("config (changes from the defaults):")
    for key, value in config_changes(cfg).items():  # as compare shows a setting
        console.print(f"  {key}: {escape(setting_text(value))}")
    table = Table(title="evaluations")
    for col in ("step", "epoch", "val loss", "perplexity", "best"):
        table.add_column(col)
    for e in evals:
        best = "*" if e.best else ""
        table.add_row(str(e.step), f"{e.epoch:.2f}", num(e.val_loss), f"{e.perplexity:.2f}", best)
    console.print(table)
    for s in samples:
        prompt, said = (escape(" ".join(t.split())) for t in (s.prompt, answer(s.answer)))
        console.print(f"[bold]{s.when} training[/] (step {s.step}) '{prompt}'\n  -> {said}")
    # a failed or killed run has none: the heading stood alone, over nothing
    console.print("summary:" if summary else "summary: none (written when a run finishes or stops)")
    for label, text in summary_rows(summary):
        console.print(f"  {label}: {escape(text)}")


def _print_eval(measured: dict | None, path: Path) -> None:
    from mlxlora.commands.eval import print_result
    from mlxlora.runs import run_argument

    if measured and measured.get("answers") is not None:
        print(f"eval ({measured.get('created', NONE)}):")
        print_result(measured)
    else:  # the command for this run (it said `mlxlora eval RUN`), as compare --pick gives it
        print(f"eval: none yet (`mlxlora eval {run_argument(path)}`)")


def _print_diagnosis(findings: list[dict]) -> None:
    if not findings:
        print("diagnosis: no problem found")
        return
    print("diagnosis:")
    for f in findings:
        print(f"  [{f['severity']}] {f['kind']} at step {f['step']}: {f['message']}")
        print(f"    try: {'; '.join(f['remedy'])}")
