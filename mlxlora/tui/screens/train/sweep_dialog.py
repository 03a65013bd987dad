"""The Sweep dialog (ctrl+t or "Sweep…" on the Train tab): the form's job as the base of a
sweep, a grid typed as `key=v1,v2` lines, every combination checked as it is typed with the
same core as `mlxlora sweep` (parse_grid, plan, validate), then queued by `sweep.start`.

The form's config is written to `sweeps/<name>.yaml` only when the sweep is queued; until
then each combination is validated by putting its overrides on the form's config in memory.
"""

from __future__ import annotations

import copy

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Static, TextArea

from mlxlora import config, names, queue_runner, sweep
from mlxlora.errors import ConfigError, MlxloraError
from mlxlora.tui.widgets.dialog import Dialog, field

EXAMPLE = "one key per line, e.g.\nlora.rank=8,12,16\ntraining.learning_rate=5e-5,3e-5,1e-5"
SHOWN_RUNS = 3  # run names listed in the plan line; the rest are counted


def grid_lines(text: str) -> list[str]:
    """The grid as `--grid` values: one per non-blank line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


class SweepDialog(Dialog[str | None]):
    """Dismisses with what was queued (a line for the Train tab's status), None if cancelled."""

    DEFAULT_CSS = """
    SweepDialog #sweep-grid { height: 6; margin-top: 1; }
    SweepDialog #sweep-plan { height: auto; max-height: 4; color: $text-muted; }
    SweepDialog #sweep-plan.-failed { color: $error; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, base: config.Config):
        super().__init__()
        self.base = base
        self.members: list[sweep.Member] = []  # the plan as last validated ([] when invalid)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(
                Text.assemble(
                    ("Sweep: ", "bold"),
                    f"the form's job ({self.base.name}) once per combination, queued in turn",
                )
            )
            yield field("Sweep name", Input(sweep.default_name(self.base.name), id="sweep-name"))
            yield TextArea(id="sweep-grid", placeholder=EXAMPLE, compact=True)
            yield Static("", id="sweep-plan", markup=False)
            with Horizontal(id="sweep-buttons", classes="buttons"):
                yield Button("Queue", variant="primary", id="sweep-queue", compact=True)
                yield Button("Cancel (Esc)", id="sweep-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()
        self.check()

    def _sweep_name(self) -> str:
        return self.query_one("#sweep-name", Input).value

    def _grids(self) -> list[str]:
        return grid_lines(self.query_one(TextArea).text)

    @on(Input.Changed)
    @on(TextArea.Changed)
    def check(self) -> None:
        """Plan and validate every combination; say how many runs, or the one-line error."""
        self.members = []
        grids = self._grids()
        try:
            if not grids:
                raise ConfigError(["type a grid: key=value1,value2,..."], "sweep")
            members = sweep.plan(self._sweep_name(), ["form"], grids, [])
            sweep.validate(self._sweep_name(), members, load=self._load, references=False)
        except MlxloraError as exc:
            self._say(str(exc), failed=True)
            return
        self.members = members
        runs = [m.name for m in members]
        more = f" and {len(runs) - SHOWN_RUNS} more" if len(runs) > SHOWN_RUNS else ""
        self._say(f"{len(runs)} runs: {', '.join(runs[:SHOWN_RUNS])}{more}", failed=False)

    def _load(self, _path: str, overrides: list[str]) -> config.Config:
        """A member's config: its overrides on the form's config (as `config.load` would put
        them on the saved file)."""
        data = config.apply_overrides(copy.deepcopy(self.base.to_dict()), overrides)
        return config.from_dict(data, "sweep")

    def _say(self, text: str, failed: bool) -> None:
        line = self.query_one("#sweep-plan", Static)
        line.update(text)
        line.set_class(failed, "-failed")
        self.query_one("#sweep-queue", Button).disabled = failed

    @on(Button.Pressed, "#sweep-queue")
    def queue_sweep(self) -> None:
        """Write the base config and queue the sweep as `mlxlora sweep` does; on an error
        nothing is queued and the dialog stays open with the error."""
        self.check()
        if not self.members:
            return
        name = self._sweep_name()
        try:  # datasets and models first: a refused sweep writes no base config
            sweep.validate(name, self.members, load=self._load)
            base = sweep.save_base(name, self.base.to_yaml())
            done = sweep.start(name, [str(base)], self._grids(), [], references=False)
        except MlxloraError as exc:
            self._say(str(exc), failed=True)
            return
        queue_runner.ensure_runner()
        queued = sum(action in ("queued", "resume queued") for _, action in done)
        self.dismiss(f"sweep {names.normalize(name)}: {queued} of {len(done)} runs queued")

    @on(Button.Pressed, "#sweep-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
