"""`mlxlora data`: import, list, show (statistics) and remove workspace datasets.

Imports rich inside the handlers and transformers only for `show --model`, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mlxlora.errors import DataError, ModelError

TYPES = ("instruction", "chat", "completion", "text")


def register(sub) -> None:
    p = sub.add_parser(
        "data",
        help="import, list, inspect and remove datasets",
        description="Datasets live in the workspace ($MLXLORA_HOME/datasets) by name.",
    )
    p.set_defaults(func=lambda args: p.print_help() or 0)
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")

    imp = dsub.add_parser(
        "import",
        help="validate a JSON/JSONL file and store it by name",
        description="Validate every record of FILE (a JSON array or JSON Lines), then store it. "
        "Formats: instruction (instruction, input, output), chat (messages), completion "
        "(prompt, completion), text (text).",
    )
    imp.add_argument("file", metavar="FILE", help="a .json (array) or .jsonl file")
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
    show.add_argument("--model", metavar="MODEL", help="count tokens with this model's tokenizer")
    show.add_argument(
        "--max-length", type=int, default=2048, help="flag records longer than this (tokens)"
    )
    show.add_argument(
        "--terms", metavar="medical|FILE", help="domain terms: a bundled list or a file"
    )
    show.add_argument("--json", action="store_true", help="print the analysis as JSON")
    show.set_defaults(func=cmd_show)

    rm = dsub.add_parser("rm", help="remove a stored dataset")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(func=cmd_rm)


# --- handlers -------------------------------------------------------------------------------


def _console():
    from rich.console import Console

    return Console(highlight=False)


def cmd_import(args: argparse.Namespace) -> int:
    from mlxlora.data import store

    name = args.name or store.stem_name(args.file)
    meta = store.import_dataset(args.file, name, args.description, kind=args.type)
    _console().print(
        f"imported [bold]{meta.name}[/]: {meta.records} {meta.type} records "
        f"(sha256 {meta.sha256[:12]})"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from mlxlora.data import store

    console = _console()
    found = store.list_datasets()
    if not found:
        console.print("no datasets yet; add one with `mlxlora data import FILE --name NAME`")
        return 0
    table = Table(title=f"datasets in {store.datasets_root()}")
    table.add_column("name", style="bold")
    table.add_column("type")
    table.add_column("records", justify="right")
    table.add_column("description")
    table.add_column("created")
    for m in found:
        table.add_row(escape(m.name), m.type, str(m.records), escape(m.description), m.created[:19])
    console.print(table)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from mlxlora.data import store

    store.remove_dataset(args.name)
    _console().print(f"removed dataset [bold]{args.name}[/]")
    return 0


def load_tokenizer(model_ref: str):
    """The tokenizer of any model reference (builtin:, hub id, directory)."""
    from mlxlora.models.resolve import resolve_model

    path = resolve_model(model_ref)
    # Only the tokenizer is needed: silence transformers' "PyTorch was not found" advisory.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ModelError(
            "--model needs the `transformers` package (pip install transformers)"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's directory
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{model_ref}: cannot load a tokenizer: {first}") from None


def _load_for_show(ref: str):
    """(title, kind, records) of a stored dataset, or of a file without storing it."""
    from mlxlora.data import formats, store

    if store.NAME_RE.fullmatch(ref) and store.exists(ref):
        meta, records = store.load_dataset(ref)
        return meta.name, meta.type, records, meta
    if Path(ref).expanduser().is_file():
        records = formats.load_records(Path(ref).expanduser())
        kind = formats.detect_format(records, ref)
        formats.validate(records, kind, ref)
        return ref, kind, records, None
    if store.looks_like_file(ref):
        raise DataError(f"{ref}: file not found (and no dataset of that name)")
    store.get_meta(ref)  # raises: unknown dataset, listing the available ones
    raise AssertionError("unreachable")


def cmd_show(args: argparse.Namespace) -> int:
    from mlxlora.data import analysis

    if args.max_length is not None and args.max_length < 1:
        raise DataError(f"--max-length: {args.max_length} is not allowed (>= 1)")
    title, kind, records, meta = _load_for_show(args.name)
    terms = analysis.load_terms(args.terms) if args.terms else None
    tokenizer = load_tokenizer(args.model) if args.model else None
    report = analysis.analyze(
        records, kind, tokenizer=tokenizer, max_length=args.max_length, terms=terms
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


def render(report: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    meta = report.get("meta")
    head = f"[bold]{escape(report['name'])}[/]  {report['type']}, {report['records']:,} records"
    if meta and meta.get("description"):
        head += f"  - {escape(meta['description'])}"
    console.print(head)

    stats = Table(title="length per record", title_justify="left")
    stats.add_column("")
    for col in ("mean", "median", "p95", "min", "max"):
        stats.add_column(col, justify="right")
    for unit in ("chars", "tokens"):
        s = report.get(unit)
        if s:
            stats.add_row(unit, *(_num(s[k]) for k in ("mean", "median", "p95", "min", "max")))
    if not report.get("tokens"):
        stats.caption = "tokens: pass --model MODEL_DIR"
    console.print(stats)

    hist = report["histogram"]
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

    too_long = report.get("too_long")
    if too_long is not None:
        line = f"longer than {too_long['max_length']:,} tokens: {too_long['count']:,}"
        if too_long["count"]:
            line += f" (records {', '.join(map(str, too_long['indices']))}"
            line += ", ...)" if too_long["count"] > len(too_long["indices"]) else ")"
            line = f"[yellow]{line}[/]"
        console.print(line)

    dup = report["duplicates"]
    line = f"exact duplicates: {dup['count']:,}"
    if dup["count"]:
        pairs = ", ".join(f"{b} repeats {a}" for a, b in dup["pairs"])
        more = ", ..." if dup["count"] > len(dup["pairs"]) else ""
        line = f"[yellow]{line}[/] (record {pairs}{more})"
    console.print(line)

    td = report.get("term_density")
    if td is not None:
        console.print(
            f"[bold]domain terms[/] ({escape(td['source'])}, {td['terms']} terms): "
            f"{td['per_1000_chars']:.2f} hits per 1,000 answer characters; "
            f"{td['share_with_term']:.0%} of records have at least one "
            f"({td['hits']:,} hits in {td['answer_chars']:,} characters)"
        )
        if td["top"]:
            console.print("  top: " + ", ".join(f"{escape(t)} {c}" for t, c in td["top"]))
