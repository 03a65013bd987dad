"""What the Train form edits, with no widgets: the config keys of its fields, the dict it
builds for `config.from_dict` (the one validation there is), the problems of that validation
mapped back to fields, and the memory verdict of a valid config."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path

from mlxlora import config, machine, memory, memory_fit, memory_weights
from mlxlora.config import Config
from mlxlora.errors import ConfigError

# Taken as typed; every other field is read as YAML, as `--set key=value` reads it.
TEXT_KEYS = ("name", "model")
TARGETS = "lora.target_modules"
STAGES = "training.stages"
SCHEDULE = "training.schedule"
DATASET = "data.dataset"
FIT = "training.fit"
CHECKPOINT = "training.grad_checkpoint"
BACKEND = "backend"

# (section title, ((config key, label), ...)): the fields typed into an Input.
SECTIONS = (
    ("LoRA", (
        ("lora.rank", "rank"),
        ("lora.alpha", "alpha"),
        ("lora.dropout", "dropout"),
        ("lora.num_layers", "layers"),
    )),
    ("Training", (
        ("training.learning_rate", "learning rate"),
        ("training.epochs", "epochs"),
        ("training.batch_size", "batch size"),
        ("training.grad_accumulation", "accumulation"),
        ("data.max_length", "max length"),
        ("training.warmup_steps", "warmup steps"),
        ("training.max_steps", "max steps"),
        ("training.weight_decay", "weight decay"),
        ("training.grad_clip", "grad clip"),
        ("data.val_split", "val split"),
        ("training.eval_every", "eval every"),
        ("training.memory_budget", "memory budget"),
    )),
    ("Early stopping and seed", (
        ("training.early_stopping.patience", "patience"),
        ("training.early_stopping.min_delta", "min delta"),
        ("training.seed", "seed"),
    )),
)  # fmt: skip
INPUT_KEYS = ("name", "model", *(key for _, fields in SECTIONS for key, _ in fields))


def get(data: dict, key: str):
    """`data["lora"]["rank"]` for "lora.rank"."""
    for part in key.split("."):
        data = data[part]
    return data


def put(data: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def help_text(key: str) -> str:
    """The config field's own help (the dataclass metadata `mlxlora train --help` shows)."""
    cls = Config
    *parents, last = key.split(".")
    for part in parents:
        cls = {f.name: f.default_factory for f in dataclasses.fields(cls)}[part]
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}[last]


def text_of(value) -> str:
    """A value as a field shows it: a whole float as the YAML wrote it (`epochs: 5` showed
    5.0, `alpha: 32` 32.0: the config holds them as floats)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def parse_value(text: str):
    """A typed value as `--set` reads it (YAML): "8" -> 8, "5e-5" stays text for from_dict."""
    return config.parse_override(f"value={text}")[1]


def default_data(dataset: str = "") -> dict:
    """A new job: Config's defaults, on `dataset`."""
    data = Config().to_dict()
    data["data"]["dataset"] = dataset
    return data


def build(
    base: dict,
    texts: dict[str, str],
    dataset: str,
    schedule: str,
    targets: list[str],
    stages: list[tuple[str, str]],
    fit: bool = False,
    checkpoint: bool = False,
    backend: str = "auto",
) -> dict:
    """The config dict of the form: `base` (a preset, or defaults) with the form's values."""
    data = copy.deepcopy(base)
    put(data, BACKEND, backend)
    put(data, FIT, "auto" if fit else "off")
    put(data, CHECKPOINT, checkpoint)
    for key, text in texts.items():
        put(data, key, text if key in TEXT_KEYS else parse_value(text))
    put(data, DATASET, dataset)
    put(data, SCHEDULE, schedule)
    put(data, TARGETS, targets)
    staged = [{"learning_rate": parse_value(lr), "epochs": parse_value(ep)} for lr, ep in stages]
    put(data, STAGES, staged if schedule == "staged" else [])
    return data


def field_of(problem: str, keys: tuple[str, ...]) -> str | None:
    """The field a problem is about, by the key it starts with (the longest that matches):
    'training.stages[1].epochs: ...' -> 'training.stages'."""
    head = problem.split(": ", 1)[0]
    for key in sorted(keys, key=len, reverse=True):
        if head == key or head.startswith((key + ".", key + "[")):
            return key
    return None


def validate(data: dict, keys: tuple[str, ...]) -> tuple[Config | None, dict[str, list[str]], list]:
    """(the Config or None, problems by field key, problems no field owns)."""
    try:
        return config.from_dict(data, "form"), {}, []
    except ConfigError as exc:
        problems = exc.problems
    by_field: dict[str, list[str]] = {}
    other = []
    for problem in problems:
        key = field_of(problem, keys)
        if key is None:
            other.append(problem)
        else:
            by_field.setdefault(key, []).append(problem)
    return None, by_field, other


def ordered_targets(previous: list[str], checked: list[str]) -> list[str]:
    """The checked targets in the order the config listed them, new ones after: a preset
    saved unchanged keeps its list as it was."""
    return [t for t in previous if t in checked] + [t for t in checked if t not in previous]


def presets(directory: Path) -> list[Path]:
    """Every config file in `directory`, by name."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def preset_dir() -> Path:
    """`configs/` where mlxlora runs, else the one beside the package (a source checkout)."""
    here = Path.cwd() / "configs"
    return here if here.is_dir() else Path(__file__).resolve().parents[4] / "configs"


VERDICT_STYLE = {"fits": "green", "tight": "yellow", "will not fit": "red"}


@dataclass(frozen=True)
class MemoryVerdict:
    total: int
    budget: int | None
    verdict: str  # memory.fit_verdict's
    advice: list[str]
    breakdown: list[tuple[str, int]] = ()  # memory.MemoryEstimate.breakdown(), total last
    fit: str = ""  # what training.fit=auto would choose, when the job will not fit as it is

    def line(self) -> str:
        budget = f" of a {memory.fmt_bytes(self.budget)} budget" if self.budget else ""
        return f"memory ~{memory.fmt_bytes(self.total)}{budget}: {self.verdict}"

    def parts(self) -> str:
        """'weights 513 MiB · LoRA + optimizer ... · framework overhead ...' (no total)."""
        rows = [(label.split(" (")[0], n) for label, n in self.breakdown[:-1]]
        return " · ".join(f"{label} {memory.fmt_bytes(n)}" for label, n in rows)


def memory_text(
    cfg: Config, facts: tuple | None, machine_budget: int | None, longest: int | None = None
) -> str:
    """The Train tab's memory lines for a valid `cfg` whose model's facts (`models.describe`)
    are `facts` (None while they are read): the verdict, its breakdown, what fit would choose
    and what to change. `longest`: the tokens of the dataset's longest record, as a
    `train --dry-run` child counted them (None until it has: records of data.max_length)."""
    if facts is None:
        return "memory: reading the model…"
    if facts[0] is None:
        return f"memory: unknown ({facts[2]})"
    verdict = memory_verdict(cfg, facts[0], machine_budget, longest)
    style = VERDICT_STYLE.get(verdict.verdict, "")
    text = f"[{style}]{verdict.line()}[/]" if style else verdict.line()
    sized = (
        f"the longest record, {longest} tokens"
        if longest and longest < cfg.data.max_length
        else f"records of {cfg.data.max_length} tokens"
    )
    text += f"\n[dim]{sized}: {verdict.parts()}[/]"
    if verdict.fit:
        text += f"\n{verdict.fit}"
    advice = "; ".join(verdict.advice)
    return text + (f"\ntry: {advice}" if advice else "")


def memory_verdict(
    cfg: Config, info: dict, machine_budget: int | None, longest: int | None = None
) -> MemoryVerdict:
    """The engine's estimate of `cfg` on the device its backend trains on, at its longest
    record (`longest` tokens, else data.max_length; training.fit plans at data.max_length as
    the run does), its verdict against the run's budget (`machine_budget`: `auto`'s
    device's), what to change, and what training.fit would choose when it will not fit."""
    device = machine.training_device(cfg.backend)
    if device != machine.training_device():  # another backend than auto's: its own device
        machine_budget = device.budget
    budget = config.run_budget(cfg, machine_budget)
    shape = memory.shape_here(memory.TrainShape.from_config(cfg), device)
    weights = memory_weights.weights_here(
        info, shape, quantized_base=cfg.quantized_base, backend=cfg.backend, device=device
    )
    if cfg.training.fit == "auto" and budget:
        return _fitted_verdict(info, shape, budget, weights)
    if longest:
        shape = replace(shape, max_length=min(longest, shape.max_length))
    est = memory.estimate(info, shape, weights=weights)
    verdict = memory.fit_verdict(est.total, budget)
    advice, fit = [], ""
    if verdict == "will not fit":
        advice = memory_fit.fit_advice(est, budget, info, shape)
        chosen = memory_fit.fit_shape(info, shape, budget, weights=weights)
        if chosen.fits:
            changes = " ".join(f"{k}={v}" for k, v in chosen.changes(shape).items())
            total = memory.fmt_bytes(chosen.estimate.total)
            fit = f"training.fit=auto fits it: {changes} (~{total}); tick 'fit to memory'"
    return MemoryVerdict(est.total, budget, verdict, advice, est.breakdown(), fit)


def _fitted_verdict(
    info: dict, shape: memory.TrainShape, budget: int, weights: int
) -> MemoryVerdict:
    """With training.fit=auto the run starts as the engine's fit chooses: that is the verdict."""
    chosen = memory_fit.fit_shape(info, shape, budget, weights=weights)
    est = chosen.estimate
    verdict = memory.fit_verdict(est.total, budget)
    changes = " ".join(f"{k}={v}" for k, v in chosen.changes(shape).items()) or "nothing"
    fit = f"fit: auto changes {changes}" if chosen.fits else f"fit: auto cannot: {chosen.reason}"
    advice = [] if chosen.fits else memory_fit.fit_advice(est, budget, info, chosen.shape)
    return MemoryVerdict(est.total, budget, verdict, advice, est.breakdown(), fit)
