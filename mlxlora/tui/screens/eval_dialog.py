"""The Evaluate dialog (key `e` on the Runs tab): what `mlxlora eval RUN` measures, chosen
before it starts: the dataset (`--dataset`; by default the run's own validation split), the
answers sampled per question for the consistency score (`--consistency K`) and whether the
base model is measured too (`--base`). Enter with the defaults evaluates as `eval RUN --base`.
The Runs tab runs the child; the dialog only asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Input, Select, Static

from mlxlora.data import store
from mlxlora.evaluate import Sampling
from mlxlora.tui.widgets.dialog import Dialog, field

OWN = ""  # the Select's value for the run's own validation split


@dataclass(frozen=True)
class EvalChoice:
    """What to evaluate the run on; `dataset` None: its own validation split."""

    dataset: str | None
    consistency: int
    base: bool

    def arguments(self, run: Path) -> list[str]:
        """`mlxlora eval`'s arguments for this choice, with --json."""
        args = ["eval", str(run), "--consistency", str(self.consistency)]
        args += ["--dataset", self.dataset] if self.dataset else []
        return args + (["--base"] if self.base else []) + ["--json"]

    def describe(self) -> str:
        """What the evaluation costs, said up front: a greedy answer per question plus K."""
        on = self.dataset or "its validation split"
        who = "tuned and base" if self.base else "tuned"
        return f"on {on} ({who}, 1 + {self.consistency} answers per question)"


class EvalDialog(Dialog[EvalChoice | None]):
    """Dismisses with the choice (Evaluate or Enter), or None (Escape)."""

    DEFAULT_CSS = """
    EvalDialog #eval-error { color: $error; margin-top: 1; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, run: Path):
        super().__init__()
        self.run = run

    def compose(self) -> ComposeResult:
        datasets = [(m.name, m.name) for m in store.list_datasets()]
        with Vertical():
            yield Static(Text.assemble(("Evaluate: ", "bold"), self.run.name))
            yield field(
                "Dataset",
                Select(
                    [("the run's own validation split", OWN), *datasets],
                    value=OWN,
                    allow_blank=False,
                    id="eval-dataset",
                ),
            )
            yield field(
                "Consistency",
                Input(str(Sampling().samples), type="integer", id="eval-consistency"),
            )
            yield Static(
                "answers sampled per question besides the greedy one (0: no score)",
                classes="hint",
            )
            yield field("Base model", Checkbox("measure it too", value=True, id="eval-base"))
            yield Static("", id="eval-error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Evaluate", variant="primary", id="eval-start", compact=True)
                yield Button("Cancel (Esc)", id="eval-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#eval-start", Button).focus()  # Enter: the defaults, as `e` did

    @on(Button.Pressed, "#eval-start")
    @on(Input.Submitted)
    def evaluate(self) -> None:
        typed = self.query_one("#eval-consistency", Input).value.strip()
        if not typed.isdigit():
            self.query_one("#eval-error", Static).update(
                f"consistency: {typed!r} is not a whole number of answers (0 or more)"
            )
            return
        dataset = self.query_one("#eval-dataset", Select).value
        base = self.query_one("#eval-base", Checkbox).value
        self.dismiss(EvalChoice(dataset or None, int(typed), base))

    @on(Button.Pressed, "#eval-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
