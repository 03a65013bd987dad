"""LoRA adapters between mlx-lm's layout and PEFT's, both ways, with numpy and safetensors only.

mlx-lm (`adapters.safetensors`): `<module>.lora_a` (in, r) and `<module>.lora_b` (r, out); the
update is `scale * x @ a @ b` with `scale` in adapter_config.json's `lora_parameters`.
PEFT (`adapter_model.safetensors`): `base_model.model.<module>.lora_A.weight` (r, in) and
`...lora_B.weight` (out, r); the update is `(alpha / r) * B @ A @ x`. So the matrices are
transposed and `alpha = scale * r`. Module paths are the same on both sides for the families
mlx-lm names after the HF checkpoint (llama, qwen, mistral, gemma, phi3, starcoder2, ...).

No library converts these (mlx-lm only fuses its own adapters), hence this module. The torch
backend writes both layouts beside one adapter_config.json that carries both configs' keys, so
a run's `adapters/` loads in `mlx_lm` and in `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from mlxlora.errors import ModelError
from mlxlora.models.info import safetensors_problem

MLX_WEIGHTS = "adapters.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
_MLX_KEY = re.compile(r"(.+)\.lora_([ab])")
_PEFT_KEY = re.compile(re.escape(PEFT_PREFIX) + r"(.+)\.lora_([AB])\.weight")
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def mlx_to_peft(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """mlx-lm adapter tensors as PEFT's (names mapped, matrices transposed)."""
    out = {}
    for key, value in weights.items():
        match = _MLX_KEY.fullmatch(key)
        if match is None:
            raise ModelError(f"{key}: not an mlx-lm LoRA tensor (<module>.lora_a|lora_b)")
        module, ab = match.groups()
        out[f"{PEFT_PREFIX}{module}.lora_{ab.upper()}.weight"] = np.ascontiguousarray(value.T)
    return out


def peft_to_mlx(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PEFT adapter tensors as mlx-lm's (the inverse of mlx_to_peft)."""
    out = {}
    for key, value in weights.items():
        match = _PEFT_KEY.fullmatch(key)
        if match is None:
            raise ModelError(f"{key}: not a PEFT LoRA tensor (...lora_A.weight|lora_B.weight)")
        module, ab = match.groups()
        out[f"{module}.lora_{ab.lower()}"] = np.ascontiguousarray(value.T)
    return out


def adapted_modules(peft_weights: dict[str, np.ndarray]) -> list[str]:
    """Full module paths (`model.layers.3.self_attn.q_proj`) a PEFT adapter adapts."""
    return sorted({_PEFT_KEY.fullmatch(k).group(1) for k in peft_weights})


def peft_config(mlx_config: dict, modules: list[str]) -> dict:
    """PEFT's LoraConfig keys for an mlx-lm adapter config adapting `modules` exactly."""
    lora = mlx_config["lora_parameters"]
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": mlx_config.get("model"),
        "r": lora["rank"],
        "lora_alpha": lora["scale"] * lora["rank"],
        "lora_dropout": lora.get("dropout", 0.0),
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }


def mlx_config(peft: dict, modules: list[str], num_layers: int) -> dict:
    """mlx-lm's adapter config keys for a PEFT config adapting `modules` (full paths)."""
    keys = sorted({_LAYER.split(m)[-1] for m in modules})
    if peft.get("rank_pattern") or peft.get("alpha_pattern"):
        raise ModelError(
            "adapter: PEFT's rank_pattern/alpha_pattern has no mlx-lm form (one rank and one"
            " scale for every adapted layer)"
        )
    # rsLoRA scales the update by alpha / sqrt(r), not alpha / r
    scale = peft["lora_alpha"] / (math.sqrt(peft["r"]) if peft.get("use_rslora") else peft["r"])
    return {
        "model": peft.get("base_model_name_or_path"),
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": {
            "rank": peft["r"],
            "scale": scale,
            "dropout": peft.get("lora_dropout", 0.0),
            "keys": keys,
        },
    }


def layers_from_end(modules: list[str], total_layers: int | None) -> int:
    """mlx-lm's `num_layers` (adapted blocks counted from the last) for these modules."""
    indices = [int(m.group(1)) for m in map(_LAYER.search, modules) if m]
    if not indices:
        raise ModelError("adapter: no module under a `.layers.N.` block")
    total = total_layers if total_layers is not None else max(indices) + 1
    return total - min(indices)


def write_both(directory: Path, mlx_weights: dict[str, np.ndarray], config: dict) -> None:
    """Both layouts and one adapter_config.json holding both configs' keys, in `directory`.

    `config` is mlx-lm's adapter config; PEFT ignores keys it does not know (with a warning
    naming them), mlx-lm reads only its own, so one file serves both loaders.
    """
    peft_weights = mlx_to_peft(mlx_weights)
    merged = {**peft_config(config, adapted_modules(peft_weights)), **config}
    directory.mkdir(parents=True, exist_ok=True)
    save_file(mlx_weights, str(directory / MLX_WEIGHTS))
    save_file(peft_weights, str(directory / PEFT_WEIGHTS))
    (directory / CONFIG).write_text(json.dumps(merged, indent=2))


def convert(source: Path, target: Path, total_layers: int | None = None) -> str:
    """Write `source`'s adapter (either layout) in both layouts to `target` (a new directory,
    written whole or not at all). Returns the layout `source` was in: "mlx" or "peft"."""
    source, target = Path(source), Path(target)
    config_path = source / CONFIG
    if not config_path.is_file():
        raise ModelError(f"{source}: no {CONFIG}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:  # an adapter copied in part, or edited by hand
        raise ModelError(f"{config_path}: not valid JSON ({exc})") from None
    if (source / MLX_WEIGHTS).is_file():
        layout, weights_path = "mlx", source / MLX_WEIGHTS
    elif (source / PEFT_WEIGHTS).is_file():
        layout, weights_path = "peft", source / PEFT_WEIGHTS
    else:
        raise ModelError(f"{source}: neither {MLX_WEIGHTS} nor {PEFT_WEIGHTS}")
    if problem := safetensors_problem(weights_path):  # safetensors' loader: a traceback
        raise ModelError(f"{weights_path}: {problem}")
    weights = load_file(str(weights_path))
    if layout == "peft":
        peft, weights = weights, peft_to_mlx(weights)  # first: it names a tensor not LoRA's
        modules = adapted_modules(peft)
        config = {**config, **mlx_config(config, modules, layers_from_end(modules, total_layers))}
    if target.exists():
        raise ModelError(f"{target}: already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write_both(tmp, weights, config)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return layout
