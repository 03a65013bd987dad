"""Comparing runs: the numbers that tell them apart and the config keys they differ in.

The TUI's Compare tab uses it now, and the `mlxlora compare` command will. Evaluation scores
(eval.json, `mlxlora eval`) are the `EVAL_METRICS` columns, shown when a run has them. Imports
no mlx, torch or textual.
"""

from __future__ import annotations

from typing import Any

from mlxlora.runview import RunView

# (key in run_metrics, column title, format spec), in the order a table shows them.
METRICS = (
    ("final_val_loss", "final val", ".4f"),
    ("best_val_loss", "best val", ".4f"),
    ("perplexity", "ppl", ".2f"),
    ("epochs", "epochs", ".2f"),
    ("elapsed_sec", "time s", ".0f"),
    ("tokens_per_sec", "tok/s", ".0f"),
    ("peak_memory_gb", "peak GB", ".2f"),
)

# eval.json's numbers (the tuned model's), in the same form.
EVAL_METRICS = (
    ("eval_val_loss", "eval val", ".4f"),
    ("eval_perplexity", "eval ppl", ".2f"),
    ("term_recall", "terms", ".3f"),
    ("token_f1", "F1", ".3f"),
    ("exact_match", "exact", ".3f"),
    ("answer_chars", "chars", ".0f"),
    ("safety_rate", "safety", ".3f"),
)


def run_metrics(view: RunView) -> dict[str, float | None]:
    """A run's numbers for a comparison (None where the run has not got that far or has not
    been evaluated)."""
    best = view.best_eval
    last = view.last_step
    scores = view.eval.get("scores") or {}
    return {
        "eval_val_loss": view.eval.get("val_loss"),
        "eval_perplexity": view.eval.get("perplexity"),
        **{key: scores.get(key) for key, _, _ in EVAL_METRICS[2:]},
        "final_val_loss": view.val.last(),
        "best_val_loss": best.val_loss if best else None,
        "perplexity": best.perplexity if best else None,
        "epochs": last.epoch if last else None,
        "elapsed_sec": view.elapsed_sec,
        "tokens_per_sec": view.mean_tokens_per_sec,
        "peak_memory_gb": view.peak_memory,
    }


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config sections as dotted keys: {"lora": {"rank": 8}} -> {"lora.rank": 8}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def config_differences(configs: list[dict], ignore: tuple[str, ...] = ("name",)) -> dict:
    """The dotted config keys whose values differ between runs, each with every run's value
    (None where a run's config lacks the key), in key order.

    Args:
        configs: Each run's config as a dict (config.yaml as loaded).
        ignore: Keys that differ by design (the run name is shown as the run itself).
    """
    flat = [flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f} - set(ignore))
    values = {k: [f.get(k) for f in flat] for k in keys}
    return {k: v for k, v in values.items() if any(x != v[0] for x in v[1:])}
