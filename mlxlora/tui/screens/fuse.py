"""The Fuse dialog (key `f` on the Runs tab): the selected run's adapter merged into its base
model, a normal HF-format directory that mlx-lm and transformers load (`mlxlora fuse`).

It runs `mlxlora fuse RUN [--out DIR] [--dequantize] --json` as a child process (the merge
loads the model: never in the app), then shows the directory written with its files, or the
child's one-line error. Escape cancels a running fuse (the child removes its temporary
directory) and closes the dialog.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Input, Static

from mlxlora.export.fuse import FUSED_DIR
from mlxlora.memory import fmt_bytes
from mlxlora.tui.children import Child
from mlxlora.tui.widgets.dialog import Dialog, field


class FuseDialog(Dialog[None]):
    """Output directory and weights; Fuse starts the child, Escape stops it and closes."""

    DEFAULT_CSS = """
    FuseDialog #fuse-log { height: auto; margin-top: 1; color: $text-muted; }
    FuseDialog #fuse-log.-failed { color: $error; }
    """
    BINDINGS = [Binding("escape", "close", "Cancel / close")]

    def __init__(self, run: Path):
        super().__init__()
        self.run = run
        self.running = False

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text.assemble(("Fuse into a model directory: ", "bold"), self.run.name))
            yield Static(
                "the base model with the adapter merged in (safetensors, config.json, "
                "tokenizer), for mlx-lm and transformers",
                classes="hint",
            )
            placeholder = f"a new directory; empty: the run's own {FUSED_DIR}/"
            yield field("Output", Input(placeholder=placeholder, id="fuse-out"))
            yield field(
                "Weights",
                Checkbox("float, also for a quantized base (--dequantize)", id="fuse-dequantize"),
            )
            with Horizontal(classes="buttons"):
                yield Button("Fuse", variant="primary", id="fuse-start", compact=True)
                yield Button("Close (Esc)", id="fuse-close", compact=True)
            yield Static("", id="fuse-log")

    def on_mount(self) -> None:
        self.query_one("#fuse-start", Button).focus()  # Enter: fuse to the default place

    @on(Button.Pressed, "#fuse-start")
    @on(Input.Submitted)
    def start(self) -> None:
        if not self.running:  # one fuse at a time
            self._fuse(self._arguments())

    def _arguments(self) -> list[str]:
        out = self.query_one("#fuse-out", Input).value.strip()
        dequantize = self.query_one("#fuse-dequantize", Checkbox).value
        args = [str(self.run), "--json"] + (["--out", out] if out else [])
        return args + (["--dequantize"] if dequantize else [])

    @on(Button.Pressed, "#fuse-close")
    def action_close(self) -> None:
        self.workers.cancel_group(self, "fuse")  # stops the child, see _fuse
        self.dismiss(None)

    @work(exclusive=True, group="fuse", exit_on_error=False)
    async def _fuse(self, args: list[str]) -> None:
        self.running = True
        self.query_one("#fuse-start", Button).disabled = True
        self._show("fusing… (the base model is loaded and written whole)")
        child = await Child.start("fuse", *args)
        try:
            result = await child.json()  # read whole: a full stdout pipe would block the child
        except ValueError:
            result = None
        except asyncio.CancelledError:
            self._show("cancelled", failed=True)
            raise
        finally:
            await child.stop()  # cancelled or not, nothing is left running
            self.running = False
            if self.is_attached:  # not when Escape closed the dialog
                self.query_one("#fuse-start", Button).disabled = False
        if result is None:
            self._show(f"error: {child.error_line()}", failed=True)
        else:
            self._show("\n".join(_written(result)))

    def _show(self, text: str, failed: bool = False) -> None:
        if not self.is_attached:
            return
        log = self.query_one("#fuse-log", Static)
        log.update(Text(text))
        log.set_class(failed, "-failed")
        self.call_after_refresh(self.query_one(Vertical).scroll_end, animate=False)  # the news


def _written(result: dict) -> list[str]:
    """The directory and its files with sizes, as `mlxlora fuse --json` reports them."""
    files = result.get("files", {})
    width = max(map(len, files), default=0)
    return [f"wrote {result['out']}"] + [
        f"  {name:<{width}} {fmt_bytes(size):>10}" for name, size in files.items()
    ]
