"""The Playground tab."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static


class PlaygroundTab(Vertical):
    """Placeholder until the Playground tab is built (issue 8)."""

    def compose(self) -> ComposeResult:
        yield Static("Playground: not built yet")
