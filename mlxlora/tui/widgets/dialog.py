"""The modal form the studio's dialogs share: a framed column centred on the screen, rows of a
label and an input (`field`), and a row of buttons (class `buttons`)."""

from __future__ import annotations

from textual.containers import Horizontal
from textual.screen import ModalScreen, ScreenResultType
from textual.widget import Widget
from textual.widgets import Label


class Dialog(ModalScreen[ScreenResultType]):
    """A ModalScreen whose first child is the dialog's Vertical column; it scrolls where a
    small terminal (80 x 24) cannot show all of it."""

    DEFAULT_CSS = """
    Dialog { align: center middle; }
    Dialog > Vertical {
        width: 90%; max-width: 100; height: auto; max-height: 100%; overflow-y: auto;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    Dialog .field, Dialog .buttons { height: auto; margin-top: 1; }
    Dialog .field Label { width: 13; }
    Dialog .field Input, Dialog .field Select { width: 1fr; }
    Dialog .buttons Button { margin-right: 2; }
    """


def field(label: str, *widgets: Widget) -> Horizontal:
    """A labelled row of compact widgets."""
    for widget in widgets:
        widget.compact = True
    return Horizontal(Label(label), *widgets, classes="field")
