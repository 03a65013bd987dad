"""The footer: the keys that act where the focus is, drawn as one line.

Textual's `Footer` removes and mounts one widget per key (styles applied to each) every time
the focus moves, even when the keys stay the same: that was a third of a number key's time
to the screen. This one is a single widget whose line is redrawn only when the keys shown
change; a key clicked is pressed, as in Textual's footer.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.events import Click
from textual.screen import Screen
from textual.widget import Widget


class KeysFooter(Widget, can_focus=False):
    """The screen's active bindings that have `show`, the command palette's on the right."""

    ALLOW_SELECT = False
    COMPONENT_CLASSES = {"keys-footer--key", "keys-footer--description"}
    DEFAULT_CSS = """
    KeysFooter {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
        text-wrap: nowrap;
        text-overflow: ellipsis;
        .keys-footer--key {
            color: $footer-key-foreground;
            background: $footer-key-background;
            text-style: bold;
        }
        .keys-footer--description {
            color: $footer-description-foreground;
            background: $footer-description-background;
        }
    }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._keys: tuple = ()  # (key, shown as, description, enabled) as drawn
        self._spans: list[tuple[int, int, str]] = []  # (first cell, cell after, key) as drawn

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._bindings_changed(self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen) -> None:
        palette = self.app.COMMAND_PALETTE_BINDING
        keys = tuple(
            (binding.key, self.app.get_key_display(binding), binding.description, enabled)
            for key, (_, binding, enabled, _) in screen.active_bindings.items()
            if binding.show or key == palette
        )
        if keys != self._keys:
            self._keys = keys
            self.refresh()

    def render(self) -> Text:
        """Every key with its description; where that is wider than the screen (the Runs
        tab at 80 columns cut "? Help"), each description's first word, then the command
        palette's key without its word."""
        palette = self.app.COMMAND_PALETTE_BINDING
        short = tuple((*k[:2], k[2].split(" ")[0], k[3]) for k in self._keys)
        bare = tuple((*k[:2], "" if k[0] == palette else k[2], k[3]) for k in short)
        for keys in (self._keys, short, bare):
            line = self._line(keys)
            if line.cell_len <= self.size.width:
                break
        return line

    def _line(self, keys: tuple) -> Text:
        palette_key = self.app.COMMAND_PALETTE_BINDING
        line, self._spans = Text(), []
        for key in (k for k in keys if k[0] != palette_key):
            self._append(line, *key)
        palette = [k for k in keys if k[0] == palette_key]
        if palette and self.app.ENABLE_COMMAND_PALETTE:
            right = self._key(*palette[0])
            line.append(" " * max(self.size.width - line.cell_len - right.cell_len, 1))
            self._append(line, *palette[0])
        return line

    def _append(self, line: Text, key: str, *rest) -> None:
        start = line.cell_len
        line.append_text(self._key(key, *rest))
        self._spans.append((start, line.cell_len, key))

    def _key(self, key: str, shown: str, description: str, enabled: bool) -> Text:
        key_style = self.get_component_rich_style("keys-footer--key")
        text_style = self.get_component_rich_style("keys-footer--description")
        if not enabled:
            key_style, text_style = key_style + Style(dim=True), text_style + Style(dim=True)
        words = f"{description} " if description else ""
        return Text.assemble((f" {shown} ", key_style), (words, text_style))

    def on_click(self, event: Click) -> None:
        """Press the key whose text was clicked (not an @click link: links draw underlined)."""
        for start, end, key in self._spans:
            if start <= event.x < end:
                self.app.simulate_key(key)
