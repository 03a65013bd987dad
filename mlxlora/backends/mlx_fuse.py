"""The MLX side of export: merge an adapter into its base with mlx-lm's own LoRA layers, and
read a model directory's weights back as float numpy arrays (a quantized base dequantized) for
the GGUF writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlxlora.backends.blas import preload_openblas

preload_openblas()  # must precede the first `import mlx.core`

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402

from mlxlora.errors import ExportError  # noqa: E402
from mlxlora.models.info import refuse_bitsandbytes_in_mlx  # noqa: E402

# A quantized base keeps its bits (auto) while quantizing the merge again moves the weights by
# less than this share of the adapter's own update; past it the fine-tune is mostly rounded
# away (the SmolLM2 quickstart run: about 21, its logits as far from base + adapter as the
# untuned base's), and the merge is written as float weights.
KEEP_QUANTIZED_LOSS = 0.5


@dataclass(frozen=True)
class Fused:
    """What fuse_adapter wrote: float weights or the base's bits, and where a merge was
    quantized again, or would have been, how far that moved it (QuantizationLoss)."""

    dequantized: bool
    requantization_loss: float | None


def fuse_adapter(
    model_dir: Path, adapter_dir: Path, out: Path, dequantize: bool | None = None
) -> Fused:
    """Write `model_dir` with the adapter in `adapter_dir` merged into its weights to `out`.

    mlx-lm's LoRA, DoRA and embedding layers each know how to fold themselves into the layer
    they wrap (`fuse()`), keeping a quantized layer quantized with its own bits and group size
    unless asked not to; `mlx_lm.utils.save` then writes weights, config and tokenizer (with
    its chat template) the way `mlx_lm.load` and transformers read them.

    A quantized base: `dequantize` True writes float weights, False keeps the base's bits,
    None (auto) keeps them unless quantizing the merge again loses more than
    KEEP_QUANTIZED_LOSS of the adapter's update.
    """
    from mlx_lm.utils import dequantize_model, load, save

    refuse_bitsandbytes_in_mlx(model_dir, merging=True)
    try:
        model, tokenizer, config = load(
            str(model_dir), adapter_path=str(adapter_dir), return_config=True
        )
    except (FileNotFoundError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"cannot load {model_dir} with adapter {adapter_dir}: {first}") from None
    adapted = [(name, module) for name, module in model.named_modules() if hasattr(module, "fuse")]
    if not adapted:
        raise ExportError(f"{adapter_dir}: the adapter adapts no layer of {model_dir}")
    merged = [(name, module.fuse(dequantize=dequantize is True)) for name, module in adapted]
    loss = QuantizationLoss()
    for (_, module), (_, layer) in zip(adapted, merged, strict=True):
        if "scales" in layer:  # quantized again: measured against the float merge
            loss.add(module, layer)
    lost = loss.relative()
    if dequantize is None and lost is not None and lost > KEEP_QUANTIZED_LOSS:
        dequantize = True
        merged = [(name, module.fuse(dequantize=True)) for name, module in adapted]
    model.update_modules(tree_unflatten(merged))
    if dequantize:
        model = dequantize_model(model)
        for key in ("quantization", "quantization_config"):
            config.pop(key, None)
    save(out, model_dir, model, tokenizer, config, donate_model=False)
    return Fused(bool(dequantize), lost)


class QuantizationLoss:
    """|quantized merge - float merge| / |float merge - base| (Frobenius, over the layers
    added): how far re-quantization moves the weights, next to how far the adapter moved
    them. A 4-bit step is large next to a LoRA update and each group's scale is fitted
    again, so this can pass 1 (the SmolLM2 quickstart run: about 21)."""

    def __init__(self):
        self.layers, self.error, self.update = 0, 0.0, 0.0

    def add(self, adapted, quantized) -> None:
        self.layers += 1
        base = getattr(adapted, "linear", None) or getattr(adapted, "embedding", None)
        exact = adapted.fuse(dequantize=True).weight.astype(mx.float32)
        self.error += mx.sum((_dense(quantized) - exact) ** 2).item()
        self.update += mx.sum((exact - _dense(base)) ** 2).item()

    def relative(self) -> float | None:
        if not self.layers:
            return None
        return (self.error / self.update) ** 0.5 if self.update else 0.0


def _dense(layer) -> mx.array:
    """A layer's weight as float32, dequantized where it is quantized."""
    if "scales" not in layer:
        return layer.weight.astype(mx.float32)
    weight = mx.dequantize(
        layer.weight, layer.scales, layer.get("biases"),
        group_size=layer.group_size, bits=layer.bits, mode=layer.mode,
    )  # fmt: skip
    return weight.astype(mx.float32)


def float_weights(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """The model's tensors under their HF names as float32 numpy arrays, one at a time.

    mlx-lm's `load_model` reads any layout it supports (sharded, MLX-quantized at any bits,
    bfloat16) lazily; quantized layers are dequantized by mlx-lm, so a 4-bit base comes out as
    the float weights it stands for.
    """
    from mlx_lm.utils import dequantize_model, load_model

    refuse_bitsandbytes_in_mlx(model_dir, merging=True)  # mlx-lm's error listed every layer
    model, _ = load_model(Path(model_dir), lazy=True)
    model = dequantize_model(model)
    for name, value in tree_flatten(model.parameters()):
        yield name, np.array(value.astype(mx.float32))


def float_tensors(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file (an adapter) as float32 numpy arrays, whatever its dtype (bfloat16
    included, which numpy cannot read)."""
    return {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(path)).items()}


def model_args(config: dict) -> dict:
    """`config` with every hyperparameter mlx-lm's model class fills in by default (gemma2's
    soft-capping, qwen2's rope_theta...): the values the model was trained and tested with."""
    from dataclasses import asdict

    from mlx_lm.utils import _get_classes

    _, args_class = _get_classes(config)
    return {**config, **asdict(args_class.from_dict(config))}
