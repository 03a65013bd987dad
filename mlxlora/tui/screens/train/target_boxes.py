"""The LoRA targets field: a checkbox per name the model offers, plus any other name the
config ticks (a preset may name a module the model reading did not list)."""

from __future__ import annotations

import asyncio

from textual import on
from textual.containers import Grid
from textual.widgets import Checkbox


class TargetBoxes(Grid):
    """`ticked` is the names ticked, in the order they were ticked; the boxes are rebuilt
    for each model's choices without losing it."""

    DEFAULT_CSS = "TargetBoxes { grid-size: 4; grid-gutter: 0 1; height: auto; width: 1fr; }"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.ticked: list[str] = []
        self._lock = asyncio.Lock()  # a preset and a model read may both rebuild the boxes

    async def show(self, choices: list[str], ticked: list[str] | None = None) -> None:
        """Boxes for `choices` (the model's), ticking `ticked` (by default, as they are)."""
        self.ticked = list(self.ticked if ticked is None else ticked)
        names = list(choices) + [t for t in self.ticked if t not in choices]
        async with self._lock:
            if [(b.name, b.value) for b in self.children] == [(n, n in self.ticked) for n in names]:
                return
            await self.remove_children()
            await self.mount_all(Checkbox(n, n in self.ticked, name=n, compact=True) for n in names)

    @on(Checkbox.Changed)
    def _ticked(self, event: Checkbox.Changed) -> None:
        """The event goes on to the form, which validates."""
        name = event.checkbox.name
        self.ticked = [t for t in self.ticked if t != name] + ([name] if event.value else [])
