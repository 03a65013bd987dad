"""Run configuration: typed dataclasses, YAML loading, `key.sub=value` overrides, validation.
mlxlora.config_build turns the YAML's plain data into the dataclasses.

Validation collects every problem into one ConfigError that names the key, the bad value and
what is allowed. Unknown keys are errors. Imports no mlx, torch or textual.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlxlora import names, targets
from mlxlora.config_build import HOW_TO_WRITE, build
from mlxlora.data.formats import decode_utf8
from mlxlora.errors import ConfigError

SCHEDULES = ("constant", "linear", "cosine", "staged")
QUANTIZED_BASE = ("auto", "keep", "dequantize")
FIT_MODES = ("off", "auto")
_SIZE_UNITS = {
    "B": 1,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def parse_size(text: str) -> int | None:
    """'12GB' -> 12e9 bytes ('1.5 GiB', '512MB', '800000000B' too); None when it is no size.

    A bare number is no size: '12' means 12GB to whoever wrote it, never 12 bytes."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match[2].upper() not in _SIZE_UNITS:
        return None
    return int(float(match[1]) * _SIZE_UNITS[match[2].upper()])


BACKENDS = ("auto", "mlx", "torch")
# The update B @ A has rank at most min(in, out) of the layer it adapts, so a rank above the
# widest model's hidden size (about 16k for Llama 3.1 405B) adds nothing; 65536 leaves room for
# wider models and refuses a mistyped rank before mlx overflows its 32-bit shape.
MAX_LORA_RANK = 2**16
# Each step seeds its dropout with (seed * 1_000_003 + step) * 64 + micro-batch, which
# mx.random.seed takes as an unsigned 64-bit number: a 32-bit seed leaves room for any step.
MAX_SEED = 2**32 - 1
MAX_INT32 = 2**31 - 1


def run_budget(cfg: Config, machine_budget: int | None) -> int | None:
    """Bytes a run of `cfg` may use: its training.memory_budget, else `machine_budget` (what
    the device or machine has)."""
    if cfg.training.memory_budget:
        return parse_size(cfg.training.memory_budget)
    return machine_budget


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class DataConfig:
    """Which records to train on and how to cut them."""

    dataset: str = _help(
        "Workspace dataset name, or a JSON/JSONL file (imported on first use).", ""
    )
    validation: str | None = _help(
        "Validation dataset name or file; None splits the dataset.", None
    )
    val_split: float = _help("Fraction of the dataset held out when `validation` is None.", 0.1)
    max_length: int = _help("Longest sequence in tokens; longer records are truncated.", 2048)
    completions_only: bool = _help("Compute the loss on the answer only, not the prompt.", True)


@dataclass
class LoraConfig:
    """Shape of the LoRA adapter."""

    rank: int = _help("Rank r of the low-rank update.", 8)
    alpha: float = _help("Scaling numerator; the update is scaled by alpha / rank.", 16.0)
    dropout: float = _help("Dropout on the LoRA input, 0 <= dropout < 1.", 0.0)
    target_modules: list[str] = _help(
        "Projections to adapt: short names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,"
        " down_proj), mapped onto fused or renamed modules, or the model's own module names.",
        factory=lambda: ["q_proj", "v_proj"],
    )
    num_layers: int = _help("Adapt the last N transformer blocks; -1 means all.", -1)


@dataclass
class EarlyStoppingConfig:
    """Stop when validation loss stops improving."""

    patience: int = _help("Evaluations without improvement before stopping; 0 disables.", 0)
    min_delta: float = _help("Smallest drop in validation loss that counts as improvement.", 0.0)


@dataclass
class StageConfig:
    """One stage of a staged learning-rate schedule."""

    learning_rate: float = _help("Learning rate during this stage.", 1e-4)
    epochs: float = _help("Length of this stage in epochs.", 1.0)


@dataclass
class TrainingConfig:
    """Optimisation and bookkeeping."""

    learning_rate: float = _help("Peak learning rate (AdamW).", 1e-4)
    epochs: float = _help("Passes over the training set (ignored by staged: stages set it).", 3.0)
    max_steps: int = _help("Stop after this many optimizer steps; 0 means no limit.", 0)
    batch_size: int = _help("Sequences per micro-batch.", 4)
    grad_accumulation: int = _help("Micro-batches per optimizer step.", 1)
    warmup_steps: int = _help("Linear warmup from 0 over this many optimizer steps.", 0)
    schedule: str = _help("constant | linear | cosine | staged (decay after warmup).", "constant")
    stages: list[StageConfig] = _help("Stages for schedule: staged.", factory=list)
    weight_decay: float = _help("AdamW weight decay.", 0.0)
    grad_clip: float = _help("Clip the global gradient norm to this; 0 disables.", 1.0)
    early_stopping: EarlyStoppingConfig = _help(
        "Early stopping on validation loss.", factory=EarlyStoppingConfig
    )
    eval_every: int = _help("Evaluate every N optimizer steps; 0 means once per epoch.", 0)
    val_batches: int = _help("Validation batches per evaluation; -1 means the whole set.", -1)
    log_every: int = _help("Emit a step event every N optimizer steps.", 1)
    seed: int = _help("Seed for data order, splits, LoRA init and dropout.", 0)
    grad_checkpoint: bool = _help("Recompute activations in backward to save memory.", False)
    compile: bool | str = _help(
        "Compile the step: true, false, or auto (nothing yet: no GPU has timed the compiled"
        " step). torch.compile of the transformer blocks (backend torch),"
        " mx.compile of the loss and gradient with batches padded to a multiple of 64 tokens"
        " (backend mlx). The first step of each new shape waits while it compiles; a CPU needs"
        " a C++ compiler.",
        "auto",
    )
    loss_chunk_rows: int = _help(
        "Labelled tokens per chunk of the loss; 0 picks by vocabulary (128 MB of logits).", 0
    )
    fit: str = _help(
        "off | auto: before the run, choose micro-batch, accumulation, grad checkpointing and"
        " loss chunk to fit the memory budget, keeping batch_size x grad_accumulation.",
        "off",
    )
    memory_budget: str = _help(
        "Memory the run may use, e.g. 12GB; empty: this machine's budget. The run checkpoints"
        " and stops before a step would pass it.",
        "",
    )


@dataclass
class Config:
    """A complete, resolved training job."""

    name: str = _help("Run name; the run directory starts with it.", "run")
    model: str = _help("builtin:tiny, an HF repo id, or a local model directory.", "builtin:tiny")
    backend: str = _help("auto | mlx | torch.", "auto")
    quantized_base: str = _help(
        "A quantized base model: keep (QLoRA: least memory, fast on Apple GPUs, slow matmuls on"
        " a CPU), dequantize (float weights), or auto (dequantize on a CPU when they fit).",
        "auto",
    )
    data: DataConfig = _help("Dataset section.", factory=DataConfig)
    lora: LoraConfig = _help("LoRA section.", factory=LoraConfig)
    training: TrainingConfig = _help("Training section.", factory=TrainingConfig)
    samples: list[str] = _help(
        "Held-out prompts the model answers (greedy) before and after training.", factory=list
    )
    sweep: str | None = _help(
        "The sweep this run belongs to (set by `mlxlora sweep`; None for a run of its own).", None
    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def memory_budget_problem(budget: Any) -> str | None:
    """Why `budget` is no memory budget, or None; empty is the machine's budget. Also what
    `train --memory-budget` checks, so its error names the flag rather than a --set."""
    if budget in (None, ""):  # not given
        return None
    if _is_number(budget):  # quoted "12": the same unit message as an unquoted 12
        return f"expected {HOW_TO_WRITE['training.memory_budget']}, got {budget!r}"
    if not (parse_size(budget) or 0) > 0:
        return f"{budget!r} is not allowed (a size above 0 such as 12GB or 512MB)"
    return None


def _check(cfg: Config, problems: list[str]) -> None:
    def need(ok: bool, key: str, value: Any, allowed: str) -> None:
        if not ok:
            problems.append(f"{key}: {value!r} is not allowed ({allowed})")

    t, lo, d = cfg.training, cfg.lora, cfg.data
    name_problem = names.name_problem(cfg.name)
    if name_problem:
        problems.append(f"name: {cfg.name!r} cannot name a run: {name_problem}")
    need(cfg.backend in BACKENDS, "backend", cfg.backend, " | ".join(BACKENDS))
    need(
        cfg.quantized_base in QUANTIZED_BASE,
        "quantized_base",
        cfg.quantized_base,
        " | ".join(QUANTIZED_BASE),
    )
    sweep_problem = names.name_problem(cfg.sweep) if cfg.sweep is not None else None
    if sweep_problem:
        problems.append(f"sweep: {cfg.sweep!r} cannot name a sweep: {sweep_problem}")
    need(bool(cfg.model), "model", cfg.model, "a model reference")
    need(bool(d.dataset), "data.dataset", d.dataset, "a dataset name or file")
    need(0.0 <= d.val_split < 1.0, "data.val_split", d.val_split, "0 <= val_split < 1")
    need(d.max_length >= 8, "data.max_length", d.max_length, ">= 8")
    need(lo.rank >= 1, "lora.rank", lo.rank, ">= 1")
    need(lo.rank <= MAX_LORA_RANK, "lora.rank", lo.rank, f"<= {MAX_LORA_RANK}")
    need(lo.alpha > 0, "lora.alpha", lo.alpha, "> 0")
    need(0.0 <= lo.dropout < 1.0, "lora.dropout", lo.dropout, "0 <= dropout < 1")
    need(lo.num_layers == -1 or lo.num_layers >= 1, "lora.num_layers", lo.num_layers, "-1 or >= 1")
    for m in lo.target_modules:
        need(
            targets.is_module_name(m),
            "lora.target_modules",
            m,
            f"{', '.join(targets.SHORT_NAMES)}, or a module name of the model such as qkv_proj",
        )
    need(bool(lo.target_modules), "lora.target_modules", lo.target_modules, "at least one")
    need(t.learning_rate > 0, "training.learning_rate", t.learning_rate, "> 0")
    need(t.epochs > 0, "training.epochs", t.epochs, "> 0")
    need(t.max_steps >= 0, "training.max_steps", t.max_steps, ">= 0")
    # a negative or huge seed failed the run in a traceback at its first step
    need(0 <= t.seed <= MAX_SEED, "training.seed", t.seed, f"0 to {MAX_SEED}")
    need(t.batch_size >= 1, "training.batch_size", t.batch_size, ">= 1")
    need(t.grad_accumulation >= 1, "training.grad_accumulation", t.grad_accumulation, ">= 1")
    need(t.warmup_steps >= 0, "training.warmup_steps", t.warmup_steps, ">= 0")
    need(t.schedule in SCHEDULES, "training.schedule", t.schedule, " | ".join(SCHEDULES))
    need(t.grad_clip >= 0, "training.grad_clip", t.grad_clip, ">= 0 (0 disables)")
    need(t.weight_decay >= 0, "training.weight_decay", t.weight_decay, ">= 0")
    need(t.eval_every >= 0, "training.eval_every", t.eval_every, ">= 0 (0 = every epoch)")
    need(
        t.val_batches == -1 or t.val_batches >= 1,
        "training.val_batches",
        t.val_batches,
        "-1 or >= 1",
    )
    need(t.loss_chunk_rows >= 0, "training.loss_chunk_rows", t.loss_chunk_rows, ">= 0")
    # mlx slices with 32-bit indices: a larger chunk failed the run in a traceback
    need(
        t.loss_chunk_rows <= MAX_INT32,
        "training.loss_chunk_rows",
        t.loss_chunk_rows,
        f"<= {MAX_INT32}",
    )
    need(t.fit in FIT_MODES, "training.fit", t.fit, " | ".join(FIT_MODES))
    need(t.compile in (True, False, "auto"), "training.compile", t.compile, "auto | true | false")
    if problem := memory_budget_problem(t.memory_budget):
        problems.append(f"training.memory_budget: {problem}")
    need(t.log_every >= 1, "training.log_every", t.log_every, ">= 1")
    need(
        t.early_stopping.patience >= 0,
        "training.early_stopping.patience",
        t.early_stopping.patience,
        ">= 0 (0 disables)",
    )
    need(
        t.early_stopping.min_delta >= 0,
        "training.early_stopping.min_delta",
        t.early_stopping.min_delta,
        ">= 0",
    )
    if t.schedule == "staged":
        need(bool(t.stages), "training.stages", t.stages, "at least one stage for schedule: staged")
    elif t.stages:
        problems.append("training.stages: only used with schedule: staged")
    for i, s in enumerate(t.stages):
        need(s.learning_rate > 0, f"training.stages[{i}].learning_rate", s.learning_rate, "> 0")
        need(s.epochs > 0, f"training.stages[{i}].epochs", s.epochs, "> 0")


def from_dict(data: dict, source: str = "config") -> Config:
    """Build and validate a Config; raise one ConfigError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError(
            [f"expected a mapping at the top level, got {type(data).__name__}"], source
        )
    cfg = build(Config, data, "", problems)
    # A value that failed to coerce kept its default, so checking is safe, but a default can
    # itself be invalid (dataset ""): report each key once.
    failed = {_key(p) for p in problems}
    checked: list[str] = []
    _check(cfg, checked)
    problems += [p for p in checked if not any(_within(_key(p), f) for f in failed)]
    if problems:
        raise ConfigError(problems, source)
    if cfg.training.schedule == "staged":
        cfg.training.epochs = sum(s.epochs for s in cfg.training.stages)
    return cfg


def _key(problem: str) -> str:
    """The key a problem names: 'lora.target_modules[0]: ...' -> 'lora.target_modules'."""
    return problem.split(":", 1)[0].split("[", 1)[0]


def _within(key: str, section: str) -> bool:
    return key == section or key.startswith(section + ".")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`lora.rank=16` -> (["lora", "rank"], 16); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError([f"override {text!r}: expected key.sub=value"], "--set")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"override {text!r}: {part} is not a section"], "--set")
        node[path[-1]] = value
    return data


def load(path: str | Path | None, overrides: list[str] = (), flags: list[str] = ()) -> Config:
    """Read a YAML config (or start from defaults when path is None) and apply overrides (the
    user's --set) and then `flags` (overrides of checked flags such as --fit: not named as a
    --set in the config's problems)."""
    data: dict = {}
    source = source_name(path)  # the file's own problems: the file alone
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(["is a directory, expected a YAML config file"], source)
        if not p.is_file():
            raise ConfigError(["file not found"], source)
        try:
            text = decode_utf8(p.read_bytes())
        except ValueError as exc:  # the line, and what to do
            raise ConfigError([str(exc)], source) from None
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([_yaml_problem(exc)], source) from None
        except RecursionError:  # the parser recurses once per [ or {
            raise ConfigError(
                ["not valid YAML: lists or mappings nested too deeply"], source
            ) from None
    data = apply_overrides(data, [*overrides, *flags])
    cfg = from_dict(data, source_name(path, overrides))
    if path is not None:
        _resolve_relative_files(cfg, Path(path).resolve().parent)
    return cfg


def source_name(path: str | Path | None, overrides: list[str] = ()) -> str:
    """What a config's problems are said of: its file (`config` without one), and the keys
    --set gave it (`tiny.yaml (with --set data.dataset)`): a bad value may be the command
    line's, not the file's."""
    source = str(path) if path else "config"
    if overrides:
        source += f" (with --set {', '.join(o.partition('=')[0] for o in overrides)})"
    return source


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: it keeps the last,
    so `epochs: 6` and, below it, a pasted `epochs: 60` trained 60 epochs without a word."""

    def construct_mapping(self, node, deep=False):
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:  # before `<<:` merges, whose keys may be overridden
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"{key} is given twice (first on line {first_line[key]})",
                    key_node.start_mark,
                )
            first_line[key] = line
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: Exception) -> str:
    """'not valid YAML at line L, column C: what' from a yaml error."""
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if "'\\t'" in what:  # PyYAML's words do not say what to do about an editor's tab
        what += " (YAML indents with spaces, not tabs)"
    if mark is None:
        return f"not valid YAML: {what}"
    return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {what}"


def _resolve_relative_files(cfg: Config, base: Path) -> None:
    """Dataset files in a config are relative to the config file, so presets run from anywhere."""
    for attr in ("dataset", "validation"):
        ref = getattr(cfg.data, attr)
        if ref and ref.endswith((".json", ".jsonl")) and not Path(ref).is_absolute():
            candidate = base / ref
            if candidate.exists():  # normpath: configs/../data.jsonl reads data.jsonl
                setattr(cfg.data, attr, os.path.normpath(candidate))
