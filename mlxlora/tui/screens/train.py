"""The Train tab."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static


class TrainTab(Vertical):
    """Placeholder until the Train tab is built (issue 8)."""

    def compose(self) -> ComposeResult:
        yield Static("Train: not built yet")
