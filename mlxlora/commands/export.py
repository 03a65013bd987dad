"""`mlxlora export`: a finished run as a model Ollama serves (GGUF, Modelfile, ollama create)."""

from __future__ import annotations

import json
import signal
import sys

from mlxlora.commands import path_arg


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a run for Ollama: GGUF + Modelfile, then `ollama create`",
        description="Fuse the run's adapter, write a GGUF and a Modelfile (chat TEMPLATE and stop "
        "tokens translated from the model's chat template) and, when `ollama` is on PATH, run "
        "`ollama create NAME -f Modelfile` (otherwise print that command). "
        "Example: mlxlora export my-run --ollama my-model --quantize q8_0",
    )
    p.add_argument("run", metavar="RUN", help="a run (name, name prefix or directory)")
    p.add_argument(
        "--ollama",
        metavar="NAME",
        required=True,
        help="the Ollama model name (made valid: lowercase ASCII, '-' for the rest)",
    )
    p.add_argument(
        "--quantize",
        default="f16",
        choices=("f16", "q8_0", "q4_0", "q4_k_m"),
        help="GGUF weight type (default f16; q4_k_m needs the `export` extra)",
    )
    p.add_argument("--system", metavar="TEXT", help="a default system prompt (Modelfile SYSTEM)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument(
        "--adapter-only",
        dest="adapter_only",
        action="store_true",
        default=None,
        help="a GGUF LoRA adapter on the base (default for an ollama: base)",
    )
    kind.add_argument(
        "--full",
        dest="adapter_only",
        action="store_false",
        help="one GGUF with the adapter merged in (default for other bases)",
    )
    p.add_argument(
        "--out",
        type=path_arg,
        metavar="DIR",
        help="where to write (default: RUN/export/NAME); only an earlier export "
        "that nobody added to or edited is replaced",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print JSON lines: {"stage": ..., "message": ...} as it goes, then '
        '{"done": true, "name", "out", "files", "command", "created"}',
    )
    p.set_defaults(func=run)


def run(args) -> int:

    from mlxlora.export.to_ollama import ExportRequest, export_ollama
    from mlxlora.runs import find_run

    # SIGTERM (the studio's Cancel) unwinds like Ctrl-C, so the temporary files are removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    request = ExportRequest(
        find_run(args.run),
        args.ollama,
        args.quantize,
        args.system,
        args.adapter_only,
        args.out.expanduser() if args.out else None,
    )
    result = export_ollama(request, _reporter(args.json))
    if args.json:
        print(json.dumps({"done": True, **_summary(result)}, ensure_ascii=False), flush=True)
    else:
        _print_result(result)
    return 0


def _reporter(as_json: bool):
    def report(stage: str, message: str) -> None:
        if as_json:
            print(json.dumps({"stage": stage, "message": message}, ensure_ascii=False), flush=True)
        else:
            print(f"{stage}: {message}", file=sys.stderr, flush=True)

    return report


def _summary(result) -> dict:
    return {
        "name": result.name,
        "out": str(result.out),
        "files": result.files,
        "command": result.command,
        "created": result.created,
    }


def _print_result(result) -> None:
    from mlxlora.memory import fmt_bytes

    print(f"wrote {result.out}")
    for name, size in result.files.items():
        print(f"  {name:<14} {fmt_bytes(size):>10}")
    if result.created:
        print(f"ollama: created {result.name}; try: ollama run {result.name}")
    else:
        print(f"ollama is not on PATH; to add the model run:\n  {result.command}")
