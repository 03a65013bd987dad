"""Pick a dataset file (.json / .jsonl) from a directory tree in a modal dialog; backspace
climbs to the parent folder, so a file anywhere on the disk can be reached."""

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
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("backspace", "up", "Parent folder"),
    ]

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self._heading(), id="picker-heading", markup=False)
            yield DataFileTree(self.root, id="picker-tree")

    def _heading(self) -> str:
        return f"Pick a .json or .jsonl file under {self.root} (backspace: up, escape: cancel)"

    def action_up(self) -> None:
        if self.root.parent != self.root:
            self.root = self.root.parent
            self.query_one(DataFileTree).path = self.root
            self.query_one("#picker-heading", Static).update(self._heading())

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss(event.path)

    def action_cancel(self) -> None:
        self.dismiss(None)
