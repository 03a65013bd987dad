"""The base models the Train form offers, with size and whether they fit here, and what it
says about the model chosen (all from `mlxlora.models.listing`, as `mlxlora models` shows)."""

from __future__ import annotations

from mlxlora import memory, targets
from mlxlora.errors import MlxloraError
from mlxlora.models import listing


def _fit(total: int, budget: int | None) -> str:
    return memory.fit_verdict(total, budget).replace("will not fit", "too big")


def model_options(shape: memory.TrainShape, budget: int | None) -> list[tuple[str, str]]:
    """(label, reference) for the builtins, Ollama's models and the catalog; the label has the
    size and the verdict of training it here with `shape`."""
    options = []
    for row in listing.builtin_rows(shape):
        fit = _fit(row["train_bytes_this_machine"], budget)
        state = fit if row["installed"] else "not installed"
        options.append((f"{row['id']}  {listing.params_text(row['params'])}  {state}", row["id"]))
    for row in listing.ollama_rows()["models"]:
        size = memory.fmt_bytes(row["size_bytes"])
        options.append((f"{row['id']}  GGUF {size}", row["id"]))
    for row in listing.rows(shape)[1]:
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
