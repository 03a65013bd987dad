"""Everything a run needs before its first step: records, model, tokenized examples, step
counts, schedule and a memory estimate. Backend-agnostic; the backend is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mlxlora import schedules
from mlxlora.config import Config
from mlxlora.data import batching
from mlxlora.errors import ConfigError, DataError
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
from mlxlora.run_memory import (
    MemoryGuard,
    fit_config,
    loaded_weights,
    longest_record,
    memory_check,
    resumed_outgrowth,
    train_shape,
    training_budget,
)
from mlxlora.runs import RunPaths

# Says what batching._render_chat does for a tokenizer without a chat template.
NO_CHAT_TEMPLATE = (
    "the model has no chat template: chat records train as plain text, one 'role: content'"
    " line per prompt message, then 'assistant: ' + the answer + EOS"
)


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
    check_layers(cfg, known_info(cfg.model))


def check_layers(cfg: Config, info: dict | None) -> None:
    """Refuses more LoRA layers than the model has, as a config error naming the field."""
    if problem := layers_problem(cfg, info):
        raise ConfigError([f"lora.num_layers: {problem}"], cfg.name)


def layers_problem(cfg: Config, info: dict | None) -> str | None:
    """More LoRA layers than the model has, when its facts (`model_info`) are known: the run
    would refuse it at its start."""
    layers = (info or {}).get("num_hidden_layers")
    if layers and cfg.lora.num_layers > layers:
        return f"{cfg.lora.num_layers} is more than the model's {layers} layers (-1: all)"
    return None


def prepare(cfg: Config, paths: RunPaths | None, backend) -> Prepared:
    from mlxlora.models.info import model_info
    from mlxlora.models.listing import known_info
    from mlxlora.models.resolve import resolve_model

    given, starts = cfg.data, run_starts(paths)
    if paths is not None:  # resuming
        cfg = as_run_started(cfg, paths, starts)
    check_layers(cfg, known_info(cfg.model))  # before the records are stored: nothing is
    train_records, val_records, cfg = load_records(cfg)
    datasets = dataset_digests(cfg.data)
    model_dir = resolve_model(cfg.model)
    info = model_info(model_dir)
    check_layers(cfg, info)  # a model known only once fetched (the backend's check: a guard)
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
        guard = MemoryGuard(budget, info, cfg, backend, outgrew)
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
