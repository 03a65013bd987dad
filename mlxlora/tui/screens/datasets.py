"""The Datasets tab."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static


class DatasetsTab(Vertical):
    """Placeholder until the Datasets tab is built (issue 8)."""

    def compose(self) -> ComposeResult:
        yield Static("Datasets: not built yet")
