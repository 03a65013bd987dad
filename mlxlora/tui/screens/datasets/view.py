"""What the Datasets tab shows of one dataset: `data show`'s analysis and a record preview."""

from __future__ import annotations

import io

from rich.console import Console
from rich.text import Text

from mlxlora.data import analysis, store
from mlxlora.data.formats import normalize

PREVIEW_RECORDS = 100  # the first records shown; the analysis covers them all
PREVIEW_CHARS = 600  # of one message: a preview, not the whole record


def load_report(name: str, terms: tuple[str, list[str]] | None = None) -> tuple[dict, list[dict]]:
    """`data show NAME [--terms T] --json`'s report without token counts (no model needed),
    and the dataset's first PREVIEW_RECORDS records. `terms`: from `analysis.load_terms`."""
    meta, records = store.load_dataset(name)
    report = analysis.analyze(records, meta.type, terms=terms)
    report["name"] = meta.name
    report["meta"] = meta.to_dict()
    return report, records[:PREVIEW_RECORDS]


TOKENS_HINT = "tokens: type a model above and press Count tokens (e.g. builtin:smollm2-135m)"


def report_text(report: dict, width: int) -> Text:
    """The report as `mlxlora data show` prints it, `width` cells wide."""
    from mlxlora.commands.data import render

    out = io.StringIO()
    console = Console(
        file=out, width=width, force_terminal=True, color_system="truecolor", highlight=False
    )
    render(report, console, TOKENS_HINT)
    return Text.from_ansi(out.getvalue().rstrip("\n"))


def _clip(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + " …"


def preview_text(records: list[dict], kind: str) -> Text:
    """Records as training sees them (normalized: role and content), numbered from 1."""
    out = Text()
    for number, record in enumerate(records, 1):
        out.append(f"record {number}\n", style="bold underline")
        normalized = normalize(record, kind)
        if "text" in normalized:
            out.append(_clip(normalized["text"]) + "\n")
        for message in normalized.get("messages", []):
            out.append(f"{message['role']}: ", style="bold")
            out.append(_clip(message["content"]) + "\n")
        out.append("\n")
    return out
