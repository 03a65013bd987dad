"""`mlxlora merge`: adapters of one base model combined into one (the tutorial's ensemble).

mlx-lm's LoRA layer adds `scale * (x @ lora_a) @ lora_b` to a linear layer, lora_a (in, r) and
lora_b (r, out), so an adapter's update of that layer is dW = scale * A @ B (in, out). The
merge is the weighted sum of the updates, sum_i w_i dW_i, written back as one rank-R adapter:
the best rank-R approximation (truncated SVD, Eckart-Young), whose relative Frobenius error
|dropped singular values| / |all| is reported per layer and overall. The sum is never formed
as a dense matrix: it is P @ Q with P = [w_i s_i A_i] (in, K) and Q = [B_i] (K, out), K the
summed ranks, so QR of P and Q^T leaves a K x K core to decompose (exact, and cheap for 4096-wide
layers). The merged adapter has scale 1: its factors carry the whole update. Imports no mlx at
module level (the weight files are read through the backend).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from mlxlora import names
from mlxlora.adapters_convert import PEFT_WEIGHTS, mlx_to_peft, peft_config
from mlxlora.errors import ConfigError, RunError
from mlxlora.models.info import safetensors_problem
from mlxlora.outputs import check_output_dir, output_dir
from mlxlora.runs import ADAPTER_FILES, read_json

WEIGHTS_FILE, CONFIG_FILE = ADAPTER_FILES


@dataclass
class Source:
    ref: str  # as the user gave it
    path: Path  # the adapter directory
    base: str  # the model reference it was trained on (builtin:tiny), as far as known
    config: dict  # its adapter_config.json

    @property
    def model_dir(self) -> str | None:
        """The base model's directory, as mlx-lm's adapter config records it."""
        return self.config.get("model")


@dataclass
class MergeResult:
    out: Path
    rank: int
    weights: list[float]
    sources: list[str]
    layer_errors: dict[str, float] = field(default_factory=dict)  # module -> relative error
    error: float = 0.0  # over every layer: sqrt(sum dropped^2 / sum all^2)

    def to_dict(self) -> dict:
        return {**self.__dict__, "out": str(self.out)}


def low_rank_sum(factors: list[tuple[np.ndarray, np.ndarray]], rank: int):
    """sum_k A_k @ B_k as A (in, rank) @ B (rank, out), the best rank-`rank` approximation.

    Returns (A, B, dropped, total): the squared Frobenius norms of what was cut and of the sum.
    A sum of lower rank than `rank` is exact, its extra columns zero.
    """
    p = np.concatenate([a for a, _ in factors], axis=1).astype(np.float64)
    q = np.concatenate([b for _, b in factors], axis=0).astype(np.float64)
    qp, rp = np.linalg.qr(p)
    qq, rq = np.linalg.qr(q.T)
    u, s, vt = np.linalg.svd(rp @ rq.T)
    keep = min(rank, s.size)
    root = np.sqrt(s[:keep])
    a = np.zeros((p.shape[0], rank))
    b = np.zeros((rank, q.shape[1]))
    a[:, :keep] = (qp @ u[:, :keep]) * root
    b[:keep] = (root[:, None] * vt[:keep]) @ qq.T
    return a, b, float(np.sum(s[keep:] ** 2)), float(np.sum(s**2))


def parse_weights(text: str | None, count: int) -> list[float]:
    """`0.7,0.3` -> [0.7, 0.3]; None: equal weights summing to 1."""
    if text is None:
        return [1.0 / count] * count
    try:  # split at , and at what a Japanese IME types for it (0.7、0.3), as sweep grids are
        weights = [float(w) for w in re.split(f"[{names.COMMAS}]", text)]
    except ValueError:
        raise ConfigError([f"--weights {text!r}: expected numbers like 0.5,0.5"], "merge") from None
    if len(weights) != count or not all(math.isfinite(w) for w in weights):
        raise ConfigError(
            [f"--weights {text!r}: give {count} finite numbers, one per adapter"], "merge"
        )
    return weights


def sources(refs: list[str]) -> list[Source]:
    """Each adapter to merge, checked to share the first one's base model, targets and layers."""
    from mlxlora.evaluate import resolve_adapter

    found = []
    for ref in refs:
        adapter = resolve_adapter(ref)
        _refuse_unfinished(adapter)
        if problem := safetensors_problem(adapter.path / WEIGHTS_FILE):
            raise RunError(f"{adapter.path / WEIGHTS_FILE}: {problem}; the adapter cannot be read")
        cfg = read_json(adapter.path / CONFIG_FILE)  # a JSON object: resolve_adapter checked
        base = adapter.model or cfg.get("base_model") or cfg.get("model") or "?"
        found.append(Source(ref, adapter.path, base, cfg))
    first = found[0]
    for s in found[1:]:
        both_dirs = first.model_dir and s.model_dir  # else the references say it
        _same(first, s, "base model", lambda x, d=both_dirs: x.model_dir if d else x.base)
        _same(first, s, "fine-tune type", lambda x: x.config.get("fine_tune_type", "lora"))
        _same(first, s, "adapted layers (num_layers)", lambda x: x.config.get("num_layers"))
        _same(first, s, "targets", lambda x: sorted(_lora(x).get("keys") or []))
    if first.config.get("fine_tune_type", "lora") != "lora":
        kind = first.config.get("fine_tune_type")
        raise RunError(f"{first.ref}: only LoRA adapters can be merged (this one is {kind})")
    return found


def _refuse_unfinished(adapter) -> None:
    """A run's final adapter while the run still trains is one of its checkpoints, replaced
    as it goes, and a failed run has no trained one: both refused, as fuse and export refuse
    them (a checkpoint named by its directory is taken as asked)."""
    from mlxlora.runs import RunPaths, unfinished

    paths = RunPaths(adapter.run) if adapter.run else None
    if (
        paths
        and adapter.path == paths.adapters.resolve()
        and (refusal := unfinished(paths, "merge"))
    ):
        raise RunError(refusal)


def _lora(source: Source) -> dict:
    params = source.config.get("lora_parameters")
    return params if isinstance(params, dict) else {}


def _same(first: Source, other: Source, what: str, get) -> None:
    if get(first) != get(other):
        raise RunError(
            f"{other.ref}: its {what} ({get(other)}) differs from {first.ref}'s ({get(first)}); "
            "only adapters of the same base model and targets can be merged"
        )


def merge(refs: list[str], weights: list[float], rank: int, out: Path) -> MergeResult:
    """Merge the adapters `refs` (runs or adapter directories) into a rank-`rank` adapter in
    `out`, a new directory written whole or not at all."""
    from mlxlora.backends.mlx_adapters import load_arrays, save_arrays

    if rank < 1:
        raise ConfigError([f"--rank must be at least 1 (got {rank})"], "merge")
    # a new or empty directory only (not even an earlier merge), never in a run or the workspace
    check_output_dir(out, "merge", replace=False, error=RunError)
    found = sources(refs)
    arrays = [load_arrays(s.path / WEIGHTS_FILE) for s in found]
    modules = _modules(found, arrays)
    result = MergeResult(out, rank, weights, [str(s.path) for s in found])
    merged, dropped_all, total_all = {}, 0.0, 0.0
    for module in modules:
        factors = [
            (w * _lora(s).get("scale", 1.0) * a[f"{module}.lora_a"], a[f"{module}.lora_b"])
            for s, a, w in zip(found, arrays, weights, strict=True)
        ]
        a, b, dropped, total = low_rank_sum(factors, rank)
        merged[f"{module}.lora_a"], merged[f"{module}.lora_b"] = a, b
        result.layer_errors[module] = math.sqrt(dropped / total) if total else 0.0
        dropped_all, total_all = dropped_all + dropped, total_all + total
    result.error = math.sqrt(dropped_all / total_all) if total_all else 0.0
    config = _config(found, result)
    with output_dir(out, "merge") as tmp:
        save_arrays(tmp / WEIGHTS_FILE, merged)
        if "peft_type" in config:  # torch runs: PEFT's layout too, as their own adapters/ hold
            as_float32 = {k: v.astype(np.float32) for k, v in merged.items()}  # as the mlx file
            save_file(mlx_to_peft(as_float32), str(tmp / PEFT_WEIGHTS))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2), "utf-8")
    return result


def _modules(found: list[Source], arrays: list[dict]) -> list[str]:
    """The LoRA layers every adapter has, the same in each (names, input and output sizes;
    ranks may differ)."""
    first = arrays[0]
    for s, a in zip(found[1:], arrays[1:], strict=True):
        if set(a) != set(first):
            extra = sorted(set(a) ^ set(first))[0]
            raise RunError(f"{s.ref}: its layers differ from {found[0].ref}'s (e.g. {extra})")
        for key, value in a.items():
            if _outer(key, value.shape) != _outer(key, first[key].shape):
                raise RunError(
                    f"{s.ref}: {key} has shape {value.shape}, {found[0].ref}'s {first[key].shape}"
                )
    modules = sorted(k.removesuffix(".lora_a") for k in first if k.endswith(".lora_a"))
    for module in modules:
        if first[f"{module}.lora_a"].ndim != 2:
            raise RunError(f"{found[0].ref}: {module} is not a LoRA linear layer; cannot merge it")
    return modules


def _outer(key: str, shape: tuple) -> tuple:
    """A LoRA factor's shape without its rank: lora_a (in, r) -> in, lora_b (r, out) -> out."""
    return shape[1:] if key.endswith("lora_b") else shape[:1] + shape[2:]


def _config(found: list[Source], result: MergeResult) -> dict:
    """The first adapter's config with the merged rank, scale 1, and where it came from."""
    cfg = dict(found[0].config)
    cfg["lora_parameters"] = {**_lora(found[0]), "rank": result.rank, "scale": 1.0}
    if "peft_type" in cfg:  # a torch run's PEFT keys gave the first adapter's rank and alpha
        cfg.update(peft_config(cfg, sorted(result.layer_errors)), use_rslora=False)
    cfg["base_model"] = found[0].base
    cfg["merged_from"] = {
        "adapters": result.sources,
        "weights": result.weights,
        "relative_error": result.error,
    }
    return cfg
