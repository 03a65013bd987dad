"""The base models the Train form offers, with size and whether they fit here, and what it
says about the model chosen (all from `mlxlora.models.listing`, as `mlxlora models` shows),
and the form's model field that shows them."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Select, Static

from mlxlora import memory, targets
from mlxlora.errors import MlxloraError
from mlxlora.models import listing
from mlxlora.tui.widgets.field import FieldRow


def _fit(total: int, budget: int | None) -> str:
    return memory.fit_verdict(total, budget).replace("will not fit", "too big")


def model_options(shape: memory.TrainShape, budget: int | None, device) -> list[tuple[str, str]]:
    """(label, reference) for the builtins, Ollama's models and the catalog; the label has the
    size and the verdict of training it here with `shape` on `device` (machine.TrainingDevice)."""
    options = []
    for row in listing.builtin_rows(shape, device):
        fit = _fit(row["train_bytes_this_machine"], budget)
        state = fit if row["installed"] else "not installed"
        options.append((f"{row['id']}  {listing.params_text(row['params'])}  {state}", row["id"]))
    for row in listing.ollama_rows()["models"]:
        size = memory.fmt_bytes(row["size_bytes"])
        options.append((f"{row['id']}  GGUF {size}", row["id"]))
    for row in listing.rows(shape, device)[1]:
        fit = _fit(row["train_bytes_this_machine"], budget)
        options.append((f"{row['id']}  {listing.params_text(row['params'])}  {fit}", row["id"]))
    return options


def describe(ref: str) -> tuple[dict | None, list[str], str]:
    """(info for the memory estimate or None, LoRA target choices, one line about the model)."""
    try:
        info = listing.known_info(ref)
        choices = listing.target_choices(ref)
    except (MlxloraError, OSError, ValueError) as exc:
        return None, list(targets.SHORT_NAMES), f"{ref}: {exc}"
    if info is None:
        return None, choices, "size unknown until training fetches or converts it"
    line = f"{listing.params_text(info['params'])} params, {memory.fmt_bytes(info['weight_bytes'])}"
    bits = (info.get("quantization") or {}).get("bits")
    return info, choices, line + (f" ({bits}-bit)" if bits else "")


Facts = tuple[dict | None, list[str], str]  # describe's answer


class ModelField(Vertical):
    """The base model's field, a picker of the models known here marked with whether each
    fits, and a line about the model named. Reading a model or the catalog runs off the UI
    thread; `Described` tells the form once a model's facts are known."""

    DEFAULT_CSS = """
    ModelField { height: auto; }
    ModelField #train-model-info { padding-left: 15; color: $text-muted; }
    """

    class Described(Message):
        def __init__(self, facts: Facts) -> None:
            super().__init__()
            self.facts = facts

    def __init__(self, row: FieldRow, **kwargs):
        super().__init__(**kwargs)
        self.row = row  # the model name's own field, as the form builds its fields
        self.facts: dict[str, Facts] = {}
        self._marks_for: tuple | None = None  # (shape, budget, device) the marks are for

    def compose(self) -> ComposeResult:
        yield self.row
        yield FieldRow(
            "", Select([], prompt="pick a model…", id="train-model-pick", compact=True), key="pick"
        )
        yield Static("", id="train-model-info", markup=False)

    @property
    def ref(self) -> str:
        return self.query_one("#f-model", Input).value.strip()

    def choices(self) -> list[str]:
        """The LoRA target choices of the model named (none until it is read)."""
        return list(self.facts.get(self.ref, (None, [], ""))[1])

    async def describe(self, ref: str) -> None:
        if ref in self.facts:
            self._described(ref, self.facts[ref])
        else:
            self.query_one("#train-model-info", Static).update("reading the model…")
            self._read(ref)

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def _read(self, ref: str) -> None:
        """May read a local model's safetensors headers."""
        facts = describe(ref)
        self.app.call_from_thread(self._described, ref, facts)

    def _described(self, ref: str, facts: Facts) -> None:
        self.facts[ref] = facts
        if ref == self.ref:
            self.query_one("#train-model-info", Static).update(facts[2])
            self.post_message(self.Described(facts))

    def mark(self, shape: memory.TrainShape, budget: int | None, device) -> None:
        """The picker's fit marks follow the form's shape and budget (a preset of 4 x 256
        still showed the marks of the default 4 x 2048)."""
        if (shape, budget, device) != self._marks_for:
            self._marks_for = (shape, budget, device)
            self._load_options(shape, budget, device)

    @work(thread=True, exclusive=True, group="options", exit_on_error=False)
    def _load_options(self, shape: memory.TrainShape, budget: int | None, device) -> None:
        """Reads Ollama's store and the catalog. A thread runs on when a newer mark cancels
        it: its marks, for an older budget or device, must not land after the newer ones."""
        options = model_options(shape, budget, device)
        self.app.call_from_thread(self._set_options, (shape, budget, device), options)

    def _set_options(self, marks_for: tuple, options: list[tuple[str, str]]) -> None:
        if marks_for == self._marks_for:
            self.query_one("#train-model-pick", Select).set_options(options)

    @on(Input.Changed, "#f-model")
    async def _typed(self, event: Input.Changed) -> None:
        await self.describe(event.value.strip())

    @on(Select.Changed, "#train-model-pick")
    def _picked(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is not Select.NULL:
            self.query_one("#f-model", Input).value = event.value
