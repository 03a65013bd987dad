"""Generation and perplexity for a model reference, optionally through a trained adapter, and
`evaluate_run`: a trained run's held-out loss and scored answers (eval.json).

`adapter` is a run (name prefix or directory, see `mlxlora.runs.find_run`: its latest adapter in
`adapters/`) or an adapter directory (`adapters.safetensors` + `adapter_config.json`, e.g. a
run's `adapters/best`). With a run and no model, the run's own model is used. Imports no mlx or
torch at module level; the backend is loaded on the first call.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from mlxlora.errors import ModelError, RunError
from mlxlora.fmt import counted
from mlxlora.runs import ADAPTER_FILES, is_run_dir


@dataclass(frozen=True)
class AdapterRef:
    path: Path  # the adapter directory
    run: Path | None  # the run it belongs to, if any
    model: str | None  # that run's model reference
    backend: str  # that run's backend (auto when unknown)


def is_adapter_dir(path: Path) -> bool:
    """Whether `path` holds a saved adapter (mlx-lm's layout)."""
    return all((path / f).is_file() for f in ADAPTER_FILES)


def _run_config(run: Path) -> tuple[str | None, str]:
    from mlxlora import config
    from mlxlora.runs import RunPaths

    cfg = config.load(RunPaths(run).config)
    return cfg.model, cfg.backend


def _base_model(adapter: Path) -> str | None:
    from mlxlora.runs import read_json

    return read_json(adapter / "adapter_config.json").get("base_model")


def _check_adapter_config(adapter: Path) -> None:
    """Refuse an adapter_config.json (a hand-written one) that lacks a key mlx-lm's
    load_adapters reads with no default: it ended in an AttributeError or a KeyError."""
    path = adapter / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # cut short by a copy, or edited by hand
        config = None
    if not isinstance(config, dict):
        raise RunError(f"{path}: not a JSON object; the adapter cannot be read")
    if config.get("fine_tune_type", "lora") == "full":  # full weights: no LoRA settings
        return
    missing = [key for key in ("num_layers", "lora_parameters") if key not in config]
    params = config.get("lora_parameters")
    if isinstance(params, dict):
        missing += [f"lora_parameters.{k}" for k in ("rank", "scale", "dropout") if k not in params]
    if missing:
        raise RunError(f"{path}: no {', '.join(missing)} (mlx-lm needs it to load the adapter)")


def resolve_adapter(ref: str) -> AdapterRef:
    """The adapter directory a `--adapter` argument names, and its run's model if it has one."""
    from mlxlora.atomic import restore_aside
    from mlxlora.runs import RunPaths, find_run, refuse_blank

    refuse_blank(ref)
    path = Path(ref).expanduser()
    if RunPaths(path.parent.parent).best == path and is_run_dir(path.parent.parent):
        restore_aside(path)  # a run's best/, where a killed swap left it aside
    if path.is_dir() and is_adapter_dir(path) and not (path / "config.yaml").exists():
        # an adapter directory; inside a run (adapters/, adapters/best, a checkpoint)?
        run = next((p for p in path.resolve().parents if (p / "config.yaml").is_file()), None)
        if run is not None and run not in path.resolve().parents[:3]:
            run = None
        # outside a run, a merged adapter names its base (`mlxlora merge` writes base_model)
        model, backend = _run_config(run) if run else (_base_model(path), "auto")
        _check_adapter_config(path)
        return AdapterRef(path.resolve(), run, model, backend)
    try:
        run = find_run(ref)
    except RunError:
        if path.is_dir():
            raise RunError(
                f"{ref}: neither a run nor an adapter directory "
                f"(an adapter directory holds {' and '.join(ADAPTER_FILES)})"
            ) from None
        raise
    adapters = RunPaths(run).adapters
    if not is_adapter_dir(adapters):
        raise RunError(f"{run}: no adapter saved yet (nothing in {adapters})")
    model, backend = _run_config(run)
    _check_adapter_config(adapters)
    return AdapterRef(adapters.resolve(), run, model, backend)


def load_generator(
    model_ref: str | None,
    adapter: str | None = None,
    progress: bool = True,
    backend: str | None = None,
):
    """(generator, model directory, adapter directory or None) for a model and/or adapter, on
    `backend` (auto | mlx | torch; default: the adapter run's backend, else auto)."""
    from mlxlora.backends import select
    from mlxlora.models.resolve import resolve_model

    found = resolve_adapter(adapter) if adapter is not None else None  # "": refused
    ref = model_ref or (found.model if found else None)
    if not ref:
        if found is not None:
            raise ModelError(
                f"{adapter}: an adapter directory outside a run; say which model it was "
                "trained on with --model"
            )
        raise ModelError("give a model (--model REF) or a trained run (--adapter RUN)")
    model_dir = resolve_model(ref, progress=progress)
    backend = backend or (found.backend if found else "auto")
    adapter_dir = found.path if found else None
    return select.generator(backend, model_dir, adapter_dir), model_dir, adapter_dir


def messages_for(prompt: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}]


def shared_system_prompt(records: list[dict]) -> str | None:
    """The system message every record opens with, where they all open with the same one (a
    run's samples are asked as its records ask); None where any record has none or another."""
    openings = {_opening_system(record) for record in records}
    return openings.pop() if len(openings) == 1 else None


def _opening_system(record: dict) -> str | None:
    first = (record.get("messages") or [{}])[0]
    return first.get("content") if first.get("role") == "system" else None


def generate(
    model_ref: str | None,
    prompt: str,
    adapter: str | None = None,
    max_tokens: int = 100,
    system: str | None = None,
    progress: bool = True,
    backend: str | None = None,
    **options,
) -> str:
    """The model's answer to `prompt` (chat template applied unless `raw`); `options`: the
    generator's raw, temperature (0: greedy, the default) and seed."""
    gen, _, _ = load_generator(model_ref, adapter, progress, backend)
    return gen.generate(messages_for(prompt, system), max_tokens=max_tokens, **options)


def generate_stream(
    model_ref: str | None,
    prompt: str,
    adapter: str | None = None,
    max_tokens: int = 100,
    system: str | None = None,
    progress: bool = True,
    backend: str | None = None,
    **options,
) -> Iterator[dict]:
    """`generate`'s answer as events while it is generated: `{"type": "token", "text": piece}`
    per piece, then `{"type": "done", "text": the whole answer, "prompt_tokens",
    "generation_tokens", "tokens_per_sec", "finish_reason"}`."""
    gen, _, _ = load_generator(model_ref, adapter, progress, backend)
    pieces = []
    for piece in gen.stream(messages_for(prompt, system), max_tokens=max_tokens, **options):
        pieces.append(piece)
        if piece:  # the closing response of a turn carries no text
            yield {"type": "token", "text": piece}
    stats = gen.last_stats
    yield {
        "type": "done",
        "text": "".join(pieces),
        "prompt_tokens": stats["prompt_tokens"],
        "generation_tokens": stats["generation_tokens"],
        "tokens_per_sec": stats.get("generation_tps"),
        "finish_reason": stats.get("finish_reason"),
    }


def perplexity(
    model_ref: str | None, text: str, adapter: str | None = None, progress: bool = True
) -> float:
    """Perplexity of `text` under the model (with the adapter, if given)."""
    gen, _, _ = load_generator(model_ref, adapter, progress)
    return gen.perplexity(text)


# --- `mlxlora eval`: a trained run measured on held-out data -----------------------------------

DEFAULT_TERMS = "medical"


def held_out_records(cfg, dataset: str | None) -> tuple[list[dict], str, str]:
    """(normalized records, split, dataset name): a stored dataset or file when given, else
    the run's own validation split (data.validation, or the val_split that training held out,
    drawn with the same seed)."""
    from mlxlora.data import formats, refs
    from mlxlora.prepare import load_records

    if dataset is not None:  # "" too: refused by name, not read as "the run's own"
        meta, records = refs.resolve(dataset)
        return [formats.normalize(r, meta.type) for r in records], "dataset", meta.name
    _, val, pinned = load_records(cfg)
    if not val:
        raise RunError(
            f"{cfg.name}: the run held out no validation records (data.val_split is 0 and no "
            "data.validation); evaluate it on a dataset with --dataset"
        )
    return val, "validation", pinned.data.dataset


def held_out_loss(gen, records: list[dict], cfg) -> tuple[float, float]:
    """(mean validation loss per labelled token, perplexity), batched as training evaluates."""
    from mlxlora import metrics
    from mlxlora.data import batching
    from mlxlora.errors import DataError

    d, t = cfg.data, cfg.training
    examples, _, _ = batching.encode_all(records, gen.tokenizer, d.max_length, d.completions_only)
    if not examples:
        raise DataError(f"no held-out record fits data.max_length={d.max_length}")
    total, tokens = 0.0, 0
    for idx in batching.batch_order(examples, t.batch_size, t.seed, 0):
        loss, n = gen.eval_loss(batching.collate([examples[i] for i in idx]))
        total, tokens = total + loss, tokens + n
    val_loss = total / max(tokens, 1)
    return val_loss, metrics.perplexity(val_loss)


def _questions(records: list[dict]) -> list[tuple[list[dict], str]]:
    """(prompt messages, reference answer) of each chat record that ends in an answer."""
    return [
        (r["messages"][:-1], r["messages"][-1]["content"])
        for r in records
        if "messages" in r and len(r["messages"]) > 1 and r["messages"][-1]["role"] == "assistant"
    ]


@dataclass(frozen=True)
class Sampling:
    """The answers drawn besides the greedy one for the consistency score: `samples` per
    question (0: none, no score), at `temperature`, the j-th with seed `seed + j`, so the same
    flags give the same answers (`seed` None: the run's training.seed)."""

    samples: int = 3
    temperature: float = 0.7
    seed: int | None = None

    def draw(self, gen, messages: list[dict], max_tokens: int) -> list[str]:
        return [
            gen.generate(messages, max_tokens=max_tokens, temperature=self.temperature, seed=seed)
            for seed in range(self.seed, self.seed + self.samples)
        ]


def _measure(model_ref, adapter, records, cfg, max_tokens, sampling, say):
    """(val_loss and perplexity, greedy answers to the records' questions, each question's
    sampled answers) of one model, on the backend the run trained with (`cfg.backend`): the
    base too, which `auto` loaded on MLX beside a torch run's tuned model (a bitsandbytes
    base, which MLX refuses, failed `eval --base`)."""
    from mlxlora import scoring

    who = "tuned" if adapter else "base"
    say(f"{who}: loading")
    gen, _, _ = load_generator(model_ref, adapter, progress=False, backend=cfg.backend)
    val_loss, ppl = held_out_loss(gen, records, cfg)
    say(f"{who}: val loss {val_loss:.4f}, perplexity {ppl:.2f}")
    answers, samples = [], []
    questions = _questions(records)
    for i, (messages, _) in enumerate(questions, 1):
        answers.append(gen.generate(messages, max_tokens=max_tokens))
        # an answer without a sentence gets no consistency score: drawing for it is wasted
        has_sentence = bool(scoring.sentences(answers[-1]))
        samples.append(sampling.draw(gen, messages, max_tokens) if has_sentence else [])
        say(f"{who}: answered {i}/{len(questions)} ({counted(1 + len(samples[-1]), 'generation')})")
    return {"val_loss": val_loss, "perplexity": ppl}, answers, samples


def evaluate_run(
    run_ref: str,
    dataset: str | None = None,
    base: bool = False,
    max_records: int | None = None,
    max_tokens: int = 128,
    terms: str | None = DEFAULT_TERMS,
    sampling: Sampling = Sampling(),
    say=lambda _message: None,
) -> dict:
    """Measure a trained run on held-out data and write `eval.json` in its directory.

    Validation loss and perplexity, and greedy answers to the held-out questions scored
    against the reference answers and for consistency with sampled answers (mlxlora.scoring),
    for the tuned model (the run's latest adapter) and, with `base`, the model it was trained
    from. Returns what it wrote.

    Args:
        run_ref: A run name, prefix or directory.
        dataset: A stored dataset or a file to evaluate on (default: the run's validation split).
        base: Measure the untrained base model too, side by side.
        max_records: Evaluate only the first N held-out records.
        max_tokens: New tokens per answer at most.
        terms: A bundled term list (`medical`) or a terms file for term recall; None: none.
        sampling: The answers sampled per question, besides the greedy one, for the
            self-consistency score (samples 0: no score, no extra generations).
        say: Receives a line of progress at each stage.
    """
    from mlxlora import config, scoring
    from mlxlora.atomic import atomic_write_text
    from mlxlora.data.analysis import TermMatcher, load_terms
    from mlxlora.run_datasets import as_run_started
    from mlxlora.runs import RunPaths, find_run

    run = find_run(run_ref).resolve()
    paths = RunPaths(run)
    cfg = config.load(paths.config)
    if dataset is None:  # its own validation records: the ones it was measured on in training
        cfg = as_run_started(cfg, paths)
    records, split, name = held_out_records(cfg, dataset)
    records = records[:max_records] if max_records else records
    matcher = TermMatcher(load_terms(terms)[1]) if terms is not None else None
    if sampling.seed is None:
        sampling = replace(sampling, seed=cfg.training.seed)
    say(f"{len(records)} held-out records of {name} ({split})")
    tuned, answers, samples = _measure(None, str(run), records, cfg, max_tokens, sampling, say)
    base_metrics, base_answers, base_samples = (
        _measure(cfg.model, None, records, cfg, max_tokens, sampling, say)
        if base
        else (None, None, None)
    )
    rows = []
    for i, (messages, reference) in enumerate(_questions(records)):
        rows.append(
            {
                "prompt": messages[-1]["content"],
                "reference": reference,
                "tuned": answers[i],
                "base": base_answers[i] if base_answers else None,
                "tuned_samples": samples[i],
                "base_samples": base_samples[i] if base_samples else None,
                "scores": scoring.score(answers[i], reference, matcher, samples[i]),
                "base_scores": (
                    scoring.score(base_answers[i], reference, matcher, base_samples[i])
                    if base_answers
                    else None
                ),
            }
        )
    result = {
        "dataset": name,
        "split": split,
        "records": len(records),
        **tuned,
        "base": base_metrics,
        "scores": scoring.aggregate([r["scores"] for r in rows]),
        "base_scores": scoring.aggregate([r["base_scores"] for r in rows]) if base else None,
        "answers": rows,
        "terms": terms,
        "max_tokens": max_tokens,
        "consistency": (
            {**asdict(sampling), "support_f1": scoring.SUPPORT_F1} if sampling.samples else None
        ),
        "adapter": str(paths.adapters),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _keep_earlier(paths)
    atomic_write_text(paths.eval, json.dumps(result, indent=2, ensure_ascii=False))
    return result


def _keep_earlier(paths) -> None:
    """Move the run's eval.json into evals/ before a new one replaces it: scored on the
    medical data, a run kept no trace of the scores on its own split."""
    from mlxlora.runs import read_json

    earlier = read_json(paths.eval)
    if not earlier:
        return
    stamp = re.sub(r"\D", "", str(earlier.get("created", "")))[:14] or "earlier"
    paths.evals.mkdir(exist_ok=True)
    os.replace(paths.eval, paths.evals / f"{stamp}-{earlier.get('dataset', 'eval')}.json")
