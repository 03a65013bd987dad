"""The Merge dialog (key `m` on the Compare tab): the picked runs' adapters combined into one.

It runs `mlxlora merge RUN RUN ... --rank R [--weights W1,W2] --out DIR --json` as a child
process (the merge reads weight files through the backend: never in the app), then shows the
approximation error overall and for the worst layers, as the CLI prints them, or the child's
one-line error (adapters of different bases or targets are refused there). The merged adapter
goes to the workspace's `merged/<name>`.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Static

from mlxlora import names, runs
from mlxlora.commands.merge import summary_lines
from mlxlora.runview import read_config
from mlxlora.tui.widgets.child_dialog import ChildDialog
from mlxlora.tui.widgets.dialog import field


def merged_dir(name: str) -> Path:
    """Where the dialog writes a merged adapter named `name`."""
    return runs.home() / "merged" / names.normalize(name)


class MergeDialog(ChildDialog):
    """Rank, weights and output name; Merge starts the child, Escape stops it and closes."""

    DEFAULT_CSS = """
    MergeDialog #merge-log { height: auto; margin-top: 1; color: $text-muted; }
    MergeDialog #merge-log.-failed { color: $error; }
    """
    COMMAND = "merge"

    def __init__(self, picked: list[Path]):
        super().__init__()
        self.picked = picked

    def compose(self) -> ComposeResult:
        given = [runs.given_name(p) for p in self.picked]
        with Vertical():
            yield Static(Text.assemble(("Merge adapters: ", "bold"), ", ".join(given)))
            yield Static(
                "the weighted sum of their updates, cut back to the rank by SVD", classes="hint"
            )
            rank = str(_largest_rank(self.picked))
            yield field("Rank", Input(rank, type="integer", id="merge-rank"))
            yield field(
                "Weights",
                Input(placeholder="equal; or one per run, e.g. 0.7,0.3", id="merge-weights"),
            )
            yield field("Output name", Input(_suggested_name(given), id="merge-name"))
            with Horizontal(id="merge-buttons", classes="buttons"):
                yield Button("Merge", variant="primary", id="merge-start", compact=True)
                yield Button("Close (Esc)", id="merge-close", compact=True)
            yield Static("", id="merge-log")

    def on_mount(self) -> None:
        self.query_one("#merge-rank", Input).focus()

    @on(Button.Pressed, "#merge-start")
    @on(Input.Submitted)
    def start(self) -> None:
        if self.running:
            return  # one merge at a time
        rank = self.query_one("#merge-rank", Input).value.strip()
        name = self.query_one("#merge-name", Input).value
        problem = names.name_problem(name)
        if not rank:
            self.show("error: give the merged adapter's rank", failed=True)
        elif problem:
            self.show(f"error: output name {name!r}: {problem}", failed=True)
        else:
            self.run_child("merging…", self._arguments(rank, merged_dir(name)))

    def _arguments(self, rank: str, out: Path) -> list[str]:
        weights = self.query_one("#merge-weights", Input).value.strip()
        args = [*map(str, self.picked), "--rank", rank, "--out", str(out), "--json"]
        return args + (["--weights", weights] if weights else [])

    def result_lines(self, result: dict) -> list[str]:
        return summary_lines(result)


def _largest_rank(picked: list[Path]) -> int:
    """The highest rank among the runs: merging at it keeps what the largest one holds."""
    loras = [read_config(runs.RunPaths(p).config).get("lora") or {} for p in picked]
    ranks = [lora.get("rank") for lora in loras if isinstance(lora, dict)]
    return max((r for r in ranks if isinstance(r, int)), default=8)


def _suggested_name(given: list[str]) -> str:
    """`a-b-merged` from the runs' names, or `merged` when that is no valid name."""
    name = "-".join([*given, "merged"])
    return "merged" if names.name_problem(name) else name
