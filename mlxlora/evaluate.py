"""Generation and perplexity for a model reference, optionally through a trained adapter.

`adapter` is a run (name prefix or directory, see `mlxlora.runs.find_run`: its latest adapter in
`adapters/`) or an adapter directory (`adapters.safetensors` + `adapter_config.json`, e.g. a
run's `adapters/best`). With a run and no model, the run's own model is used. Imports no mlx or
torch at module level; the backend is loaded on the first call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlxlora.errors import ModelError, RunError
from mlxlora.runs import ADAPTER_FILES


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


def resolve_adapter(ref: str) -> AdapterRef:
    """The adapter directory a `--adapter` argument names, and its run's model if it has one."""
    from mlxlora.runs import RunPaths, find_run

    path = Path(ref).expanduser()
    if path.is_dir() and is_adapter_dir(path) and not (path / "config.yaml").exists():
        # an adapter directory; inside a run (adapters/, adapters/best, a checkpoint)?
        run = next((p for p in path.resolve().parents if (p / "config.yaml").is_file()), None)
        if run is not None and run not in path.resolve().parents[:3]:
            run = None
        # outside a run, a merged adapter names its base (`mlxlora merge` writes base_model)
        model, backend = _run_config(run) if run else (_base_model(path), "auto")
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
    return AdapterRef(adapters.resolve(), run, model, backend)


def load_generator(model_ref: str | None, adapter: str | None = None, progress: bool = True):
    """(generator, model directory, adapter directory or None) for a model and/or adapter."""
    from mlxlora.backends import select
    from mlxlora.models.resolve import resolve_model

    found = resolve_adapter(adapter) if adapter else None
    ref = model_ref or (found.model if found else None)
    if not ref:
        if found is not None:
            raise ModelError(
                f"{adapter}: an adapter directory outside a run; say which model it was "
                "trained on with --model"
            )
        raise ModelError("give a model (--model REF) or a trained run (--adapter RUN)")
    model_dir = resolve_model(ref, progress=progress)
    backend = found.backend if found else "auto"
    adapter_dir = found.path if found else None
    return select.generator(backend, model_dir, adapter_dir), model_dir, adapter_dir


def messages_for(prompt: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}]


def generate(
    model_ref: str | None,
    prompt: str,
    adapter: str | None = None,
    max_tokens: int = 100,
    system: str | None = None,
    raw: bool = False,
    progress: bool = True,
) -> str:
    """The model's greedy answer to `prompt` (chat template applied unless `raw`)."""
    gen, _, _ = load_generator(model_ref, adapter, progress)
    return gen.generate(messages_for(prompt, system), max_tokens=max_tokens, raw=raw)


def generate_stream(
    model_ref: str | None,
    prompt: str,
    adapter: str | None = None,
    max_tokens: int = 100,
    system: str | None = None,
    raw: bool = False,
    progress: bool = True,
) -> Iterator[dict]:
    """`generate`'s answer as events while it is generated: `{"type": "token", "text": piece}`
    per piece, then `{"type": "done", "text": the whole answer, "prompt_tokens",
    "generation_tokens", "tokens_per_sec", "finish_reason"}`."""
    gen, _, _ = load_generator(model_ref, adapter, progress)
    pieces = []
    for piece in gen.stream(messages_for(prompt, system), max_tokens=max_tokens, raw=raw):
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
