"""The app: one tab per step of the workflow, each on a number key, and a command palette
that lists every action of the app and of the tab in view (from their key bindings).

A tab's widget is mounted when the tab is first shown: the app opens on one tab without paying
for the other five (the Train form alone is a few hundred milliseconds), and a tab never
opened reads and watches nothing."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterable

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import ScrollableContainer
from textual.screen import Screen
from textual.scroll_view import ScrollView
from textual.widgets import Header, Input, TabbedContent, TabPane, TextArea

from mlxlora import machine, queue_runner
from mlxlora.tui.children import Child
from mlxlora.tui.screens import compare, datasets, playground, runs, system, train
from mlxlora.tui.widgets.keys_footer import KeysFooter

# (tab id, title, the widget class that fills it); the number key is the position.
TABS = (
    ("datasets", "Datasets", datasets.DatasetsTab),
    ("train", "Train", train.TrainTab),
    ("runs", "Runs", runs.RunsTab),
    ("compare", "Compare", compare.CompareTab),
    ("playground", "Playground", playground.PlaygroundTab),
    ("system", "System", system.SystemTab),
)


class MlxloraApp(App):
    """mlxlora's studio. Work runs in child processes; the app only reads and renders."""

    TITLE = "mlxlora"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        *(
            Binding(str(i), f"show_tab('{tab}')", title, show=False)
            for i, (tab, title, _) in enumerate(TABS, 1)
        ),
        Binding("question_mark", "toggle_help", "Help"),
        # in a text field ? is typed, not pressed: F1 opens the help from anywhere
        Binding("f1", "toggle_help", "Help", show=False),
        # in the help panel and the palette, not the footer (as Textual's own ctrl+q): shown,
        # it left the Runs tab's six keys no room for "^p palette" at 80 columns
        Binding("ctrl+q", "quit", "Quit", show=False),
        Binding("escape", "leave_field", "Leave the field", show=False),
    ]

    def __init__(self, initial: str = "datasets"):
        super().__init__()
        self.initial = initial
        self._doctor: asyncio.Task | None = None

    async def doctor(self) -> dict:
        """`mlxlora doctor --json` from one child for the whole app (the System tab shows it;
        on a CUDA host the Train tab needs its device, and each child imports torch): the
        device it names becomes this process's training device."""
        if self._doctor is None:
            self._doctor = asyncio.ensure_future(_learned_doctor())
            # its error is the awaiting tab's to show; none awaits after the app closed
            self._doctor.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(self._doctor)  # a tab's worker cancelled: not the child

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial=self.initial):
            for i, (tab, title, widget) in enumerate(TABS, 1):
                with TabPane(f"{i} {title}", id=tab):
                    if tab == self.initial:
                        yield widget(id=f"{tab}-tab")
        yield KeysFooter()

    def on_mount(self) -> None:
        self._ensure_runner()
        self.call_after_refresh(_settle_heap)  # once the first screen is out

    def on_unmount(self) -> None:
        Child.cancel_all()  # nothing the app started outlives it (runs are the runner's)

    @work(thread=True, exit_on_error=False, group="runner")
    def _ensure_runner(self) -> None:
        queue_runner.ensure_runner()  # jobs queued while no app and no runner was around

    def action_show_tab(self, tab: str) -> None:
        tabs = self.query_one(TabbedContent)
        self._fill(tabs.get_pane(tab))
        if tabs.active != tab:
            # the tab shown takes the focus (each focuses its own widget); left to Textual, the
            # focus moves to a neighbour in the hidden tab (the Playground's run picker to its
            # max tokens), and a focused widget's tab is shown again: the key did nothing
            self.set_focus(None)
        tabs.active = tab

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.tabbed_content is self.query_one(TabbedContent):  # not a tab's own tabs
            self._fill(event.pane)  # a tab's title clicked

    def _fill(self, pane: TabPane) -> None:
        """Mount the tab's widget the first time the tab is shown (it is in the DOM at once;
        its own mounting follows)."""
        if not pane.children:
            widget = next(w for tab, _, w in TABS if tab == pane.id)
            pane.mount(widget(id=f"{pane.id}-tab"))
            self.call_after_refresh(_settle_heap)

    def action_leave_field(self) -> None:
        """Escape leaves a text field for the tab's first control that takes no text, so the
        number keys switch tabs again and the tab's own keys still work (with the focus on
        nothing they did nothing). A dialog's own escape, which cancels it, comes first; an
        open help panel closes first, as escape closes what was opened last."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
            return
        pane = self.query_one(f"#{self.query_one(TabbedContent).active}", TabPane)
        controls = (w for w in self.screen.focus_chain if pane in w.ancestors and _control(w))
        self.screen.set_focus(next(controls, None))

    def action_toggle_help(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for i, (tab, title, _) in enumerate(TABS, 1):
            yield SystemCommand(
                f"Go to {title}", f"Show the {title} tab (key {i})", self._show(tab)
            )
        for binding, node in self._tab_bindings():
            yield SystemCommand(
                binding.description,
                f"{binding.description} (key {binding.key})",
                lambda node=node, action=binding.action: self.run_action(action, node),
            )

    def _show(self, tab: str):
        return lambda: self.action_show_tab(tab)

    def _tab_bindings(self):
        """Bindings of the tab in view and its widgets: every action a user can take there,
        each once (a form's dozen inputs each bind "Copy selected text"): the focused
        widget's where it has one, else the first."""
        active = self.query_one(TabbedContent).active
        pane = self.query_one(f"#{active}", TabPane)
        found: dict[str, tuple[Binding, object]] = {}
        for node in pane.query("*"):
            for binding in getattr(node, "BINDINGS", []):
                if isinstance(binding, Binding) and binding.description:
                    if binding.description not in found or node is self.focused:
                        found[binding.description] = (binding, node)
        yield from found.values()


def _control(widget) -> bool:
    """A widget that takes keys but no text. Not a scrolling container either: focusing one
    restyles all it holds (the whole form). Tables and lists scroll too, but are controls."""
    container = isinstance(widget, ScrollableContainer) and not isinstance(widget, ScrollView)
    return not (container or isinstance(widget, (Input, TextArea)))


async def _learned_doctor() -> dict:
    report = await system.doctor_report()
    machine.learn_training_device(report)
    return report


def _settle_heap() -> None:
    """Take what the app has built so far out of the garbage collector's sweeps.

    The widgets, styles and runs the app holds are ~200,000 objects; Python's full
    collection walks them all (~70 ms here) every few seconds while a run streams, and a key
    pressed meanwhile waits. They live as long as the app, so they are frozen once built
    (at start and after each tab's first mount); what is made later is collected as usual."""
    gc.collect()
    gc.freeze()


def run(initial: str = "datasets") -> int:
    MlxloraApp(initial).run()
    return 0
