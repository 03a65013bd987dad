"""What a user can pick as a base model, and what the memory estimate needs about each: the
builtin models, GGUF models in Ollama's store and the catalog (what `mlxlora models` lists and
the TUI's Train tab offers), without building, converting or downloading anything.

Imports no mlx or torch.
"""

from __future__ import annotations

import re
from pathlib import Path

from mlxlora import machine, memory, memory_weights, targets
from mlxlora.errors import ModelError
from mlxlora.machine import unified_budget
from mlxlora.memory import GIB, TrainShape, estimate
from mlxlora.models import ollama
from mlxlora.models.catalog import CATALOG, find
from mlxlora.models.info import model_info, safetensors_header
from mlxlora.models.resolve import (
    BUILTINS,
    SMOLLM2_INSTALL,
    builtin_dir,
    find_smollm2_gguf,
    reference_kind,
)

MAC_SIZES_GB = (16, 24, 32)  # M4 MacBook Air configurations
SMOLLM2_HF = "HuggingFaceTB/SmolLM2-135M-Instruct"
# A linear layer of the first transformer block: model.layers.0.self_attn.q_proj.weight.
_FIRST_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.0\.(.+)\.weight$")


def params_text(n: int) -> str:
    """135M, 1.5B: a parameter count as model cards write it."""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def budgets(device=None) -> dict[str, int | None]:
    """Training budgets by column name: this machine (`device`, a machine.TrainingDevice; by
    default `auto`'s), then the Mac sizes."""
    device = device or machine.training_device()
    out: dict[str, int | None] = {"this machine": device.budget}
    for gb in MAC_SIZES_GB:
        out[f"{gb} GB Mac"] = unified_budget(gb * GIB)
    return out


def builtin_tiny_info() -> dict:
    """builtin:tiny's architecture as `model_info` gives it, computed without building it."""
    from mlxlora.models.builtin import ARCH, VOCAB_SIZE

    h, inter, layers = ARCH["hidden_size"], ARCH["intermediate_size"], ARCH["num_hidden_layers"]
    kv = ARCH["num_key_value_heads"] * h // ARCH["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h
    params = VOCAB_SIZE * h + layers * per_layer + h
    return {
        **ARCH,
        "vocab_size": VOCAB_SIZE,
        "params": params,
        "quantization": None,
        "weight_bytes": params * 4,
    }


def on_a_mac(info: dict, shape: TrainShape):
    """The estimate on a Mac's GPU, its weights as a run there counts them loaded."""
    mac = machine.TrainingDevice("gpu", "unfused")  # what training_device() is on a Mac
    return estimate(info, shape, weights=memory_weights.weights_here(info, shape, device=mac))


def builtin_rows(shape: TrainShape, device=None) -> list[dict]:
    """builtin:tiny and builtin:smollm2-135m: size, training memory (on a Mac with `shape`,
    and on this machine as it trains: on `device`, by default `auto`'s), installed or how to."""
    tiny = builtin_tiny_info()
    smol = find(SMOLLM2_HF)
    smol_file = find_smollm2_gguf()
    here = memory.shape_here(shape, device)

    def sizes(info: dict) -> dict:
        local = estimate(info, here, weights=memory_weights.weights_here(info, here, device=device))
        return {"train_bytes": on_a_mac(info, shape).total, "train_bytes_this_machine": local.total}

    return [
        {
            "id": "builtin:tiny",
            "description": BUILTINS["tiny"],
            "params": tiny["params"],
            **sizes(tiny),
            "installed": True,
            "install": None,
            "path": None,
        },
        {
            "id": "builtin:smollm2-135m",
            "description": BUILTINS["smollm2-135m"],
            "params": smol.params,
            **sizes(smol.info()),
            "installed": smol_file is not None,
            "install": None if smol_file else SMOLLM2_INSTALL,
            "path": str(smol_file) if smol_file else None,
        },
    ]


def ollama_rows() -> dict:
    """The GGUF models in Ollama's local store (manifests only; nothing is converted)."""
    store = ollama.store_dir()
    models = [
        {"id": f"ollama:{e.ref}", "size_bytes": e.size, "path": str(e.gguf_path)}
        for e in ollama.entries(store)
    ]
    return {"store": str(store), "exists": store.is_dir(), "models": models}


def rows(shape: TrainShape, device=None) -> tuple[dict[str, int | None], list[dict]]:
    """(budgets, one dict per catalog model) — what the table and --json show; "this machine"
    trains on `device` (by default `auto`'s)."""
    b = budgets(device)
    here = memory.shape_here(shape, device)
    out = []
    for m in CATALOG:
        mac = on_a_mac(m.info(), shape)
        weights = memory_weights.weights_here(m.info(), here, device=device)
        local = estimate(m.info(), here, weights=weights)
        fits = {
            name: (
                None
                if budget is None
                else (local if name == "this machine" else mac).total <= budget
            )
            for name, budget in b.items()
        }
        out.append(
            {
                "id": m.id,
                "hf_id": m.hf_id,
                "params": m.params,
                "quant": m.quant,
                "download_bytes": m.download_bytes,
                "train_bytes": mac.total,
                "train_bytes_this_machine": local.total,
                "fits": fits,
                "note": m.note,
            }
        )
    return b, out


# --- one reference, without fetching it ---------------------------------------------------


def local_dir(ref: str) -> Path | None:
    """The model directory of `ref` when it is on disk already: a local directory, or
    builtin:tiny once built. None for anything that would need building or fetching."""
    ref = ref.strip()
    try:
        kind = reference_kind(ref)
    except ModelError:
        return None
    if kind == "local":
        path = Path(ref).expanduser()
    elif ref == "builtin:tiny":
        path = builtin_dir()
    else:
        return None
    return path if (path / "config.json").is_file() else None


def known_info(ref: str) -> dict | None:
    """What the memory estimate needs about `ref` (as `model_info` gives it), from builtin:tiny's
    architecture, a local directory or the catalog; None when only fetching it would tell.

    Raises:
        ModelError: a local directory whose config.json is missing or broken.
    """
    ref = ref.strip()
    if ref == "builtin:tiny":
        return builtin_tiny_info()
    directory = local_dir(ref)
    if directory is not None:
        return model_info(directory)
    entry = find(SMOLLM2_HF if ref == "builtin:smollm2-135m" else ref)
    return entry.info() if entry else None


def block_linear(model_dir: Path) -> list[str]:
    """Paths of the linear layers in a model's first block, from its safetensors headers."""
    found = set()
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        for name, tensor in safetensors_header(file).items():
            match = _FIRST_BLOCK.search(name)
            if match and len(tensor.get("shape", ())) == 2:
                found.add(match.group(1))
    return sorted(found)


def target_choices(ref: str) -> list[str]:
    """The short LoRA target names that map onto `ref`'s real modules when it is on disk, else
    all of them (a model not fetched yet is checked when training loads it)."""
    directory = local_dir(ref)
    linear = block_linear(directory) if directory else []
    return targets.short_names_for(linear) if linear else list(targets.SHORT_NAMES)
