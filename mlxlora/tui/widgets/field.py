"""A labelled form field with its problems shown under it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Label, Static


class FieldRow(Vertical):
    """`label` and the widgets that edit config key `key`; `show_problems` lists what is
    wrong with the value under it (hidden when nothing is)."""

    DEFAULT_CSS = """
    FieldRow { height: auto; }
    FieldRow > .field-line { height: auto; }
    FieldRow > .field-line > Label { width: 15; }
    FieldRow > .field-line > Input, FieldRow > .field-line > Select { width: 1fr; }
    FieldRow > .field-problem { color: $error; display: none; padding-left: 15; }
    FieldRow.-invalid > .field-problem { display: block; }
    """

    def __init__(self, label: str, *widgets: Widget, key: str, help: str = "", **kwargs):
        super().__init__(**kwargs)
        self.key = key
        self.label = label
        self.widgets = widgets
        self.help = help
        self.shown = ""

    def compose(self) -> ComposeResult:
        with Horizontal(classes="field-line"):
            yield Label(self.label, markup=False)
            yield from self.widgets
        yield Static("", classes="field-problem", markup=False)

    def on_mount(self) -> None:
        if self.help:
            self.query_one(Label).tooltip = self.help

    def show_problems(self, problems: list[str]) -> None:
        text = "\n".join(problems)
        if text != self.shown:  # an update re-lays the form out: only on a change
            self.shown = text
            self.query_one(".field-problem", Static).update(text)
            self.set_class(bool(problems), "-invalid")
