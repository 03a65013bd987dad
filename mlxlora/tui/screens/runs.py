"""The Runs tab."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static


class RunsTab(Vertical):
    """Placeholder until the Runs tab is built (issue 8)."""

    def compose(self) -> ComposeResult:
        yield Static("Runs: not built yet")
