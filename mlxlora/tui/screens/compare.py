"""The Compare tab."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static


class CompareTab(Vertical):
    """Placeholder until the Compare tab is built (issue 8)."""

    def compose(self) -> ComposeResult:
        yield Static("Compare: not built yet")
