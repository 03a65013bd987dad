"""`mlxlora data`: import, list, show (statistics) and remove workspace datasets.

Imports rich inside the handlers and transformers only for `show --model`, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlxlora.commands import ConfigFileErrors, actions, nonblank_arg
from mlxlora.errors import DataError

TYPES = ("instruction", "chat", "completion", "text")
DEFAULT_MAX_LENGTH = 2048
MAX_BOILERPLATE_SHOWN = 5
TOKENS_HINT = "tokens: pass --model REF (e.g. builtin:smollm2-135m) or --config CONFIG"


def register(sub) -> None:
    p = sub.add_parser(
        "data",
        help="import, list, inspect and remove datasets",
        description="Datasets live in the workspace ($MLXLORA_HOME/datasets) by name.",
    )
    dsub = actions(p, "data_command")

    imp = dsub.add_parser(
        "import",
        help="validate a JSON/JSONL file and store it by name",
        description="Validate every record of FILE (a JSON array or JSON Lines), then store it. "
        "Formats: instruction (instruction, input, output), chat (messages), completion "
        "(prompt, completion), text (text).",
    )
    imp.add_argument(
        "file", type=nonblank_arg, metavar="FILE", help="a .json (array) or .jsonl file"
    )
    imp.add_argument("--name", help="dataset name (default: the file name without extension)")
    imp.add_argument("--description", default="", help="a short description")
    imp.add_argument("--type", choices=TYPES, help="record format (default: detected from keys)")
    imp.set_defaults(func=cmd_import)

    ls = dsub.add_parser("list", help="list stored datasets")
    ls.set_defaults(func=cmd_list)

    show = dsub.add_parser(
        "show",
        help="statistics of a dataset: lengths, histogram, duplicates, domain terms",
        description="NAME is a stored dataset, or a .json/.jsonl file (analysed, not stored).",
    )
    show.add_argument("name", metavar="NAME", help="dataset name or file")
    show.add_argument(
        "--config",
        metavar="CONFIG",
        help="take --max-length and --model from this training config (data.max_length, model)",
    )
    show.add_argument(
        "--model",
        type=nonblank_arg,  # blank read as left out: no token counts, without a word
        metavar="REF",
        help="count tokens with this model's tokenizer (any model ref)",
    )
    show.add_argument(
        "--max-length",
        type=int,
        help=f"flag records longer than this many tokens (default: the config's, else "
        f"{DEFAULT_MAX_LENGTH})",
    )
    show.add_argument(
        "--terms",
        type=nonblank_arg,
        metavar="medical|FILE",
        help="domain terms: a bundled list or a file",
    )
    show.add_argument("--json", action="store_true", help="print the analysis as JSON")
    show.set_defaults(func=cmd_show)

    rm = dsub.add_parser("rm", help="remove a stored dataset")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--force", action="store_true", help="remove it even if runs use it")
    rm.set_defaults(func=cmd_rm)


# --- handlers -------------------------------------------------------------------------------


def _console():
    from rich.console import Console

    return Console(highlight=False)


def cmd_import(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from mlxlora.data import store

    # Only an omitted --name defaults to the file's stem; `--name ''` is refused as empty.
    name = store.stem_name(args.file) if args.name is None else args.name
    meta, warnings = store.import_dataset(args.file, name, args.description, kind=args.type)
    console = _console()
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print(
        f"imported [bold]{escape(meta.name)}[/]: {meta.records} {meta.type} records "
        f"(sha256 {meta.sha256[:12]})"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from mlxlora.commands.runs import listing_table
    from mlxlora.data import store

    console = _console()
    found = store.list_datasets()
    if not found:
        console.print("no datasets yet; add one with `mlxlora data import FILE --name NAME`")
        return 0
    # as `runs list`: the name whole, as it is typed back (a bordered table cut
    # 医療専門知識データセット to `医療専門知識デ…` at 80 columns beside its description)
    columns = ["name", "type", "records", "created", "description"]
    rows = [
        [m.name, m.type, str(m.records), m.created[:16].replace("T", " "), m.description]
        for m in found
    ]
    title = f"datasets in {store.datasets_root()}"
    # the date and time on one line (`2026-11-27` over `10:18` read as two values)
    console.print(listing_table(title, columns, rows, console.width, unbroken=(3,)))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from mlxlora.data import store

    meta = store.remove_dataset(args.name, force=args.force)
    _console().print(f"removed dataset [bold]{escape(meta.name)}[/]")
    return 0


def load_tokenizer(model_ref: str):
    """The tokenizer of any model reference (builtin:, hub id, directory)."""
    from mlxlora.models.info import tokenizer_of
    from mlxlora.models.resolve import resolve_model

    return tokenizer_of(resolve_model(model_ref), model_ref)


def _load_for_show(ref: str):
    """(title, kind, records) of a stored dataset, or of a file without storing it."""
    from mlxlora.data import formats, refs, store, validation

    if store.exists(ref):
        meta, records = store.load_dataset(ref)
        return meta.name, meta.type, records, meta
    if Path(ref).expanduser().is_file():
        records = formats.load_records(Path(ref).expanduser())
        kind = formats.detect_format(records, ref)
        validation.validate(records, kind, ref)
        return ref, kind, records, None
    if refs.looks_like_file(ref):
        raise refs.missing_file(ref)
    store.get_meta(ref)  # raises: unknown dataset, listing the available ones
    raise AssertionError("unreachable")


def _length_and_model(args: argparse.Namespace) -> tuple[int, str | None]:
    """(max_length, model ref) for `data show`: the flags, else the config's, else defaults."""
    max_length, model = DEFAULT_MAX_LENGTH, None
    if args.config:
        from mlxlora import config

        cfg = config.load(args.config)
        max_length, model = cfg.data.max_length, cfg.model
    if args.max_length is not None:
        if args.max_length < 1:
            raise DataError(f"--max-length: {args.max_length} is not allowed (>= 1)")
        max_length = args.max_length
    return max_length, args.model or model


def cmd_show(args: argparse.Namespace) -> int:
    from mlxlora.data import analysis

    max_length, model = _length_and_model(args)
    title, kind, records, meta = _load_for_show(args.name)
    terms = analysis.load_terms(args.terms) if args.terms else None
    # a model the config names and that is not there: the config named, as `train` names it
    with ConfigFileErrors(None if args.model else args.config):
        tokenizer = load_tokenizer(model) if model else None
    report = analysis.analyze(
        records, kind, tokenizer=tokenizer, max_length=max_length, terms=terms
    )
    report["name"] = title
    if meta is not None:
        report["meta"] = meta.to_dict()
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0
    render(report, _console())
    return 0


# --- rendering ------------------------------------------------------------------------------


def _num(x) -> str:
    return f"{x:,.1f}" if isinstance(x, float) else f"{x:,}"


def _records(numbers: list[int], count: int) -> str:
    """`3, 7` or `3, 7, ...` when more than the listed numbers exist."""
    return ", ".join(map(str, numbers)) + (", ..." if count > len(numbers) else "")


def render(report: dict, console, tokens_hint: str = TOKENS_HINT) -> None:
    """`data show`'s text view of an `analysis.analyze` report (readable at 80 columns);
    `tokens_hint` says how to get token counts where there are none."""
    from rich.markup import escape

    meta = report.get("meta")
    head = f"[bold]{escape(report['name'])}[/]  {report['type']}, {report['records']:,} records"
    console.print(head)
    if meta and meta.get("description"):
        # a line of its own: after the head a Japanese description (no spaces to break at)
        # wrapped whole to the next line, leaving the head ending in a dangling "  -"
        console.print(f"  {escape(meta['description'])}")
    _render_lengths(report, console, tokens_hint)
    _render_histogram(report["histogram"], console)
    _render_repeats(report, console)
    if report.get("term_density") is not None:
        _render_terms(report["term_density"], console)


def _render_lengths(report: dict, console, tokens_hint: str) -> None:
    from rich.table import Table

    stats = Table(title="length per record", title_justify="left")
    stats.add_column("")
    for col in ("mean", "median", "p95", "min", "max"):
        stats.add_column(col, justify="right")
    for unit in ("chars", "tokens"):
        s = report.get(unit)
        if s:
            stats.add_row(unit, *(_num(s[k]) for k in ("mean", "median", "p95", "min", "max")))
    console.print(stats)
    if not report.get("tokens"):
        console.print(tokens_hint)
    capped = report["analysed_chars"]
    if report.get("tokens") and capped["longer"]:
        console.print(
            f"tokens counted on the first {capped['cap']:,} characters of a record "
            f"({capped['longer']:,} longer)"
        )
    too_long = report.get("too_long")
    if too_long is not None:
        line = f"longer than {too_long['max_length']:,} tokens: {too_long['count']:,}"
        if too_long["count"]:
            line = f"[yellow]{line}[/] (records {_records(too_long['records'], too_long['count'])})"
        console.print(line)


def _render_histogram(hist: dict, console) -> None:
    bins = hist["bins"]
    top = max(b["count"] for b in bins) or 1
    width = 40
    console.print(f"[bold]histogram[/] ({hist['unit']} per record)")
    label_w = max(len(f"{b['lo']:,}-{b['hi']:,}") for b in bins)
    for b in bins:
        label = f"{b['lo']:,}-{b['hi']:,}".rjust(label_w)
        bar = "█" * round(width * b["count"] / top)
        if b["count"] and not bar:
            bar = "▏"
        console.print(f"  {label} │{bar} {b['count']:,}")


def _render_repeats(report: dict, console) -> None:
    from rich.markup import escape

    for key, what in (("duplicates", "exact duplicates"), ("near_duplicates", "near duplicates")):
        dup = report[key]
        line = f"{what}: {dup['count']:,}"
        if dup["count"]:
            pairs = ", ".join(f"{b} repeats {a}" for a, b in dup["pairs"])
            more = ", ..." if dup["count"] > len(dup["pairs"]) else ""
            line = f"[yellow]{line}[/] (record {pairs}{more})"
        console.print(line)
    common = report["boilerplate"]
    console.print(
        f"boilerplate sentences: {len(common):,}" + (" (share of records)" if common else "")
    )
    for b in common[:MAX_BOILERPLATE_SHOWN]:
        console.print(
            f"  {b['share']:4.0%}  {escape(b['text'])}", no_wrap=True, overflow="ellipsis"
        )


def _render_terms(td: dict, console) -> None:
    from rich.markup import escape

    console.print(
        f"[bold]domain terms[/] ({escape(td['source'])}, {td['terms']} terms): "
        f"{td['per_1000_chars']:.2f} hits per 1,000 answer characters"
    )
    console.print(
        f"  {td['share_with_term']:.0%} of records have at least one "
        f"({td['hits']:,} hits in {td['answer_chars']:,} characters)"
    )
    rest = td.get("without_boilerplate")
    if rest is not None:
        repeated = td["hits"] - rest["hits"]
        share = repeated / td["hits"] if td["hits"] else 0.0
        console.print(
            f"  {td['hits']:,} hits, {repeated:,} of them ({share:.0%}) in boilerplate sentences"
        )
        console.print(
            f"  without boilerplate: {rest['per_1000_chars']:.2f} per 1,000 characters, "
            f"{rest['share_with_term']:.0%} of records"
        )
    if td["top"]:
        console.print("  top: " + ", ".join(f"{escape(t)} {c}" for t, c in td["top"]))
