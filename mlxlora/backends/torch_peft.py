"""Loading an HF model for LoRA training with transformers + PEFT, and its adapter in both files.

The LoRA layers are PEFT's; which linear layers they wrap is decided by mlxlora.targets exactly
as for MLX (the same short names, aliases and `lora.num_layers` counted from the last block),
then handed to PEFT as full module paths so nothing else matches.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlxlora.adapters_convert import peft_to_mlx, write_both
from mlxlora.errors import BackendUnavailable, ModelError
from mlxlora.targets import TargetMatch, match_targets

# bitsandbytes, which peft imports where it is installed, warns at import on CPUs with
# AVX512-BF16 that an optional kernel package is missing, then uses its own kernel: a line of
# noise on every torch command's stderr.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def select_device() -> tuple[torch.device, torch.dtype]:
    """(device, dtype): bf16 on CUDA, float32 on a CPU (bf16 matmuls are slow there)."""
    if torch.cuda.is_available():
        from mlxlora.backends.torch_dist import local_rank

        return torch.device("cuda", local_rank()), torch.bfloat16
    return torch.device("cpu"), torch.float32


def varying_length_attention():
    """SDPA kept to its flash, memory-efficient and math kernels. cuDNN's (the one torch picks
    on Hopper) builds an execution plan for every new sequence length (2.9 ms of CPU per
    backward call on an H200), and every training batch and decode step brings a new one:
    without it the 1B training step ran 1.72x faster there."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(kernels)


@contextmanager
def known_packing(packed: bool):
    """transformers' causal mask asks of the position ids whether a row packs several
    sequences (masking_utils.find_packed_sequence_indices) with an `.all()` the host reads
    back: a wait for the GPU in every forward pass, which leaves it idle while the host
    queues the step (the engine reads a step's numbers late for that). The backend knows
    whether it packed the batch, so it answers without asking the GPU: the sequence index of
    each position (where the ids restart) when packed, else None, as transformers does."""
    from transformers import masking_utils

    def answer(position_ids: torch.Tensor) -> torch.Tensor | None:
        if not packed:
            return None
        starts = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1
        return starts.cumsum(-1)

    asked = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = answer
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = asked


def half_precision_forward(model, device: torch.device, dtype: torch.dtype):
    """A function giving the context every forward pass of `model` runs in: autocast to the
    base's half precision, with PEFT's LoRA layers no longer casting their inputs up to their
    float32 weights (the weights stay float32 for the optimizer's small updates; autocast
    casts them, not the activations). PEFT's default casts each adapted layer's input up,
    runs both LoRA products, the scaling and the sum in float32 and casts back: in an H200
    profile of the Qwen2.5-0.5B shape those casts and float32 GEMMs took about a third of the
    device time. The identity for float32 models."""
    from contextlib import nullcontext

    from peft.tuners.tuners_utils import BaseTunerLayer

    if dtype == torch.float32:
        return nullcontext
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
    return lambda: torch.autocast(device.type, dtype=dtype)


def transformers_dir(model_dir: Path) -> Path:
    """The directory transformers loads for `model_dir`: itself, or for MLX-quantized weights
    converted from a GGUF (the embedded SmolLM2, a GGUF or Ollama model) the float twin
    converted from that GGUF (MLX's packed quantization has no torch kernels), so that the
    quick start's config trains on a CUDA host too."""
    from mlxlora.models import gguf
    from mlxlora.models.info import gguf_source

    if not is_mlx_quantized(model_dir):
        return model_dir
    source = gguf_source(model_dir).get("gguf")
    if source and Path(source).is_file():
        return gguf.convert(source, progress=False, quantized=False)
    raise ModelError(
        f"{model_dir}: MLX-quantized weights cannot train with backend torch; "
        "use backend: mlx or the unquantized model"
    )


def is_mlx_quantized(model_dir: Path) -> bool:
    """MLX's packed quantization (mlx-lm's "quantization" block, no HF "quantization_config"):
    no torch kernel runs it, so backend torch trains a float copy (transformers_dir)."""
    config = json.loads((model_dir / "config.json").read_text())
    return "quantization" in config and "quantization_config" not in config


def is_bnb_quantized(model_dir: Path) -> bool:
    """True for an HF bitsandbytes 4-bit checkpoint (trains as QLoRA: transformers loads it
    quantized, as its config says); False for a float one."""
    config = json.loads((model_dir / "config.json").read_text())
    method = (config.get("quantization_config") or {}).get("quant_method")
    if method is None:
        return False
    if method != "bitsandbytes":
        raise ModelError(f"{model_dir}: quantization {method!r} is not supported by backend torch")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BackendUnavailable(
            f"{model_dir} is 4-bit (QLoRA): install bitsandbytes (pip install bitsandbytes)"
        )
    return True


def load_base(model_dir: Path, device: torch.device, dtype: torch.dtype):
    """(model, tokenizer) from an HF-format directory, frozen, on `device` in `dtype`."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # the run's events report progress; stderr stays quiet
    model_dir = transformers_dir(model_dir)
    quantized = is_bnb_quantized(model_dir)
    try:
        config = AutoConfig.from_pretrained(model_dir)
        if (config.pad_token_id or 0) >= config.vocab_size:  # a family default past the vocab
            config.pad_token_id = None
        model = from_pretrained(model_dir, config=config, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{model_dir}: cannot load model with transformers: {exc}") from None
    if quantized:  # placed by transformers' bitsandbytes loader
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(device)
    model.requires_grad_(False)
    return model, tokenizer


def keep_4bit_layers_trainable(model) -> None:
    """bitsandbytes repacks a 4-bit layer's weights for its CPU inference kernel the first
    time the layer runs in eval mode (a run's baseline validation) and from then on computes
    the layer with that kernel, which has no backward: the LoRA layers behind it got no
    gradient (q/v only: a TypeError at step 1) or part of theirs. Training keeps the layout
    its autograd path reads; a generator (inference only) keeps the fast kernel."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes' Linear4bit
            module.support_avx512bf16_for_cpu = False


def from_pretrained(model_dir: Path, **kwargs):
    """The model with SDPA attention, or transformers' default where a family has none
    (gemma2's soft-capped attention)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", **kwargs)
    except ValueError as exc:
        if "scaled_dot_product_attention" not in str(exc):
            raise
        return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)


def blocks(model) -> nn.ModuleList:
    """The transformer blocks (`model.layers`, `transformer.h`, ...) of an HF causal LM."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers"):
        found = model
        for part in path.split("."):
            found = getattr(found, part, None)
        if isinstance(found, nn.ModuleList):
            return found
    raise ModelError(f"{type(model).__name__}: cannot find its transformer blocks")


def block_prefix(model, block_list: nn.ModuleList) -> str:
    """`model.layers` for llama-like models: the module path of the block list."""
    return next(name for name, module in model.named_modules() if module is block_list)


def lora_targets(model, num_layers: int, requested: list[str]) -> tuple[TargetMatch, list[str]]:
    """(target match inside one block, full module paths to adapt) for the last `num_layers`."""
    block_list = blocks(model)
    if num_layers > len(block_list):
        raise ModelError(f"lora.num_layers={num_layers} but the model has {len(block_list)} layers")
    first = len(block_list) - num_layers
    linear = {
        name
        for block in block_list[first:]
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Conv1D")
    }
    match = match_targets(requested, sorted(linear))
    prefix = block_prefix(model, block_list)
    paths = [f"{prefix}.{i}.{key}" for i in range(first, len(block_list)) for key in match.keys]
    return match, paths


def add_lora(model, paths: list[str], rank: int, alpha: float, dropout: float):
    """The PeftModel with LoRA on exactly `paths`.

    PEFT's default init (A kaiming-uniform with a=sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in));
    B zero) is the distribution mlx-lm draws from, so both backends start alike.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=paths,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # PEFT reads an attribute transformers 5 deprecated
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, config)


def lora_state(peft_model) -> dict[str, torch.Tensor]:
    """PEFT's saved names (`base_model.model.<module>.lora_A.weight`) -> live LoRA parameters."""
    out = {}
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            out[name.replace(".default.", ".")] = param
    return out


def mlx_weights(peft_model) -> dict[str, np.ndarray]:
    """The adapter in mlx-lm's layout (float32 numpy)."""
    peft = {k: v.detach().float().cpu().numpy() for k, v in lora_state(peft_model).items()}
    return peft_to_mlx(peft)


def load_mlx_weights(peft_model, weights: dict[str, np.ndarray]) -> None:
    """Set the LoRA parameters from mlx-lm layout tensors (every one must be present)."""
    from mlxlora.adapters_convert import mlx_to_peft

    live = lora_state(peft_model)
    given = mlx_to_peft(weights)
    if set(given) != set(live):
        missing = sorted(set(live) ^ set(given))[:3]
        raise ModelError(f"adapter does not fit this model's LoRA layers: {', '.join(missing)}")
    # the same names on a model of another width (an adapter tried on another base): copy_
    # raised torch's size error as a traceback
    for name, value in given.items():
        if tuple(live[name].shape) != value.shape:
            raise ModelError(
                f"adapter does not fit this model's LoRA layers: {name} is"
                f" {'x'.join(map(str, value.shape))} in the adapter,"
                f" {'x'.join(map(str, live[name].shape))} in the model"
            )
    with torch.no_grad():
        for name, value in given.items():
            live[name].copy_(torch.from_numpy(value))


def save_adapter(peft_model, directory: Path, config: dict) -> None:
    """Both layouts (PEFT's adapter_model.safetensors, mlx-lm's adapters.safetensors) and the
    shared adapter_config.json; `config` holds mlx-lm's keys."""
    write_both(directory, mlx_weights(peft_model), config)
