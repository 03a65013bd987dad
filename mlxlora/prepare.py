"""Everything a run needs before its first step: records, model, tokenized examples, step
counts, schedule and a memory estimate. Backend-agnostic; the backend is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mlxlora import schedules
from mlxlora.config import Config
from mlxlora.data import batching
from mlxlora.errors import ConfigError, DataError, ModelError
from mlxlora.evaluate import shared_system_prompt
from mlxlora.events import MemoryFit
from mlxlora.fmt import counted
from mlxlora.run_datasets import (
    as_run_started,
    changed_sources,
    dataset_digests,
    run_starts,
    source_files,
)
from mlxlora.runs import RunPaths

# Says what batching._render_chat does for a tokenizer without a chat template.
NO_CHAT_TEMPLATE = (
    "the model has no chat template: chat records train as plain text, one 'role: content'"
    " line per prompt message, then 'assistant: ' + the answer + EOS"
)


@dataclass
class MemoryGuard:
    """The budget of a run (training.memory_budget or the machine's), and the estimate of a
    coming step."""

    budget: int
    info: dict
    config: Config
    backend: object

    def __post_init__(self):
        # the loaded weights do not change while training: summed once, not before every step
        self.weights = self.backend.weight_bytes()

    def step_estimate(self, longest: int):
        """memory.MemoryEstimate of a micro-batch whose longest record has `longest` tokens."""
        from mlxlora import memory

        shape = train_shape(self.config, self.backend, longest)
        return memory.estimate(self.info, shape, weights=self.weights)

    def advice(self, longest: int) -> list[str]:
        from mlxlora import memory_fit

        shape = train_shape(self.config, self.backend, longest)
        return memory_fit.fit_advice(self.step_estimate(longest), self.budget, self.info, shape)


@dataclass
class Prepared:
    """Everything the loop needs, built before the first step."""

    config: Config
    paths: RunPaths | None  # None until the run directory is created, after preparation
    backend: object
    train: list
    val: list
    steps_per_epoch: int
    total_steps: int
    schedule: object
    truncated: int
    warnings: list[str]
    estimated_peak_gb: float
    model_dir: Path  # the local HF-format directory the model reference resolved to
    datasets: dict[str, str]  # the stored datasets it trains and validates on: name -> sha256
    sources: dict[str, str]  # config field -> the file it named (absolute), where it did
    fit: MemoryFit | None = None  # what training.fit chose, for the run's events
    guard: MemoryGuard | None = None  # the budget a step must not pass (training.memory_budget)
    system_prompt: str | None = None  # the one every training record opens with, if they share it


def load_records(cfg: Config) -> tuple[list[dict], list[dict], Config]:
    """Normalized (train, validation) records for a config, and the config with its datasets
    pinned: `data.dataset` and `data.validation` name the workspace datasets they resolved to.

    A dataset file is imported into the workspace on first use (refs.resolve), where its
    records never change (other records from the same file go under another name): a run's
    pinned config resumes and evaluates on the records it trained on, even after the file
    was edited, moved or deleted.
    """
    from mlxlora.data import formats, refs

    meta, records = for_field("data.dataset", refs.resolve, cfg.data.dataset)
    train = [formats.normalize(r, meta.type) for r in records]
    pinned = replace(cfg, data=replace(cfg.data, dataset=meta.name))
    if cfg.data.validation:
        vmeta, vrecords = for_field("data.validation", refs.resolve, cfg.data.validation)
        val = [formats.normalize(r, vmeta.type) for r in vrecords]
        return train, val, replace(pinned, data=replace(pinned.data, validation=vmeta.name))
    _check_split(meta.name, len(train), cfg.data.val_split)
    return *batching.split(train, cfg.data.val_split, cfg.training.seed), pinned


def _check_split(dataset: str, n_records: int, val_split: float) -> None:
    """DataError when the split's rounding up takes every record (2 records, val_split 0.9)."""
    if batching.validation_count(n_records, val_split) >= n_records:
        raise DataError(
            f"{dataset}: data.val_split={val_split} sets all {n_records} records aside for "
            "validation, leaving none to train on; lower it or set data.validation"
        )


def for_field(key: str, read, ref: str):
    """read(ref), its DataError naming the config field that gave `ref` and, for a relative
    file that is not there, where a config's paths are read from."""
    try:
        return read(ref)
    except DataError as exc:
        path = Path(ref)
        missing = ref.lower().endswith((".json", ".jsonl")) and not path.exists()
        hint = "; a config reads a relative path from its own folder" if missing else ""
        raise DataError(f"{key}: {exc}{hint}") from None


def check_references(cfg: Config) -> None:
    """The datasets and the model `cfg` names exist and load, checked without storing,
    building or downloading anything: a job is refused before it is queued, not when it runs."""
    from mlxlora.data import refs
    from mlxlora.models.listing import known_info
    from mlxlora.models.resolve import check_model

    for key, ref in (("data.dataset", cfg.data.dataset), ("data.validation", cfg.data.validation)):
        if ref:
            _, records = for_field(key, refs.peek, ref)
            if key == "data.dataset" and not cfg.data.validation:
                _check_split(ref, len(records), cfg.data.val_split)
    check_model(cfg.model)
    if problem := layers_problem(cfg, known_info(cfg.model)):
        raise ConfigError([f"lora.num_layers: {problem}"], cfg.name)


def layers_problem(cfg: Config, info: dict | None) -> str | None:
    """More LoRA layers than the model has, when its facts (`model_info`) are known: the run
    would refuse it at its start."""
    layers = (info or {}).get("num_hidden_layers")
    if layers and cfg.lora.num_layers > layers:
        return f"{cfg.lora.num_layers} is more than the model's {layers} layers (-1: all)"
    return None


def prepare(cfg: Config, paths: RunPaths | None, backend) -> Prepared:
    from mlxlora.models.resolve import resolve_model

    given, starts = cfg.data, run_starts(paths)
    if paths is not None:  # resuming
        cfg = as_run_started(cfg, paths, starts)
    train_records, val_records, cfg = load_records(cfg)
    datasets = dataset_digests(cfg.data)
    model_dir = resolve_model(cfg.model)
    fit = None
    outgrew = resumed_outgrowth(paths)
    if cfg.training.fit == "auto":
        cfg, fit = fit_config(cfg, model_dir, backend, outgrew)
    backend.load(model_dir, cfg)
    d, t = cfg.data, cfg.training
    tok = backend.tokenizer
    train, truncated, dropped = batching.encode_all(
        train_records, tok, d.max_length, d.completions_only
    )
    val, _, _ = batching.encode_all(val_records, tok, d.max_length, d.completions_only)
    if not train:
        raise DataError(f"{d.dataset}: no record fits data.max_length={d.max_length}")
    effective = t.batch_size * t.grad_accumulation
    steps_per_epoch = batching.micro_batches_per_epoch(len(train), effective)
    total = max(1, round(t.epochs * steps_per_epoch))
    if t.max_steps:
        total = min(total, t.max_steps)
    longest = max(len(e.tokens) for e in train + val)
    estimated_gb, warnings = memory_check(cfg, model_dir, backend, longest)
    if fit is not None and not fit.fits and (warnings or outgrew > 1.0):
        # it would fail at its first step, or (a resume) at the rate its steps so far grew
        why = f"; at the longest record ({longest} tokens) the {warnings[0]}" if warnings else ""
        raise ConfigError([f"training.fit=auto: {fit.reason}{why}"])
    warnings += backend.lora_targets.warnings() + ignored_settings(cfg, model_dir, backend)
    if not getattr(tok, "chat_template", None) and any(
        "messages" in r for r in train_records + val_records
    ):
        warnings.append(NO_CHAT_TEMPLATE)
    if truncated:
        warnings.append(
            f"{counted(truncated, 'record')} longer than max_length={d.max_length}"
            f" {'was' if truncated == 1 else 'were'} truncated"
        )
    if dropped:
        warnings.append(
            f"{counted(dropped, 'record')} had no answer tokens within max_length and"
            f" {'was' if dropped == 1 else 'were'} skipped"
        )
    warnings += setup_warnings(cfg, len(train), len(val)) + changed_sources(given, cfg.data, starts)
    guard = None
    budget = training_budget(cfg, backend)
    if budget:  # training.memory_budget, else this device's or machine's
        from mlxlora.models.info import model_info

        guard = MemoryGuard(budget, model_info(model_dir), cfg, backend)
        backend.limit_memory(budget)
    return Prepared(
        config=cfg,
        paths=paths,
        datasets=datasets,
        sources=source_files(given),
        backend=backend,
        train=train,
        val=val,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        schedule=schedules.build(t, steps_per_epoch, total),
        truncated=truncated,
        warnings=warnings,
        estimated_peak_gb=estimated_gb,
        model_dir=model_dir,
        fit=fit,
        guard=guard,
        system_prompt=shared_system_prompt(train_records),
    )


def setup_warnings(cfg: Config, n_train: int, n_val: int) -> list[str]:
    """Settings that would silently do nothing or less than they say with this data."""
    t, warnings = cfg.training, []
    if not n_val and t.early_stopping.patience:
        split_off = not cfg.data.validation and cfg.data.val_split <= 0
        why = "data.val_split is 0" if split_off else "no validation record is left"
        warnings.append(
            f"no validation set ({why}): training.early_stopping.patience="
            f"{t.early_stopping.patience} does nothing; set data.val_split or data.validation"
        )
    if t.batch_size > n_train:
        warnings.append(
            f"training.batch_size={t.batch_size} is larger than the {n_train} training records: "
            f"every batch holds {n_train}"
        )
    return warnings


def memory_check(cfg: Config, model_dir: Path, backend, longest: int) -> tuple[float, list[str]]:
    """Estimated peak (GB) for the longest batch, and advice when it exceeds the budget."""
    from mlxlora import memory, memory_fit
    from mlxlora.models.info import model_info

    info = model_info(model_dir)
    shape = train_shape(cfg, backend, longest)
    est = memory.estimate(info, shape, weights=backend.weight_bytes())
    budget = training_budget(cfg, backend)
    if not budget or est.total <= budget:
        return est.total / 1e9, []
    given = "of training.memory_budget" if cfg.training.memory_budget else "this device can use"
    head = (
        f"estimated peak memory {memory.fmt_bytes(est.total)} exceeds the "
        f"{memory.fmt_bytes(budget)} {given}; try: "
    )
    return est.total / 1e9, [head + "; ".join(memory_fit.fit_advice(est, budget, info, shape))]


def train_shape(cfg: Config, backend, longest: int):
    """The memory.TrainShape of `cfg` as `backend` trains it, for batches up to `longest`."""
    from dataclasses import replace

    from mlxlora import memory

    shape = memory.TrainShape.from_config(cfg)
    if backend.info.device.startswith("cpu"):
        shape = memory.on_cpu(shape)
    length = min(longest, cfg.data.max_length)
    length += -length % backend.info.pad_multiple
    return replace(
        shape,
        max_length=length,
        attention=backend.info.attention,
        evaluation=backend.info.evaluation,
    )


def training_budget(cfg: Config, backend) -> int | None:
    """Bytes the run may use: training.memory_budget, else what the device or machine has."""
    from mlxlora.config import run_budget

    return run_budget(cfg, device_budget(backend))


def device_budget(backend) -> int | None:
    """Bytes training may use on the backend's device (a GPU's own memory), else the machine's."""
    from mlxlora import machine

    return backend.info.memory_budget_bytes or machine.memory_budget()


def planned_weights(cfg: Config, info: dict, backend) -> int:
    """Bytes the weights will take once loaded on `backend`, before loading
    (memory_weights.planned_weights)."""
    from mlxlora import memory_weights

    on_cpu = backend.info.device.startswith("cpu")
    return memory_weights.planned_weights(info, cfg.quantized_base, on_cpu, backend.info.name)


def loaded_weights(cfg: Config, info: dict, backend) -> int:
    """The model's parameters once loaded, as the run counts them: the planned base weights and
    the LoRA layers' (memory_weights.lora_weight_bytes). A dry run and a fit say what the run
    will."""
    from mlxlora import memory, memory_weights

    shape = memory.TrainShape.from_config(cfg)
    return planned_weights(cfg, info, backend) + memory_weights.lora_weight_bytes(info, shape)


def ignored_settings(cfg: Config, model_dir: Path, backend) -> list[str]:
    """Settings this backend cannot follow for this model, said rather than silently dropped."""
    if backend.info.name != "torch" or cfg.quantized_base != "keep":
        return []
    from mlxlora.backends.torch_peft import is_mlx_quantized

    if not is_mlx_quantized(model_dir):  # float, or bitsandbytes 4-bit: torch keeps that
        return []
    return [
        "quantized_base=keep is ignored: backend torch trains MLX-quantized weights from a"
        " float copy"
    ]


def resumed_outgrowth(paths: RunPaths | None) -> float:
    """memory_fit.outgrowth of the run being resumed (1 for a new run)."""
    from mlxlora.events import read_events
    from mlxlora.memory_fit import outgrowth

    return outgrowth(read_events(paths.events)) if paths and paths.events.is_file() else 1.0


def fit_config(cfg: Config, model_dir: Path, backend, outgrew: float = 1.0):
    """`cfg` with the fastest micro-batch, accumulation, checkpointing and loss chunk that fit
    the budget (memory_fit.fit_shape) at data.max_length, and the event that says why.
    `outgrew`: how far a resumed run's steps outgrew their estimate; the estimates must fit
    the budget at that rate."""
    from mlxlora import memory_fit
    from mlxlora.config import from_dict
    from mlxlora.memory import fmt_bytes
    from mlxlora.models.info import model_info

    info = model_info(model_dir)
    budget = training_budget(cfg, backend)
    if not budget:
        return cfg, None
    shape = train_shape(cfg, backend, cfg.data.max_length)
    weights = loaded_weights(cfg, info, backend)
    fit = memory_fit.fit_shape(info, shape, int(budget / outgrew), weights=weights)
    reason = fit.reason
    if outgrew > 1.0:
        reason += (
            f" (its steps so far peaked at {outgrew:.2f}x their estimate: fitted to "
            f"{fmt_bytes(budget / outgrew)} of the {fmt_bytes(budget)} budget)"
        )
    changes = fit.changes(shape)
    data = cfg.to_dict()
    for key, value in changes.items():
        section, name = key.split(".")
        data[section][name] = value
    event = MemoryFit(budget, int(fit.estimate.total * outgrew), changes, fit.fits, reason)
    return from_dict(data), event


def longest_record(cfg: Config, model_dir: Path) -> int:
    """Tokens of the longest record in the config's datasets as training encodes them (at most
    data.max_length), counted with the model's tokenizer without loading the model or storing
    a file; data.max_length when the tokenizer cannot be read."""
    from mlxlora.data import formats, refs
    from mlxlora.models.info import tokenizer_of

    d, encode = cfg.data, batching.encode
    try:
        tokenizer = tokenizer_of(model_dir, cfg.model)
    except ModelError:
        return d.max_length
    longest = 0
    for ref in filter(None, (d.dataset, d.validation)):
        kind, records = refs.peek(ref)
        for record in records:
            example = encode(formats.normalize(record, kind), tokenizer, d.completions_only)
            longest = max(longest, len(example.tokens))
    return min(longest, d.max_length) or d.max_length


def memory_plan(cfg: Config, backend) -> dict:
    """What a run of `cfg` would hold at its longest record (`longest_record`), without
    loading the model: the estimate's breakdown, the budget, the verdict, the fit
    (training.fit, planned at data.max_length as the run plans it) and advice."""
    from mlxlora import memory, memory_fit
    from mlxlora.models.info import model_info
    from mlxlora.models.resolve import resolve_model

    model_dir = resolve_model(cfg.model)
    fit = None
    if cfg.training.fit == "auto":
        cfg, fit = fit_config(cfg, model_dir, backend)
    info = model_info(model_dir)
    longest = longest_record(cfg, model_dir)
    shape = train_shape(cfg, backend, longest)
    est = memory.estimate(info, shape, weights=loaded_weights(cfg, info, backend))
    budget = training_budget(cfg, backend)
    verdict = memory.fit_verdict(est.total, budget)
    advice = memory_fit.fit_advice(est, budget, info, shape) if verdict == "will not fit" else []
    return {
        "config": cfg,
        "length": shape.max_length,  # the longest record's tokens, padded as the backend pads
        "estimate": est,
        "budget": budget,
        "verdict": verdict,
        "fit": fit,
        "advice": advice,
        "warnings": ignored_settings(cfg, model_dir, backend),
    }
