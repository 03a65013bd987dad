"""The Fuse dialog (key `f` on the Runs tab): the selected run's adapter merged into its base
model, a normal HF-format directory that mlx-lm and transformers load (`mlxlora fuse`).

It runs `mlxlora fuse RUN [--out DIR] [--dequantize | --keep-quantized] --json` as a child
process (the merge loads the model: never in the app), then shows the directory written with
its files, or the child's one-line error. Escape cancels a running fuse (the child removes its
temporary directory) and closes the dialog.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Select, Static

from mlxlora.export.fuse import FUSED_DIR
from mlxlora.memory import fmt_bytes
from mlxlora.tui.widgets.child_dialog import ChildDialog
from mlxlora.tui.widgets.dialog import field

# A quantized base's weights: the flag each choice passes (none: fuse decides).
WEIGHTS = [
    ("auto: float where the base's bits lose the adapter", ""),
    ("float (--dequantize)", "--dequantize"),
    ("the base's bits (--keep-quantized)", "--keep-quantized"),
]


class FuseDialog(ChildDialog):
    """Output directory and weights; Fuse starts the child, Escape stops it and closes."""

    DEFAULT_CSS = """
    FuseDialog #fuse-log { height: auto; margin-top: 1; color: $text-muted; }
    FuseDialog #fuse-log.-failed { color: $error; }
    """
    COMMAND = "fuse"

    def __init__(self, run: Path):
        super().__init__()
        self.run = run

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
                Select(WEIGHTS, value="", allow_blank=False, compact=True, id="fuse-weights"),
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
            self.run_child(
                "fusing… (the base model is loaded and written whole)", self._arguments()
            )

    def _arguments(self) -> list[str]:
        out = self.query_one("#fuse-out", Input).value.strip()
        weights = self.query_one("#fuse-weights", Select).value
        args = [str(self.run), "--json"] + (["--out", out] if out else [])
        return args + ([weights] if weights else [])

    def result_lines(self, result: dict) -> list[str]:
        return _written(result)


def _written(result: dict) -> list[str]:
    """The directory and its files with sizes, as `mlxlora fuse --json` reports them."""
    files = result.get("files", {})
    width = max(map(len, files), default=0)
    return (
        [f"wrote {result['out']}"]
        + [f"  {name:<{width}} {fmt_bytes(size):>10}" for name, size in files.items()]
        + [f"warning: {text}" for text in result.get("warnings", [])]
    )
