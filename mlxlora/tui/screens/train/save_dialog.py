"""Ask for a path and write the job's config there, as a file `mlxlora train` runs."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Static

from mlxlora.tui.widgets.dialog import Dialog


class SaveYamlDialog(Dialog[Path | None]):
    """Writes `text` to the path typed (never over an existing file); dismisses with it."""

    DEFAULT_CSS = """
    SaveYamlDialog #save-error { color: $error; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, text: str, default: str):
        super().__init__()
        self.text = text
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Save the job as a config file (run it with `mlxlora train FILE`)")
            yield Input(self.default, id="save-path", compact=True)
            yield Static("", id="save-error", markup=False)
            with Horizontal(id="save-buttons", classes="buttons"):
                yield Button("Save", variant="primary", id="save-ok", compact=True)
                yield Button("Cancel", id="save-cancel", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save-ok":
            self.save()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.save()

    def save(self) -> None:
        path = Path(self.query_one("#save-path", Input).value.strip()).expanduser()
        error = self.query_one("#save-error", Static)
        if not path.name:
            error.update("type a file name")
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "x", encoding="utf-8") as f:  # "x": never over a preset
                f.write(self.text)
        except FileExistsError:
            error.update(f"{path} exists; choose another name")
            return
        except OSError as exc:
            error.update(f"{path}: cannot write: {exc.strerror or exc}")
            return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)
