"""A dialog that runs one `mlxlora COMMAND ... --json` child (the work loads models: never in
the app) and shows its result: the Fuse and Merge dialogs."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Button, Static

from mlxlora.tui.children import Child
from mlxlora.tui.widgets.dialog import Dialog


class ChildDialog(Dialog[None]):
    """`#COMMAND-start` is off while the child runs; `#COMMAND-log` shows its `result_lines`
    or its one-line error. Escape or `#COMMAND-close` stops the child and closes."""

    COMMAND = ""  # the subcommand, and the prefix of the dialog's ids
    BINDINGS = [Binding("escape", "close", "Cancel / close")]

    def __init__(self) -> None:
        super().__init__()
        self.running = False

    def result_lines(self, result: dict) -> list[str]:
        raise NotImplementedError

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == f"{self.COMMAND}-close":
            self.action_close()

    def action_close(self) -> None:
        self.workers.cancel_group(self, "child")  # stops the child, see run_child
        self.dismiss(None)

    @work(exclusive=True, group="child", exit_on_error=False)
    async def run_child(self, busy: str, args: list[str]) -> None:
        self.running = True
        self.query_one(f"#{self.COMMAND}-start", Button).disabled = True
        self.show(busy)
        child = await Child.start(self.COMMAND, *args)
        try:
            result = await child.json()  # read whole: a full stdout pipe would block the child
        except ValueError:
            result = None
        except asyncio.CancelledError:
            self.show("cancelled", failed=True)
            raise
        finally:
            await child.stop()  # cancelled or not, nothing is left running
            self.running = False
            if self.is_attached:  # not when Escape closed the dialog
                self.query_one(f"#{self.COMMAND}-start", Button).disabled = False
        if result is None:
            self.show(f"error: {child.error_line()}", failed=True)
        else:
            self.show("\n".join(self.result_lines(result)))

    def show(self, text: str, failed: bool = False) -> None:
        if not self.is_attached:
            return
        log = self.query_one(f"#{self.COMMAND}-log", Static)
        log.update(Text(text))
        log.set_class(failed, "-failed")
        self.call_after_refresh(self.query_one(Vertical).scroll_end, animate=False)  # the news
