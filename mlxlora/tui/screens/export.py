"""The Export dialog (key `e` on the Runs tab): the selected run as an Ollama model.

It runs `mlxlora export RUN --ollama NAME ... --json` as a child process (the app never loads
a model) and shows each stage as the child reports it, then what was written with sizes and
whether Ollama has the model, or the child's one-line error. Escape cancels a running export
(the child removes its temporary files) and closes the dialog.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Select, Static

from mlxlora.errors import ExportError
from mlxlora.export.modelfile import ollama_model_name
from mlxlora.memory import fmt_bytes
from mlxlora.runs import given_name
from mlxlora.tui.children import Child
from mlxlora.tui.widgets.dialog import Dialog, field

QUANTIZATIONS = ("f16", "q8_0", "q4_0", "q4_k_m")
KINDS = (("automatic (adapter-only on an ollama: base)", ""), ("full model", "--full"),
         ("adapter only", "--adapter-only"))  # fmt: skip


class ExportDialog(Dialog[None]):
    """Name, quantization, system prompt and kind; Export starts the child, Escape stops it."""

    DEFAULT_CSS = """
    ExportDialog #export-log { height: auto; margin-top: 1; color: $text-muted; }
    ExportDialog #export-log.-failed { color: $error; }
    """
    BINDINGS = [Binding("escape", "close", "Cancel / close")]

    def __init__(self, run: Path):
        super().__init__()
        self.run = run
        self.lines: list[str] = []
        self.child: Child | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text.assemble(("Export to Ollama: ", "bold"), self.run.name))
            yield field("Ollama name", Input(_suggested_name(self.run), id="export-name"))
            yield field(
                "Quantize",
                Select(
                    [(q, q) for q in QUANTIZATIONS],
                    value="f16",
                    allow_blank=False,
                    id="export-quantize",
                ),
            )
            yield field("System", Input(placeholder="optional system prompt", id="export-system"))
            yield field("Kind", Select(KINDS, value="", allow_blank=False, id="export-kind"))
            with Horizontal(id="export-buttons", classes="buttons"):
                yield Button("Export", variant="primary", id="export-start", compact=True)
                yield Button("Close (Esc)", id="export-close", compact=True)
            yield Static("", id="export-log")  # fmt: skip

    def on_mount(self) -> None:
        self.query_one("#export-name", Input).focus()

    @on(Button.Pressed, "#export-start")
    @on(Input.Submitted)
    def start(self) -> None:
        if self.child is not None:
            return  # one export at a time
        name = self.query_one("#export-name", Input).value
        try:
            ollama_model_name(name)  # the child refuses it too; say so before starting
        except ExportError as exc:
            self.notify(str(exc), severity="error")
            return
        self._export(self._arguments(name))

    @on(Button.Pressed, "#export-close")
    def action_close(self) -> None:
        self.workers.cancel_group(self, "export")  # stops the child, see _export
        self.dismiss(None)

    def _arguments(self, name: str) -> list[str]:
        args = [str(self.run), "--ollama", name, "--json", "--quantize",
                str(self.query_one("#export-quantize", Select).value)]  # fmt: skip
        system = self.query_one("#export-system", Input).value
        kind = self.query_one("#export-kind", Select).value
        return args + (["--system", system] if system else []) + ([kind] if kind else [])

    @work(exclusive=True, group="export", exit_on_error=False)
    async def _export(self, args: list[str]) -> None:
        self.query_one("#export-start", Button).disabled = True
        self._show(["starting…"], failed=False)
        child = self.child = await Child.start("export", *args)
        try:
            done = await self._follow(child)
            code = await child.wait()
            if code or done is None:
                self._log(f"error: {child.error_line()}", failed=True)
            else:
                self._log_result(done)
        except asyncio.CancelledError:
            self._log("cancelled", failed=True)
            raise
        finally:
            await child.stop()  # cancelled or not, nothing is left running
            self.child = None
            if self.is_attached:  # not when Escape closed the dialog
                self.query_one("#export-start", Button).disabled = False

    async def _follow(self, child: Child) -> dict | None:
        self.lines = []
        async for event in child.json_lines():
            if event.get("done"):
                return event
            self._log(f"{event.get('stage')}: {event.get('message')}")
        return None

    def _log_result(self, done: dict) -> None:
        self._log(f"wrote {done['out']}")
        for file, size in done.get("files", {}).items():
            self._log(f"  {file:<14} {fmt_bytes(size):>10}")
        if done.get("created"):
            self._log(f"Ollama has it: ollama run {done['name']}")
        else:
            self._log(f"ollama is not on PATH; to add the model run:\n  {done['command']}")

    def _log(self, line: str, failed: bool = False) -> None:
        self._show([*self.lines, line], failed)

    def _show(self, lines: list[str], failed: bool) -> None:
        self.lines = lines
        if not self.is_attached:
            return
        log = self.query_one("#export-log", Static)
        log.update(Text("\n".join(lines)))
        log.set_class(failed, "-failed")
        self.call_after_refresh(self.query_one(Vertical).scroll_end, animate=False)  # the news


def _suggested_name(run: Path) -> str:
    """The run's own name as an Ollama name, or nothing when it has no usable letter."""
    try:
        return ollama_model_name(given_name(run))
    except ExportError:
        return ""
