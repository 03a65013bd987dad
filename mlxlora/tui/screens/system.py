"""The System tab."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static


class SystemTab(Vertical):
    """Placeholder until the System tab is built (issue 8)."""

    def compose(self) -> ComposeResult:
        yield Static("System: not built yet")
