"""Messages the tabs' workers post to their widgets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from mlxlora.tui.runwatch import Poll


class RunsPolled(Message):
    """A run watcher's news, posted from its thread (`mlxlora.tui.runwatch.watch`)."""

    bubble = False  # for the tab that watches, not for each container up to the app

    def __init__(self, poll: Poll):
        super().__init__()
        self.poll = poll
