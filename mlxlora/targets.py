"""Which linear layers of a transformer block LoRA adapts.

Users name targets by llama's short names (q_proj ... down_proj) or by a model's own module
names (qkv_proj, mlp.c_fc). Architectures that fuse or rename projections get the short names
mapped onto their real modules here. Everything works on module paths inside one block
("self_attn.qkv_proj"), which mlx-lm and HF transformers share, so every backend uses this
module; it imports no mlx or torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlxlora.errors import ModelError

SHORT_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Where models that do not use llama's names keep each projection, tried in order when the
# short name itself matches nothing: phi3 (fused qkv_proj, gate_up_proj), gpt2/gpt_bigcode and
# starcoder2 (c_attn, c_fc, c_proj), phi (dense, fc1, fc2), gpt_neox, internlm2, exaone.
_QKV = ("qkv_proj", "query_key_value", "attn.c_attn", "attention.wqkv")
ALIASES: dict[str, tuple[str, ...]] = {
    "q_proj": _QKV,
    "k_proj": _QKV,
    "v_proj": _QKV,
    "o_proj": (
        "self_attn.dense",
        "attention.dense",
        "attn.c_proj",
        "attention.wo",
        "attention.out_proj",
    ),
    "gate_proj": ("gate_up_proj", "feed_forward.w1", "mlp.c_fc_0"),
    "up_proj": (
        "gate_up_proj",
        "mlp.c_fc",
        "mlp.fc1",
        "mlp.dense_h_to_4h",
        "feed_forward.w3",
        "mlp.c_fc_1",
    ),
    "down_proj": ("mlp.c_proj", "mlp.fc2", "mlp.dense_4h_to_h", "feed_forward.w2"),
}

_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.\w+)*", re.ASCII)


def is_module_name(name: object) -> bool:
    """Whether `name` could name a module: `qkv_proj` or a dotted path like `mlp.c_proj`."""
    return isinstance(name, str) and _MODULE_NAME.fullmatch(name) is not None


@dataclass
class TargetMatch:
    """What a list of requested targets adapts in one model."""

    keys: list[str]  # block paths to adapt, sorted (mlx-lm's lora_parameters.keys)
    adapted: dict[str, list[str]]  # requested name -> the block paths it adapts
    missing: list[str]  # requested names this model has nothing for
    linear: list[str]  # every linear layer path in the block

    def warnings(self) -> list[str]:
        """One line for targets the model lacks, one for names mapped onto other modules."""
        lines = []
        if self.missing:
            lines.append(
                f"lora.target_modules: {', '.join(self.missing)} not in this model, skipped"
                f" (its linear layers: {', '.join(self.linear)})"
            )
        renamed: dict[tuple[str, ...], list[str]] = {}
        for name, paths in self.adapted.items():
            if not all(_matches(name, p) for p in paths):
                renamed.setdefault(tuple(paths), []).append(name)
        if renamed:
            mapped = "; ".join(f"{', '.join(n)} -> {', '.join(p)}" for p, n in renamed.items())
            lines.append(f"lora.target_modules mapped onto this model's modules: {mapped}")
        return lines


def _matches(name: str, path: str) -> bool:
    return path == name or path.endswith("." + name)


def _paths_for(name: str, linear: list[str]) -> list[str]:
    """The block paths `name` means: itself if the model has it, else its first alias found."""
    for candidate in (name, *ALIASES.get(name, ())):
        found = [p for p in linear if _matches(candidate, p)]
        if found:
            return found
    return []


def match_targets(requested: list[str], linear: list[str]) -> TargetMatch:
    """Map requested target names onto a block's linear layer paths.

    Args:
        requested: `lora.target_modules`: short names and/or the model's own module names.
        linear: paths of the linear layers inside the adapted blocks.

    Raises:
        ModelError: no requested name matches any linear layer.
    """
    linear = sorted(set(linear))
    adapted = {name: _paths_for(name, linear) for name in requested}
    keys = sorted({p for paths in adapted.values() for p in paths})
    if not keys:
        raise ModelError(
            f"lora.target_modules {', '.join(requested)} match no layer of this model; "
            f"its linear layers: {', '.join(linear) or 'none'}"
        )
    missing = [name for name, paths in adapted.items() if not paths]
    return TargetMatch(
        keys, {n: p for n, p in adapted.items() if p}, missing=missing, linear=linear
    )


def short_names_for(linear: list[str]) -> list[str]:
    """The short names (in SHORT_NAMES order) that map onto some of a block's linear layers:
    what a form offers as target checkboxes for a model."""
    return [name for name in SHORT_NAMES if _paths_for(name, linear)]
