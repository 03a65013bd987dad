"""Comparing runs: the tutorial's benchmark table, the config keys runs differ in, and the
pick of the run that best trades quality against cost.

One core for every face: `mlxlora compare` (table, JSON, HTML report), `mlxlora sweep status`
(a sweep ranked) and the TUI's Compare tab. Evaluation scores come from a run's eval.json
(written by `mlxlora eval`; a run without one is normal and shows no scores). Imports no mlx,
torch or textual.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlxlora import config, runs
from mlxlora.event_tail import EventTail
from mlxlora.fmt import NONE, num
from mlxlora.memory import fmt_bytes
from mlxlora.runview import RunView, read_config

# eval.json's specialist scores that say "better" when higher (answer length says nothing).
QUALITY_SCORES = ("term_recall", "token_f1", "safety_rate", "consistency")

# (key in run_metrics, column title, format spec), in the order a table shows them.
METRICS = (
    ("final_val_loss", "final val", ".4f"),
    ("best_val_loss", "best val", ".4f"),
    ("perplexity", "ppl", ".2f"),
    ("gap", "val-train", "+.3f"),
    ("eval_val_loss", "eval val", ".4f"),  # eval.json's (the tuned model's) from here on
    ("term_recall", "terms", ".2f"),
    ("token_f1", "F1", ".2f"),
    ("exact_match", "exact", ".2f"),
    ("safety_rate", "safety", ".2f"),
    ("consistency", "consist", ".2f"),
    ("answer_chars", "chars", ".0f"),
    ("epochs", "epochs", ".2f"),
    ("elapsed_sec", "time s", ".0f"),
    ("tokens_per_sec", "tok/s", ".0f"),
    ("peak_memory_gb", "peak mem", "GB"),  # GB: a size, shown by metric_text with fmt_bytes
)

# compare --pick: each criterion's share of a run's cost, after the tutorial's "choosing the
# best setting" (final metrics, generalisation, training time, memory). A criterion not every
# run has (eval.json) drops out and the others keep their proportions.
PICK_WEIGHTS = {
    "best_val_loss": 0.35,  # final metrics: validation loss ...
    "eval_score": 0.25,  # ... and the specialist scores (mean of QUALITY_SCORES)
    "gap": 0.15,  # generalisation: validation minus training loss (overfitting)
    "elapsed_sec": 0.15,  # training time
    "peak_memory_gb": 0.10,  # memory
}
PICK_LABELS = {
    "best_val_loss": "best val",
    "eval_score": "eval score",
    "gap": "val-train gap",
    "elapsed_sec": "time",
    "peak_memory_gb": "memory",
}
HIGHER_IS_BETTER = {"eval_score"}
# How far behind the best run a run must be on a criterion to take its whole weight: losses in
# nats (0.1 = 10.5% higher perplexity), the eval score in its 0-1 units, time and memory as a
# fraction over the best run's (twice the time, 1.5x the memory). Nearer, a share of it; a
# negligible difference weighs next to nothing, however few runs are compared.
PICK_DECISIVE = {
    "best_val_loss": 0.1,
    "eval_score": 0.1,
    "gap": 0.1,
    "elapsed_sec": 1.0,
    "peak_memory_gb": 0.5,
}
RELATIVE = {"elapsed_sec", "peak_memory_gb"}  # measured against the best run's own figure


def read_eval(run: Path) -> dict:
    """A run's eval.json ({} when it has none)."""
    return runs.read_json(runs.RunPaths(Path(run)).eval)


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def run_metrics(view: RunView, evaluation: dict | None = None) -> dict[str, float | None]:
    """A run's numbers for a comparison (None where the run has not got that far).

    Args:
        view: The run's events folded.
        evaluation: Its eval.json; None takes the view's (kept live by the TUI) or reads it.
    """
    if evaluation is None:
        evaluation = view.eval or read_eval(view.path)
    scores = evaluation.get("scores") if isinstance(evaluation.get("scores"), dict) else {}
    best = view.best_eval
    last = view.last_step
    final_val, train = view.val.last(), view.smooth.last()
    metrics = {
        "final_val_loss": final_val,
        "best_val_loss": best.val_loss if best else None,
        "perplexity": best.perplexity if best else None,
        "train_loss": train,
        "gap": final_val - train if final_val is not None and train is not None else None,
        "epochs": last.epoch if last else None,
        "elapsed_sec": view.elapsed_sec,
        "tokens_per_sec": view.mean_tokens_per_sec,
        "peak_memory_gb": view.peak_memory,
    }
    metrics["eval_val_loss"] = _number(evaluation.get("val_loss"))
    metrics |= {key: _number(scores.get(key)) for key, _, _ in METRICS if key not in metrics}
    quality = [metrics[k] for k in QUALITY_SCORES if metrics[k] is not None]
    metrics["eval_score"] = sum(quality) / len(quality) if quality else None
    return metrics


def metric_text(value: float | None, spec: str) -> str:
    """A METRICS cell by its spec; a size in GB (spec "GB") as the Runs and System tabs show
    memory (fmt_bytes: MiB, GiB): the engine's GB to two decimals showed a tiny run's peak as
    0.01 or 0.00."""
    if spec == "GB" and value is not None:
        return fmt_bytes(value * 1e9)
    return num(value, spec)


def shown_metrics(rows: list[dict]) -> list[tuple[str, str, str]]:
    """The METRICS some run has a value for (no eval.json anywhere: no score columns)."""
    return [m for m in METRICS if any(r.get(m[0]) is not None for r in rows)]


def load_view(path: Path) -> RunView:
    """A run's whole event history folded, with its summary."""
    paths = runs.RunPaths(path)
    view, tail = RunView(path), EventTail(paths.events)
    while chunk := tail.read_bulk():
        view.add(chunk)
    view.summary = runs.read_json(paths.summary)
    return view


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


def config_differences(
    configs: list[dict], ignore: tuple[str, ...] = ("name",), defaults: dict | None = None
) -> dict:
    """The dotted config keys whose values differ between runs, each with every run's value
    (the default where a run's config lacks the key: a run made before a setting existed
    trained as its default; None without one), in key order.

    Args:
        configs: Each run's config as a dict (config.yaml as loaded).
        ignore: Keys that differ by design (the run name is shown as the run itself).
        defaults: The config's defaults as a dict.
    """
    flat = [flatten(c) for c in configs]
    default = flatten(defaults or {})
    keys = sorted({k for f in flat for k in f} - set(ignore))
    values = {k: [f.get(k, default.get(k)) for f in flat] for k in keys}
    return {k: v for k, v in values.items() if any(x != v[0] for x in v[1:])}


@dataclass
class Compared:
    """One run in a comparison."""

    path: Path
    name: str
    status: str
    metrics: dict[str, float | None]
    evaluation: dict
    view: RunView = field(repr=False)


@dataclass
class Comparison:
    runs: list[Compared]
    differences: dict[str, list]

    def to_dict(self) -> dict:
        return {
            "runs": [
                {"path": str(r.path), "name": r.name, "status": r.status, "metrics": r.metrics}
                for r in self.runs
            ],
            "differences": self.differences,
        }


def compare(paths: list[Path]) -> Comparison:
    """The benchmark table of these runs: their numbers and the config keys that differ."""
    compared = []
    for path in paths:
        view, evaluation = load_view(path), read_eval(path)
        status = view.status(runs.is_locked(runs.RunPaths(path)))
        metrics = run_metrics(view, evaluation)
        compared.append(Compared(path, runs.given_name(path), status, metrics, evaluation, view))
    configs = [read_config(runs.RunPaths(p).config) for p in paths]
    return Comparison(compared, setting_differences(configs))


def setting_differences(configs: list[dict]) -> dict:
    """What the runs' settings differ in, as every face shows it: the name and sweep differ by
    design, and a setting a run predates counts as its default."""
    return config_differences(configs, ("name", "sweep"), config.Config().to_dict())


def setting_text(value) -> str:
    """A config value as typed in YAML, the same in every face: lists and mappings compact,
    on one line (the studio and the report showed Python's repr)."""
    value = _as_typed(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return NONE if value is None else str(value)


def _as_typed(value):
    """`value` with each whole float as an int, in lists and mappings too: `alpha: 32` and a
    stage's `epochs: 2` as written, not 32.0 and 2.0 (the config holds floats)."""
    if isinstance(value, list):
        return [_as_typed(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_typed(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass
class Pick:
    """The run `pick` chose, each run's cost (0 best, 1 worst), and why in plain words."""

    run: Compared
    costs: list[float]  # each run's weighted cost, in the comparison's order
    weights: dict[str, float]  # the criteria used, renormalised
    reason: str


def pick(comparison: Comparison) -> Pick:
    """The run that best trades validation loss and eval scores against time and memory.

    On each criterion a run costs how far it is behind the best run, as a share of the
    criterion's decisive difference (PICK_DECISIVE; capped at 1), times the criterion's weight
    (PICK_WEIGHTS); the lowest total wins, the earlier run on a tie. A criterion weighs only
    when every run has its number: a run not yet evaluated would otherwise lose (or win) on a
    score nobody measured; the reason names what was left out. The validation loss is the
    exception: a run without one (failed, or never evaluated) counts as behind on it by the
    whole weight, or it would win on time alone. Deterministic.
    """
    rows = comparison.runs
    present = {
        k: w
        for k, w in PICK_WEIGHTS.items()
        if all(_criterion(r, k) is not None for r in rows)
        or (k == "best_val_loss" and any(_criterion(r, k) is not None for r in rows))
    }
    total = sum(present.values()) or 1.0
    weights = {k: w / total for k, w in present.items()}
    behind = {k: _behind([_criterion(r, k) for r in rows], k) for k in weights}
    costs = [sum(weights[k] * behind[k][i] for k in weights) for i in range(len(rows))]
    order = sorted(range(len(rows)), key=lambda i: (costs[i], i))
    best = rows[order[0]]
    return Pick(
        best,
        costs,
        weights,
        _reason(rows, order, costs, weights) + _left_out(rows) + _mixed_backends(rows),
    )


def _mixed_backends(rows: list[Compared]) -> str:
    """'\nmixed backends (A on mlx, B on torch): ...' when the runs trained on more than one
    backend: the pick weighed them as one benchmark (MLX's allocator peak against torch's
    resident size on a CPU) and nothing said so."""
    started = {r.name: r.view.started for r in rows if r.view is not None}  # None: built bare
    trained = {name: e.backend for name, e in started.items() if e is not None}
    if len(set(trained.values())) < 2:
        return ""
    each = ", ".join(f"{name} on {backend}" for name, backend in trained.items())
    return (
        f"\nmixed backends ({each}): one config trains a little differently on each, and each"
        " measures memory its own way; compare runs of one backend"
    )


def _left_out(rows: list[Compared]) -> str:
    """'\nnot weighed: eval score (R has none: `mlxlora eval R`)' for each criterion some runs
    have and others lack ('' when none)."""
    lines = []
    for key in PICK_WEIGHTS:
        missing = [r.name for r in rows if _criterion(r, key) is None]
        if not missing or len(missing) == len(rows):
            continue
        if key == "best_val_loss":
            lines.append(
                f"\ncounted as behind on {PICK_LABELS[key]}: {', '.join(missing)} has none"
            )
            continue
        hint = f": `mlxlora eval {shlex.quote(missing[0])}`" if key == "eval_score" else ""
        lines.append(f"\nnot weighed: {PICK_LABELS[key]} ({', '.join(missing)} has none{hint})")
    return "".join(lines)


def _criterion(row: Compared, key: str) -> float | None:
    value = row.metrics.get(key)
    if key == "gap" and value is not None:
        return max(value, 0.0)  # validation below training loss is no fault: all count as 0
    return value


def _behind(values: list[float | None], key: str) -> list[float]:
    """Each run's distance behind the best on criterion `key`, in decisive differences
    (0 for the best run, at most 1; 1 for a run without the number)."""
    known = [v for v in values if v is not None]
    best = max(known) if key in HIGHER_IS_BETTER else min(known)
    gaps = [abs(v - best) if v is not None else math.inf for v in values]
    if key in RELATIVE:
        gaps = [g / best if best > 0 else float(g > 0) for g in gaps]
    return [min(1.0, g / PICK_DECISIVE[key]) for g in gaps]


def _reason(rows: list[Compared], order: list[int], costs: list[float], weights: dict) -> str:
    best = rows[order[0]]
    parts = []
    for key in weights:
        value = _criterion(best, key)
        values = [v for v in (_criterion(r, key) for r in rows) if v is not None]
        place = _place(key, value, values) if value is not None else "none"
        parts.append(f"{PICK_LABELS[key]} {_show(key, best.metrics[key])} ({place})")
    line = f"{best.name}: " + ", ".join(parts)
    if len(order) > 1:
        runner = rows[order[1]]
        line += (
            f"\nweighted cost {costs[order[0]]:.3f} vs {costs[order[1]]:.3f} for {runner.name} "
            "(0 = best on every criterion; weights "
            + ", ".join(f"{PICK_LABELS[k]} {w:.2f}" for k, w in weights.items())
            + ")"
        )
    return line


def _place(key: str, value: float, values: list[float]) -> str:
    """`2 of 6`, by the numbers as shown: runs that show the same figure are tied (six runs
    that all showed 0.12 GB were ranked 1 to 6 by digits nobody saw)."""
    shown = _show(key, value)
    sign = -1 if key in HIGHER_IS_BETTER else 1
    ahead = sum(sign * v < sign * value and _show(key, v) != shown for v in values)
    tied = sum(_show(key, v) == shown for v in values) - 1
    return f"{ahead + 1} of {len(values)}" + (f", tied with {tied}" if tied else "")


def _show(key: str, value: float | None) -> str:
    if value is None:
        return NONE
    if key == "elapsed_sec":
        return f"{value:.0f} s"
    if key == "peak_memory_gb":
        return metric_text(value, "GB")
    return f"{value:+.3f}" if key == "gap" else f"{value:.4g}"
