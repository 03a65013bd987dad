"""The Train tab: a new job's form. Every change rebuilds the config dict and validates it with
`config.from_dict` (problems shown under their fields), and re-estimates memory; Start queues
the job for the runner, Sweep… queues a run per combination of a grid on the form's job (as
`mlxlora sweep`), Save as YAML writes a config `mlxlora train` runs."""

from __future__ import annotations

import asyncio

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Checkbox, Input, Select, Static

from mlxlora import config, machine, memory
from mlxlora.config import BACKENDS, SCHEDULES, Config
from mlxlora.data import refs, store
from mlxlora.errors import MlxloraError
from mlxlora.fmt import counted
from mlxlora.prepare import layers_problem
from mlxlora.sweep import STAGED_SETS
from mlxlora.tui.screens.train import form
from mlxlora.tui.screens.train.longest import count_longest, records_key
from mlxlora.tui.screens.train.models import ModelField
from mlxlora.tui.screens.train.save_dialog import SaveYamlDialog
from mlxlora.tui.screens.train.stages import StagesEditor
from mlxlora.tui.screens.train.sweep_dialog import SweepDialog
from mlxlora.tui.screens.train.target_boxes import TargetBoxes
from mlxlora.tui.widgets.field import FieldRow

CUSTOM = "custom"
LONGEST_AFTER = 0.5  # seconds the form rests before a child counts its records
BUDGET_MOVE = 0.01  # the free memory changes all the time: a new verdict past 1% of it


PLACEHOLDERS = {"training.memory_budget": "this machine's (e.g. 12GB)"}


def _preset_options() -> list[tuple[str, str]]:
    return [(CUSTOM, CUSTOM), *((p.name, str(p)) for p in form.presets(form.preset_dir()))]


def _input(key: str, value: str = "") -> Input:
    return Input(
        value,
        placeholder=PLACEHOLDERS.get(key, ""),
        name=key,
        id="f-" + key.replace(".", "-"),
        compact=True,
    )


class TrainTab(Vertical):
    """The new-job form, its live memory verdict, and Start / Save as YAML."""

    DEFAULT_CSS = """
    TrainTab #train-form { height: 1fr; }
    TrainTab .section { text-style: bold; margin-top: 1; color: $accent; }
    TrainTab #train-footer { height: auto; max-height: 8; border-top: solid $primary; }
    TrainTab #train-status { color: $text-muted; }
    TrainTab #train-buttons { height: 1; }
    TrainTab #train-buttons Button { margin-right: 2; }
    """
    BINDINGS = [
        Binding("ctrl+g", "start", "Start job"),
        Binding("ctrl+s", "save_yaml", "Save as YAML"),
        Binding("ctrl+t", "sweep", "Sweep…"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        datasets = [m.name for m in store.list_datasets()]
        self.base = form.default_data(datasets[0] if datasets else "")
        self.device = machine.training_device()  # backend: auto's (learned on a CUDA host)
        self.budget = self.device.budget
        self.longest: dict[tuple, int | None] = {}  # records_key -> tokens (None: counting)
        self.cfg: Config | None = None
        self._dataset_choices: list[tuple[str, str]] | None = None  # (name, label) as shown
        self.keys = (
            *form.INPUT_KEYS,
            form.DATASET,
            form.TARGETS,
            form.STAGES,
            form.SCHEDULE,
            form.FIT,
            form.CHECKPOINT,
            form.BACKEND,
        )

    # --- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        presets = self._presets = _preset_options()
        with VerticalScroll(id="train-form"):
            yield FieldRow(
                "preset",
                Select(presets, value=CUSTOM, allow_blank=False, id="train-preset", compact=True),
                key="preset",
                help="Load a config file from configs/ into the form",
            )
            yield self._row("name", "name")
            yield ModelField(self._row("model", "base model"))
            # backend torch (PyTorch + PEFT) was only reachable through a preset saying so
            yield FieldRow(
                "backend",
                Select([(b, b) for b in BACKENDS], allow_blank=False, id="f-backend", compact=True),
                key=form.BACKEND,
                help=form.help_text(form.BACKEND),
            )
            yield FieldRow(
                "dataset",
                Select([], prompt="no stored datasets", id="f-dataset", compact=True),
                key=form.DATASET,
                help=form.help_text(form.DATASET),
            )
            for title, fields in form.SECTIONS:
                yield Static(title, classes="section")
                for key, label in fields:
                    yield self._row(key, label)
                if title == "LoRA":
                    yield FieldRow(
                        "targets",
                        TargetBoxes(id="train-targets"),
                        key=form.TARGETS,
                        help=form.help_text(form.TARGETS),
                    )
                if title == "Training":
                    yield FieldRow(
                        "schedule",
                        Select(
                            [(s, s) for s in SCHEDULES],
                            allow_blank=False,
                            id="f-schedule",
                            compact=True,
                        ),
                        key=form.SCHEDULE,
                        help=form.help_text(form.SCHEDULE),
                    )
                    yield FieldRow("stages", StagesEditor(), key=form.STAGES, id="train-stages")
                    yield FieldRow(
                        "memory",
                        Checkbox("fit to memory", id="f-fit", compact=True),
                        key=form.FIT,
                        help=form.help_text(form.FIT),
                    )
                    yield FieldRow(
                        "",
                        Checkbox("gradient checkpointing", id="f-checkpoint", compact=True),
                        key=form.CHECKPOINT,
                        help=form.help_text(form.CHECKPOINT),
                    )
        with Vertical(id="train-footer"):  # the buttons first: long advice never hides them
            with Horizontal(id="train-buttons"):
                yield Button("Start", variant="primary", id="train-start", compact=True)
                yield Button("Sweep…", id="train-sweep", compact=True)
                yield Button("Save as YAML", id="train-save", compact=True)
            yield Static("", id="train-status", markup=False)
            yield Static("", id="train-memory")

    def _row(self, key: str, label: str) -> FieldRow:
        return FieldRow(label, _input(key), key=key, help=form.help_text(key))

    async def on_mount(self) -> None:
        self.models = self.query_one(ModelField)
        self.targets = self.query_one(TargetBoxes)
        self.inputs = [box for box in self.query(Input) if box.name in form.INPUT_KEYS]
        self.rows = list(self.query(FieldRow))
        await self.fill(self.base)
        if machine.maybe_cuda():
            self._learn_device()

    @work(exclusive=True, group="train-device", exit_on_error=False)
    async def _learn_device(self) -> None:
        """Where an NVIDIA driver is, `backend: auto` may train on its GPU: ask a doctor child
        (it imports the backends; the app must not) and estimate for the device it names."""
        try:
            await self.app.doctor()
        except (OSError, RuntimeError):
            return  # the CPU's estimate stands; the System tab shows doctor's error
        self._follow_device()

    def _follow_device(self) -> None:
        """The budget, the verdict and the picker's marks follow the device once a doctor
        child (this tab's or the System tab's) has named it, and the memory free now (the
        System tab's figure) when the tab comes back into view."""
        device = machine.training_device()
        budget = device.budget
        moved = budget and self.budget and abs(budget - self.budget) > BUDGET_MOVE * self.budget
        if device != self.device or moved:
            self.device, self.budget = device, budget
            self.validate()

    def on_show(self) -> None:
        """Focus the preset picker (not a text field, which would take the number keys) when
        the tab comes into view, so its keys work at once; tab moves on through the fields.
        Not the form itself: focusing or leaving a container restyles all it holds (the whole
        form, on every switch to and from the tab). Datasets imported meanwhile join the
        dataset choices."""
        if self.app.focused is None or self.app.focused not in self.query("*"):
            self.query_one("#train-preset").focus()
        dataset = self.query_one("#f-dataset", Select).value
        self._set_datasets("" if dataset is Select.NULL else dataset)
        self._follow_device()
        self._refresh_presets()

    # --- filling the form from a config dict ----------------------------------------------

    async def fill(self, data: dict) -> None:
        """Show `data` (a preset's or the defaults) in the form; it becomes the base the form's
        values go onto, so keys the form has no field for are kept as they were."""
        self.base = data
        for key in form.INPUT_KEYS:
            self.query_one(f"#f-{key.replace('.', '-')}", Input).value = form.text_of(
                form.get(data, key)
            )
        self._set_datasets(form.get(data, form.DATASET))
        self.query_one("#f-backend", Select).value = form.get(data, form.BACKEND)
        self.query_one("#f-schedule", Select).value = form.get(data, form.SCHEDULE)
        self.query_one("#train-stages").display = form.get(data, form.SCHEDULE) == "staged"
        stages = [
            (form.text_of(s["learning_rate"]), form.text_of(s["epochs"]))
            for s in form.get(data, form.STAGES)
        ]
        await self.query_one(StagesEditor).set_stages(stages)
        self.query_one("#f-fit", Checkbox).value = form.get(data, form.FIT) == "auto"
        self.query_one("#f-checkpoint", Checkbox).value = bool(form.get(data, form.CHECKPOINT))
        ticked = form.get(data, form.TARGETS)
        await self.targets.show(self.models.choices(), ticked)
        await self.models.describe(form.get(data, "model"))
        self.validate()

    def _set_datasets(self, current: str) -> None:
        # each with its records, as the tutorial's `医療専門知識データセット (20)` picks it
        labels = {m.name: f"{m.name} ({m.records})" for m in store.list_datasets()}
        if current and current not in labels:
            if refs.looks_like_file(current):
                labels[current] = current  # a preset's file, imported when training starts
            else:
                current = ""  # a stored dataset removed since: the form says to choose one
        select = self.query_one("#f-dataset", Select)
        value = current if current else Select.NULL
        choices = list(labels.items())
        if choices == self._dataset_choices and select.value == value:
            return  # as shown (setting the options re-lays the form out)
        self._dataset_choices = choices
        select.set_options((label, name) for name, label in labels.items())
        select.prompt = "choose a dataset" if labels else "no stored datasets"
        select.value = value
        if value is Select.NULL:  # no change to announce, but the problem shown names the choices
            self.validate()

    @on(ModelField.Described)
    async def _model_described(self, event: ModelField.Described) -> None:
        await self.targets.show(event.facts[1])
        self.validate()

    # --- validation and the memory verdict ----------------------------------------------

    def form_data(self) -> dict:
        """The config dict the form holds now."""
        texts = {box.name: box.value for box in self.inputs}
        dataset = self.query_one("#f-dataset", Select).value
        return form.build(
            self.base,
            texts,
            "" if dataset is Select.NULL else dataset,
            self.query_one("#f-schedule", Select).value,
            form.ordered_targets(
                form.get(self.base, form.TARGETS), self.query_one(TargetBoxes).ticked
            ),
            self.query_one(StagesEditor).stages(),
            self.query_one("#f-fit", Checkbox).value,
            self.query_one("#f-checkpoint", Checkbox).value,
            self.query_one("#f-backend", Select).value,
        )

    def validate(self) -> Config | None:
        """Validate the form with `config.from_dict`; show each problem under its field."""
        self.cfg, by_field, other = form.validate(self.form_data(), self.keys)
        facts = self.models.facts.get(self.cfg.model) if self.cfg else None
        if self.cfg is not None and (problem := layers_problem(self.cfg, (facts or (None,))[0])):
            by_field.setdefault("lora.num_layers", []).append(problem)
            self.cfg = None
        if "data.dataset" in by_field and self.query_one("#f-dataset", Select).value is Select.NULL:
            # the config's words ("'' is not allowed (a dataset name or file)") are about a
            # YAML file; here the dataset is picked from the stored ones, or there are none yet
            by_field["data.dataset"] = [
                "choose a dataset"
                if self._dataset_choices
                else "no datasets yet: import one on the Datasets tab (1, then i)"
            ]
        self._mirror_stages()
        for row in self.rows:
            row.show_problems(by_field.get(row.key, []))
        count = sum(map(len, by_field.values())) + len(other)
        to_fix = f"{counted(count, 'problem')} to fix" if count else ""
        status = "; ".join(other) if other else to_fix
        self._say(
            "#train-status", status or "ready: ctrl+g starts, ctrl+t sweeps, ctrl+s saves as YAML"
        )
        self._say("#train-memory", self._memory_text())
        shape = memory.TrainShape.from_config(self.cfg) if self.cfg else memory.TrainShape()
        budget = config.run_budget(self.cfg, self.budget) if self.cfg else self.budget
        self.models.mark(shape, budget, self.device)
        return self.cfg

    def _mirror_stages(self) -> None:
        """Under staged, the fields the stages set show what they set: the first stage's
        rate and the stages' epochs (they showed values the run ignores)."""
        if self.cfg is None or self.cfg.training.schedule != "staged":
            return
        t = self.cfg.training
        for key, value in zip(STAGED_SETS, (t.stages[0].learning_rate, t.epochs), strict=True):
            self.query_one(f"#f-{key.replace('.', '-')}", Input).value = form.text_of(value)

    def _say(self, selector: str, text: str) -> None:
        """Update a line only when its text changes: an update re-lays the form out."""
        line = self.query_one(selector, Static)
        if line.content != text:
            line.update(text)

    def _memory_text(self) -> str:
        if self.cfg is None:
            return "memory: fix the problems above to see the estimate"
        key = records_key(self.cfg)
        if key not in self.longest:
            self.longest[key] = None
            self._count_longest(self.cfg, key)
        facts = self.models.facts.get(self.cfg.model)
        return form.memory_text(self.cfg, facts, self.budget, self.longest[key])

    @work(exclusive=True, group="train-longest", exit_on_error=False)
    async def _count_longest(self, cfg: Config, key: tuple) -> None:
        """The longest record's tokens from a child, once the form rests a moment (a name
        typed letter by letter is not a child per letter)."""
        try:
            await asyncio.sleep(LONGEST_AFTER)
            self.longest[key] = await count_longest(cfg)
        except asyncio.CancelledError:
            self.longest.pop(key, None)  # counted again when the form comes back to it
            raise
        if self.cfg is not None and records_key(self.cfg) == key:
            self.validate()

    @on(Input.Changed)
    def _input_changed(self) -> None:
        self.validate()

    @on(Checkbox.Changed)
    def _ticked(self) -> None:
        self.validate()

    @on(StagesEditor.Changed)
    def _stages_changed(self) -> None:
        self.validate()

    @on(Select.Changed)
    async def _select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "train-preset":
            await self._load_preset(event.value)
        elif event.select.id == "f-schedule":
            staged = event.value == "staged"
            self.query_one("#train-stages").display = staged
            for key in STAGED_SETS:  # the stages set them: not editable beside them
                self.query_one(f"#f-{key.replace('.', '-')}", Input).disabled = staged
            await self._first_stage()
            self.validate()
        else:
            self.validate()

    async def _first_stage(self) -> None:
        """Switching to staged starts from one stage with the form's rate and epochs."""
        editor = self.query_one(StagesEditor)
        if self.query_one("#f-schedule", Select).value == "staged" and not editor.stages():
            lr = self.query_one("#f-training-learning_rate", Input).value
            await editor.set_stages([(lr, self.query_one("#f-training-epochs", Input).value)])

    async def _load_preset(self, value: str) -> None:
        if value == CUSTOM:
            return
        try:
            cfg = config.load(value)
        except MlxloraError as exc:
            self._say("#train-status", str(exc))
            return
        await self.fill(cfg.to_dict())

    # --- actions --------------------------------------------------------------------------

    def action_start(self) -> None:
        cfg = self.validate()
        if cfg is None:
            return
        from mlxlora import queue, queue_runner
        from mlxlora.prepare import check_references

        try:  # what the run would refuse at its start: a missing dataset or model
            check_references(cfg)
        except MlxloraError as exc:
            self._say("#train-status", str(exc))
            return
        job = queue.add_train(cfg.to_yaml(), cfg.name)
        queue_runner.ensure_runner()
        self._say("#train-status", f"queued {job.name}")
        self.app.action_show_tab("runs")
        self.app.query_one("#runs-tab").follow(job.id)  # not the run selected before

    def action_save_yaml(self) -> None:
        cfg = self.validate()
        if cfg is None:
            return
        self.app.push_screen(SaveYamlDialog(cfg.to_yaml(), f"configs/{cfg.name}.yaml"), self._saved)

    def action_sweep(self) -> None:
        cfg = self.validate()
        if cfg is None:
            self.notify("Fix the form first: it is the sweep's base job", severity="warning")
            return
        self.app.push_screen(SweepDialog(cfg), self._swept)

    def _swept(self, queued: str | None) -> None:
        if queued is not None:
            self._say("#train-status", queued)
            self.app.action_show_tab("runs")

    def _saved(self, path) -> None:
        if path is not None:
            self._say("#train-status", f"saved {path}")
            self._refresh_presets()

    def _refresh_presets(self) -> None:
        """Config files saved or added to configs/ since the tab opened join the presets."""
        options = _preset_options()
        if options == self._presets:
            return
        self._presets = options
        picker = self.query_one("#train-preset", Select)
        chosen = picker.value
        with self.prevent(Select.Changed):  # the form keeps what it shows
            picker.set_options(options)
            picker.value = chosen if any(v == chosen for _, v in options) else CUSTOM

    @on(Button.Pressed, "#train-start")
    def _start_pressed(self) -> None:
        self.action_start()

    @on(Button.Pressed, "#train-sweep")
    def _sweep_pressed(self) -> None:
        self.action_sweep()

    @on(Button.Pressed, "#train-save")
    def _save_pressed(self) -> None:
        self.action_save_yaml()
