"""The import form: a file, a name, a description and a type, stored by the CLI's own import."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Select, Static

from mlxlora.data import store
from mlxlora.data.formats import FORMATS
from mlxlora.errors import MlxloraError
from mlxlora.tui.widgets.dialog import Dialog, field
from mlxlora.tui.widgets.file_picker import FilePicker

AUTO = "auto"


class ImportDialog(Dialog[tuple[str, list[str]] | None]):
    """Dismisses with the stored dataset's name and the import's warnings, or None when
    cancelled. An import that fails shows the engine's one-line error and stores nothing
    (the store imports atomically)."""

    DEFAULT_CSS = """
    ImportDialog #import-browse { margin-left: 1; }
    ImportDialog #import-error { color: $error; margin-top: 1; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("[b]Import a dataset[/] (JSON array or JSON Lines)")
            yield field(
                "file",
                Input(placeholder="path to a .json or .jsonl file", id="import-path"),
                Button("Browse…", id="import-browse"),
            )
            yield field("name", Input(placeholder="default: the file's name", id="import-name"))
            yield field("description", Input(id="import-description"))
            types = [(t, t) for t in (AUTO, *FORMATS)]
            yield field("type", Select(types, value=AUTO, allow_blank=False, id="import-type"))
            yield Static("", id="import-error", markup=False)
            with Horizontal(id="import-buttons", classes="buttons"):
                yield Button("Import", variant="primary", id="import-ok", compact=True)
                yield Button("Cancel", id="import-cancel", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "import-browse":
            self.app.push_screen(FilePicker(self._browse_root()), self._picked)
        elif event.button.id == "import-ok":
            self.action_import()
        else:
            self.dismiss(None)

    def on_input_changed(self, _event: Input.Changed) -> None:
        self._error("")  # the last import's error was about what was typed before

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_import()

    def _browse_root(self) -> Path:
        """The folder of the path typed so far (or that folder itself), else the working one."""
        typed = Path(self.query_one("#import-path", Input).value.strip()).expanduser()
        for folder in (typed, typed.parent):
            if str(folder) not in ("", ".") and folder.is_dir():
                return folder.resolve()
        return Path.cwd()

    def _picked(self, path: Path | None) -> None:
        if path is not None:
            self.query_one("#import-path", Input).value = str(path)
            # focus stayed on Browse…, so the Enter that should import reopened the picker;
            # on the name field, Enter imports (under the file's name unless one is typed)
            self.query_one("#import-name", Input).focus()

    def action_import(self) -> None:
        path = self.query_one("#import-path", Input).value.strip()
        if not path:
            self._error("choose a file to import")
            return
        name = self.query_one("#import-name", Input).value.strip() or store.stem_name(path)
        if store.exists(name):  # the store's message names the CLI's --name and `data rm`
            taken = f"dataset {name} exists already"
            self._error(f"{taken}: change the name, or cancel and delete it (d)")
            return
        kind = self.query_one("#import-type", Select).value
        self._error("importing…")
        self._import(path, name, self.query_one("#import-description", Input).value, kind)

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _import(self, path: str, name: str, description: str, kind: str) -> None:
        """Validates every record, so it runs off the UI thread."""
        try:
            meta, warnings = store.import_dataset(
                path, name, description, None if kind == AUTO else kind
            )
        except MlxloraError as exc:
            self.app.call_from_thread(self._error, str(exc))
            return
        self.app.call_from_thread(self.dismiss, (meta.name, warnings))

    def _error(self, text: str) -> None:
        self.query_one("#import-error", Static).update(text)

    def action_cancel(self) -> None:
        self.dismiss(None)
