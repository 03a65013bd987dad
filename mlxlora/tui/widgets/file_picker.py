"""Pick a dataset file (.json / .jsonl) from a directory tree in a modal dialog."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Static

DATA_SUFFIXES = (".json", ".jsonl")


class DataFileTree(DirectoryTree):
    """A DirectoryTree that shows folders and .json/.jsonl files, no hidden entries."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [
            p
            for p in paths
            if not p.name.startswith(".") and (p.is_dir() or p.suffix.lower() in DATA_SUFFIXES)
        ]


class FilePicker(ModalScreen[Path | None]):
    """Dismisses with the chosen file, or None on escape."""

    DEFAULT_CSS = """
    FilePicker { align: center middle; }
    FilePicker > Vertical {
        width: 90%; height: 80%; border: thick $primary; background: $surface;
    }
    FilePicker DataFileTree { height: 1fr; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(
                f"Pick a .json or .jsonl file under {self.root} (escape: cancel)", markup=False
            )
            yield DataFileTree(self.root, id="picker-tree")

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss(event.path)

    def action_cancel(self) -> None:
        self.dismiss(None)
