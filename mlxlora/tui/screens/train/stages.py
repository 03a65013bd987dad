"""The stages of a staged schedule: an editable list of (learning rate, epochs) rows."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label


class StageRow(Horizontal):
    DEFAULT_CSS = """
    StageRow { height: 1; }
    StageRow > Label { width: 8; }
    StageRow > Input { width: 1fr; margin-right: 1; }
    """

    def __init__(self, learning_rate: str, epochs: str):
        super().__init__()
        self.values = (learning_rate, epochs)

    def compose(self) -> ComposeResult:
        yield Label("")
        yield Input(self.values[0], placeholder="learning rate", classes="stage-lr", compact=True)
        yield Input(self.values[1], placeholder="epochs", classes="stage-epochs", compact=True)
        yield Button("remove", classes="stage-remove", compact=True)

    def stage(self) -> tuple[str, str]:
        return (
            self.query_one(".stage-lr", Input).value,
            self.query_one(".stage-epochs", Input).value,
        )


class StagesEditor(Vertical):
    """Rows of (learning rate, epochs); posts `Changed` when a row comes or goes (typing in a
    row posts the Input's own Changed)."""

    DEFAULT_CSS = """
    StagesEditor { height: auto; }
    StagesEditor > #stage-rows { height: auto; }
    StagesEditor > #stage-head { height: 1; color: $text-muted; }
    StagesEditor > #stage-head > Label { width: 1fr; margin-right: 1; }
    StagesEditor > #stage-head > .lead { width: 8; margin-right: 0; }
    StagesEditor > #stage-head > .tail { width: 8; }
    """

    class Changed(Message):
        pass

    def compose(self) -> ComposeResult:
        with Horizontal(id="stage-head"):  # which box is which, above the rows' boxes
            yield Label("", classes="lead")
            yield Label("learning rate")
            yield Label("epochs")
            yield Label("", classes="tail")
        yield Vertical(id="stage-rows")
        yield Button("add stage", id="stage-add", compact=True)

    def stages(self) -> list[tuple[str, str]]:
        return [row.stage() for row in self.query(StageRow)]

    async def set_stages(self, stages: list[tuple[str, str]]) -> None:
        rows = self.query_one("#stage-rows")
        await rows.remove_children()
        await rows.mount_all(StageRow(lr, epochs) for lr, epochs in stages)
        self._number()

    def _number(self) -> None:
        for i, row in enumerate(self.query(StageRow), 1):
            row.query_one(Label).update(f"stage {i}")

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "stage-add":
            last = self.stages()[-1:] or [("1e-4", "1")]
            await self.query_one("#stage-rows").mount(StageRow(*last[0]))
        else:
            await event.button.parent.remove()
        self._number()
        self.post_message(self.Changed())
