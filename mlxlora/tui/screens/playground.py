"""The Playground tab: one prompt, the base model's and the tuned model's answers side by side.

Each answer streams from a child `mlxlora generate --stream` (chat template applied): the base
model first, then the same model through the run's adapter. One after another, not at once:
on a small CPU two models generating together each run at half speed and hold twice the memory.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import yaml
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Select, Static

from mlxlora.fmt import answer
from mlxlora.runs import RunPaths
from mlxlora.tui.children import Child

DEFAULT_MAX_TOKENS = 200
SYSTEM_PLACEHOLDER = "System prompt (optional): who the model answers as, as in training"
REFRESH_SECONDS = 0.1  # an answer repaints at most 10 times a second, however fast it streams


def config_backend(run_dir: Path) -> str:
    """The backend a run's config names (auto | mlx | torch), which `generate --adapter RUN`
    answers on: the base answers there too. On `auto` a torch run's base answered on MLX beside
    its tuned model on torch, and a bitsandbytes base (only torch loads one) not at all."""
    try:
        data = yaml.safe_load(RunPaths(run_dir).config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return "auto"  # the tuned side says what is wrong with the run
    return str(data.get("backend", "auto")) if isinstance(data, dict) else "auto"


class AnswerPane(Vertical):
    """One model's answer as it streams, and how it ended (tokens/s, error or cancelled)."""

    DEFAULT_CSS = """
    AnswerPane {
        width: 1fr;
        border: round $primary;
        padding: 0 1;
    }
    AnswerPane > VerticalScroll { height: 1fr; }
    AnswerPane > .status { height: auto; color: $text-muted; }
    AnswerPane.-failed > .status { color: $error; }
    """

    def __init__(self, title: str, **kwargs):
        super().__init__(**kwargs)
        self.border_title = title
        self.text = ""  # what the model said, as it said it
        self.over = True  # no answer under way
        self.finished = False  # the whole answer came: shown as `runs show` shows one
        self._dirty = False

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(classes="answer")
        yield Static("", classes="status")

    def on_mount(self) -> None:
        self.set_interval(REFRESH_SECONDS, self._repaint)

    def expect(self, subtitle: str) -> None:
        """Clear the pane for a new answer from `subtitle` (the model or the run)."""
        self.border_subtitle = subtitle
        self.text, self.over, self.finished, self._dirty = "", False, False, True
        self.remove_class("-failed")
        self._status("waiting")

    def loading(self) -> None:
        self._status("loading the model…")

    def add(self, piece: str) -> None:
        if not self.text:
            self._status("generating…")
        self.text += piece
        self._dirty = True

    def finish(self, done: dict) -> None:
        self.text, self.finished, self._dirty = done.get("text", self.text), True, True
        speed = done.get("tokens_per_sec")
        self._end(
            f"done · {done.get('generation_tokens', 0)} tokens"
            + (f" after a {done['prompt_tokens']}-token prompt" if "prompt_tokens" in done else "")
            + (f" · {speed:.1f} tokens/s" if speed else "")
            + (" · max tokens reached" if done.get("finish_reason") == "length" else "")
        )

    def fail(self, message: str) -> None:
        self.add_class("-failed")
        self._end(f"error: {message}")

    def cancelled(self) -> None:
        if not self.over:
            self._end("cancelled")

    def _end(self, status: str) -> None:
        self.over = True
        self._status(status)
        self._repaint()

    def _status(self, text: str) -> None:
        self.query_one(".status", Static).update(Text(text))

    def _repaint(self) -> None:
        if self._dirty:
            self._dirty = False
            # a finished answer of only whitespace says so (an empty pane looked broken)
            shown = answer(self.text) if self.finished else self.text
            self.query_one(".answer", Static).update(Text(shown))
            self.query_one(VerticalScroll).scroll_end(animate=False)


class PlaygroundTab(Vertical):
    """Prompt, run picker, max tokens; the two answers below, side by side."""

    DEFAULT_CSS = """
    PlaygroundTab #play-controls { height: auto; }
    PlaygroundTab #play-run { width: 1fr; }
    PlaygroundTab #play-run Static#label { text-wrap: nowrap; text-overflow: ellipsis; }
    PlaygroundTab #play-controls Label { padding: 1 1 0 2; }
    PlaygroundTab #play-max-tokens { width: 10; }
    PlaygroundTab #play-answers { height: 1fr; }
    """
    BINDINGS = [
        Binding("ctrl+g", "send", "Send prompt"),
        Binding("escape", "cancel", "Cancel answers"),
        Binding("ctrl+r", "reload_runs", "Reload runs"),
    ]

    class RunsFound(Message):
        def __init__(self, runs: list, listed_at: float):
            super().__init__()
            self.runs, self.listed_at = runs, listed_at

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.runs: dict[str, object] = {}  # run directory -> RunInfo
        self.runs_listed_at = 0.0  # when the runs in the picker were listed (monotonic)
        self.child: Child | None = None  # the child generating now

    def compose(self) -> ComposeResult:
        with Horizontal(id="play-controls"):
            yield Select([], prompt="finished run (its base model and adapter)", id="play-run")
            yield Label("max tokens")
            yield Input(str(DEFAULT_MAX_TOKENS), type="integer", id="play-max-tokens")
        yield Input(placeholder=SYSTEM_PLACEHOLDER, id="play-system")
        yield Input(placeholder="Prompt: Enter sends, Esc cancels", id="play-prompt")
        with Horizontal(id="play-answers"):
            yield AnswerPane("Base", id="play-base")
            yield AnswerPane("Tuned", id="play-tuned")

    def on_show(self) -> None:
        # Focus inside the tab (its bindings answer) but not in the prompt: number keys still
        # switch tabs until the user goes to the prompt.
        self.query_one("#play-run", Select).focus()
        self.action_reload_runs()  # a run may have finished since

    def action_reload_runs(self) -> None:
        self._find_runs()

    @work(thread=True, exclusive=True, group="play-runs", exit_on_error=False)
    def _find_runs(self) -> None:
        """A thread runs on when a newer listing cancels it: its list, older, must not land
        after the newer one (a run finished between them would leave the picker)."""
        from mlxlora.evaluate import is_adapter_dir
        from mlxlora.runlist import list_runs
        from mlxlora.runs import RunPaths

        listed_at = time.monotonic()
        found = [
            run
            for run in list_runs()
            if run.status in ("finished", "early-stopped", "stopped")
            and is_adapter_dir(RunPaths(run.path).adapters)
        ]
        self.post_message(self.RunsFound(found, listed_at))

    @on(RunsFound)
    def _show_runs(self, message: RunsFound) -> None:
        if message.listed_at < self.runs_listed_at:
            return  # listed before the runs shown
        self.runs_listed_at = message.listed_at
        runs = {str(run.path): run for run in message.runs}
        if runs == self.runs:
            return  # the picker as it is (setting its options re-lays the tab out)
        picker = self.query_one("#play-run", Select)
        chosen = picker.value
        self.runs = runs
        picker.set_options((f"{run.name} · {run.model}", key) for key, run in self.runs.items())
        if chosen in self.runs:
            picker.value = chosen
        elif self.runs:
            picker.value = next(iter(self.runs))  # the newest

    # Enter in any field sends: in the system prompt or max tokens it did nothing, without a
    # word, to a question typed there by mistake
    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_send()

    def action_send(self) -> None:
        prompt = self.query_one("#play-prompt", Input).value
        run = self.runs.get(self.query_one("#play-run", Select).value)
        if not prompt.strip():
            self.notify("Type a prompt first.", severity="warning")
        elif run is None and self.runs:  # the picker's empty first line chosen
            self.notify("Pick a run first (the list above the prompt).", severity="warning")
        elif run is None:
            self.notify("No finished run to try: train one first (tab 2).", severity="warning")
        else:
            max_tokens = self.query_one("#play-max-tokens", Input).value or "0"
            system = self.query_one("#play-system", Input).value.strip()
            options = ["--max-tokens", max_tokens, *(["--system", system] if system else [])]
            self._answer(prompt, run, options)

    def action_cancel(self) -> None:
        """Esc stops the answers; with none coming, it leaves the field (as on every tab), so
        the number keys switch tabs again."""
        answering = [w for w in self.workers if w.group == "play-generate" and w.is_running]
        if answering:
            self.workers.cancel_group(self, "play-generate")
        else:
            self.screen.set_focus(None)

    @work(exclusive=True, group="play-generate", exit_on_error=False)
    async def _answer(self, prompt: str, run, options: list[str]) -> None:
        base, tuned = (
            self.query_one("#play-base", AnswerPane),
            self.query_one("#play-tuned", AnswerPane),
        )
        base.expect(run.model)
        tuned.expect(run.name)
        try:
            for pane, source in (
                (base, ["--model", run.model, "--backend", config_backend(run.path)]),
                (tuned, ["--adapter", str(run.path)]),
            ):
                await self._stream(pane, [*source, *options], prompt)
        except asyncio.CancelledError:
            base.cancelled()
            tuned.cancelled()
            raise

    async def _stream(self, pane: AnswerPane, args: list[str], prompt: str) -> None:
        pane.loading()
        child = self.child = await Child.start(
            "generate", *args, "--prompt", "-", "--stream", input=prompt
        )
        try:
            async for event in child.json_lines():
                kind = event.get("type")
                if kind == "token":
                    pane.add(str(event.get("text", "")))
                elif kind == "done":
                    pane.finish(event)
                elif kind == "error":
                    pane.fail(str(event.get("message", "")))
            code = await child.wait()
            if not pane.over:  # no `done` and no error object: it crashed or was killed
                pane.fail(child.error_line() if code else "the answer ended without its last line")
        finally:
            await child.stop()  # cancelled or not, nothing is left running
            self.child = None
