"""The MLX side of export: merge an adapter into its base with mlx-lm's own LoRA layers, and
read a model directory's weights back as float numpy arrays (a quantized base dequantized) for
the GGUF writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mlxlora.backends.blas import preload_openblas

preload_openblas()  # must precede the first `import mlx.core`

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402

from mlxlora.errors import ExportError  # noqa: E402


def fuse_adapter(
    model_dir: Path, adapter_dir: Path, out: Path, dequantize: bool = False
) -> float | None:
    """Write `model_dir` with the adapter in `adapter_dir` merged into its weights to `out`.

    mlx-lm's LoRA, DoRA and embedding layers each know how to fold themselves into the layer
    they wrap (`fuse()`), keeping a quantized layer quantized with its own bits and group size
    unless asked not to; `mlx_lm.utils.save` then writes weights, config and tokenizer (with
    its chat template) the way `mlx_lm.load` and transformers read them.

    Returns, where layers were quantized again, how far their weights are from the float
    merge relative to the adapter's update, over every merged layer (QuantizationLoss);
    None where nothing was.
    """
    from mlx_lm.utils import dequantize_model, load, save

    try:
        model, tokenizer, config = load(
            str(model_dir), adapter_path=str(adapter_dir), return_config=True
        )
    except (FileNotFoundError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"cannot load {model_dir} with adapter {adapter_dir}: {first}") from None
    merged, loss = [], QuantizationLoss()
    for name, module in model.named_modules():
        if hasattr(module, "fuse"):
            merged.append((name, module.fuse(dequantize=dequantize)))
            if "scales" in merged[-1][1]:  # quantized again: measured against the float merge
                loss.add(module, merged[-1][1])
    if not merged:
        raise ExportError(f"{adapter_dir}: the adapter adapts no layer of {model_dir}")
    model.update_modules(tree_unflatten(merged))
    if dequantize:
        model = dequantize_model(model)
        for key in ("quantization", "quantization_config"):
            config.pop(key, None)
    save(out, model_dir, model, tokenizer, config, donate_model=False)
    return loss.relative()


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
