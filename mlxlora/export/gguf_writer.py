"""Write GGUF files llama.cpp (and so Ollama) loads: a whole model, or a LoRA adapter.

Built on the `gguf` package: GGUFWriter, its tensor-name maps (HF name -> `blk.N.attn_q`), its
numpy quantizers (Q8_0, Q4_0) and SpecialVocab (see gguf_vocab). What the package leaves to a
converter is written here, per architecture, the way llama.cpp's loader expects it:
- llama / mistral: the rows of Q and K are permuted into llama.cpp's rope layout (it rotates
  adjacent pairs; HF rotates the two halves of each head), for the weights and for a LoRA's B;
- gemma / gemma2: RMSNorm weights get +1 (HF stores w and multiplies by 1 + w; llama.cpp
  multiplies by the stored weight);
- tied embeddings: no `output.weight`; llama.cpp then reads `token_embd` for the output;
- Llama 3.1 rope scaling: a `rope_freqs` tensor of per-frequency factors.
q4_k_m goes through llama.cpp's own quantizer (llama-cpp-python), from an f16 file.
Imports no mlx at module level (weights are read by mlxlora.backends.mlx_fuse).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mlxlora.errors import ExportError

# HF model_type -> llama.cpp architecture (general.architecture)
SUPPORTED_ARCHITECTURES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma2",
}
QUANTIZATIONS = ("f16", "q8_0", "q4_0", "q4_k_m")
PERMUTED_QK = ("llama",)  # llama.cpp architectures whose Q/K rows are in its rope layout
NORM_PLUS_ONE = ("gemma", "gemma2")
EXPORT_EXTRA = "pip install 'mlxlora[export]' (llama-cpp-python)"


def model_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: cannot read the model config ({exc})") from None


def check_supported(model_dir: Path) -> str:
    """The llama.cpp architecture of the model in `model_dir`, or ExportError naming the
    supported ones (checked before any work)."""
    model_type = model_config(model_dir).get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ExportError(
            f"{model_dir}: GGUF export does not support model_type {model_type!r} "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    return SUPPORTED_ARCHITECTURES[model_type]


def check_quantization(quantize: str) -> None:
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"quantization {quantize!r}: choose one of {', '.join(QUANTIZATIONS)}")
    if quantize == "q4_k_m" and not _has_llama_cpp():
        raise ExportError(f"q4_k_m is quantized by llama.cpp itself: {EXPORT_EXTRA}")


def _has_llama_cpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


# --- names and layouts ---------------------------------------------------------------------


def _name_map(arch: str, config: dict):
    import gguf

    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    return gguf.get_tensor_name_map(arch_enum, int(config["num_hidden_layers"]))


def gguf_name(name_map, hf_name: str) -> str:
    found = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if found is None:
        raise ExportError(f"tensor {hf_name!r}: no GGUF name for it in llama.cpp's tensor map")
    return found


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rope layout of the rows of Q or K (halves of each head) -> llama.cpp's (pairs)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_llama_cpp_layout(w: np.ndarray, hf_name: str, arch: str, config: dict) -> np.ndarray:
    """A float tensor (or a LoRA's B, whose rows are the output rows) as llama.cpp wants it."""
    module = hf_name.rsplit(".", 1)[0]
    if arch in PERMUTED_QK and module.endswith(("self_attn.q_proj", "self_attn.k_proj")):
        heads = config["num_attention_heads"]
        if module.endswith("k_proj"):
            heads = config.get("num_key_value_heads", heads)
        w = permute_rows(w, heads)
    if arch in NORM_PLUS_ONE and module.endswith("norm") and hf_name.endswith(".weight"):
        w = w + 1.0
    return w


def _tensor_type(gguf_name_: str, shape: tuple, quantize: str):
    """The GGML type a tensor is stored as: 1-D tensors F32; Q8_0/Q4_0 where rows are whole
    blocks of 32; q4_0 keeps the embedding and output at Q8_0 (as llama.cpp keeps them above
    4 bits); the rest F16."""
    import gguf

    t = gguf.GGMLQuantizationType
    if len(shape) < 2:
        return t.F32
    whole_blocks = shape[-1] % 32 == 0
    if quantize == "q8_0" and whole_blocks:
        return t.Q8_0
    if quantize == "q4_0" and whole_blocks:
        outer = gguf_name_.startswith(("token_embd.", "output."))
        return t.Q8_0 if outer else t.Q4_0
    return t.F16


# --- hyperparameters ------------------------------------------------------------------------


def _add_hparams(writer, arch: str, config: dict, name: str) -> None:
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    writer.add_name(name)
    writer.add_context_length(int(config.get("max_position_embeddings", 4096)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads", heads)))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config["vocab_size"]))
    if arch == "gemma2":
        if config.get("query_pre_attn_scalar", head_dim) != head_dim:
            raise ExportError(
                "gemma2 with query_pre_attn_scalar != head_dim: llama.cpp scales queries by "
                "1/sqrt(head_dim)"
            )
        writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
        writer.add_sliding_window(int(config.get("sliding_window") or 4096))


def _rope_scaling(writer, config: dict) -> np.ndarray | None:
    """Write the rope scaling llama.cpp reads; returns Llama 3.1's rope_freqs factors if any."""
    import gguf

    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    if not kind or kind == "default":
        return None
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        return None
    if kind == "llama3":
        from mlxlora.models.gguf_weights import llama3_factors

        heads = int(config["num_attention_heads"])
        dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
        return llama3_factors(
            float(config.get("rope_theta", 10000.0)),
            dim,
            float(scaling["factor"]),
            float(scaling.get("low_freq_factor", 1.0)),
            float(scaling.get("high_freq_factor", 4.0)),
            int(scaling.get("original_max_position_embeddings", 8192)),
        ).astype(np.float32)
    raise ExportError(f"rope scaling {kind!r}: GGUF export supports linear and llama3")


# --- writing ---------------------------------------------------------------------------------


@contextmanager
def _atomic_file(out: Path):
    """A temporary path beside `out`, renamed to `out` on success and removed on failure."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from Ollama's user
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write(writer, path: Path) -> None:
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _file_type(quantize: str) -> int:
    import gguf

    f = gguf.LlamaFileType
    return {"f16": f.MOSTLY_F16, "q8_0": f.MOSTLY_Q8_0, "q4_0": f.MOSTLY_Q4_0}[quantize]


def write_gguf(
    model_dir: Path, out: Path, quantize: str = "f16", chat_template: str | None = None
) -> Path:
    """Write the HF-format model in `model_dir` (float or MLX-quantized: dequantized first) as
    one GGUF file `out` (atomically) with its tokenizer and chat template (`chat_template`
    overrides the tokenizer's); `quantize` is one of QUANTIZATIONS (q4_k_m needs
    llama-cpp-python, the `export` extra). Returns `out`."""
    model_dir, out = Path(model_dir), Path(out)
    arch = check_supported(model_dir)
    check_quantization(quantize)
    if quantize == "q4_k_m":  # llama.cpp quantizes from an f16 file written beside `out`
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
            f16 = Path(work) / "f16.gguf"
            _write_model(model_dir, f16, arch, "f16", chat_template)
            with _atomic_file(out) as tmp:
                llama_cpp_quantize(f16, tmp, quantize)
        return out
    with _atomic_file(out) as tmp:
        _write_model(model_dir, tmp, arch, quantize, chat_template)
    return out


def _write_model(model_dir: Path, path: Path, arch: str, quantize: str, template) -> None:
    import gguf
    from gguf.quants import quantize as quantize_blocks

    from mlxlora.backends.mlx_fuse import float_weights, model_args
    from mlxlora.export.gguf_vocab import add_vocab

    config = model_args(model_config(model_dir))
    writer = gguf.GGUFWriter(None, arch)
    _add_hparams(writer, arch, config, model_dir.name)
    writer.add_file_type(_file_type(quantize))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    factors = _rope_scaling(writer, config)
    if factors is not None:
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors)
    names = _name_map(arch, config)
    for hf_name, w in float_weights(model_dir):
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # llama.cpp reads the tied output from token_embd
        name = gguf_name(names, hf_name)
        w = to_llama_cpp_layout(w, hf_name, arch, config)
        kind = _tensor_type(name, w.shape, quantize)
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, w.astype(np.float32))
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, w.astype(np.float16))
        else:
            writer.add_tensor(name, quantize_blocks(w, kind), raw_dtype=kind)
    add_vocab(writer, model_dir, int(config["vocab_size"]), template)
    _write(writer, path)


def llama_cpp_quantize(src: Path, dst: Path, quantize: str) -> None:
    """Quantize a GGUF file with llama.cpp's own quantizer (K-quants)."""
    try:
        import llama_cpp
    except ImportError:
        raise ExportError(f"{quantize} is quantized by llama.cpp itself: {EXPORT_EXTRA}") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quantize]
    log: list[str] = []
    with _llama_cpp_log_into(log):
        status = llama_cpp.llama_model_quantize(
            str(src).encode(), str(dst).encode(), llama_cpp.byref(params)
        )
    if status != 0:
        last = next((line.strip() for line in reversed(log) if line.strip()), "no message")
        raise ExportError(
            f"{src}: llama.cpp could not quantize it to {quantize} (status {status}): {last}"
        )


@contextmanager
def _llama_cpp_log_into(lines: list[str]):
    """llama.cpp's log collected into `lines` rather than printed: its quantizer writes a few
    lines per tensor (hundreds for a real model) around an export's own stage lines.
    llama-cpp-python's own log callback is put back after (or llama.cpp's default)."""
    import ctypes

    import llama_cpp

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", errors="replace"))

    own = getattr(getattr(llama_cpp, "_logger", None), "llama_log_callback", None)
    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(own, ctypes.c_void_p(0))  # `collect` is freed after this


# --- LoRA adapters ---------------------------------------------------------------------------


def _adapter_dir(run_or_adapter_dir: Path) -> Path:
    from mlxlora.runs import ADAPTER_FILES

    path = Path(run_or_adapter_dir)
    if (path / "config.yaml").is_file():
        from mlxlora.export.fuse import export_source

        return export_source(path).adapter
    if not all((path / f).is_file() for f in ADAPTER_FILES):
        raise ExportError(f"{path}: neither a run nor an adapter directory")
    return path


def write_lora_gguf(run_or_adapter_dir: Path, base_model_dir: Path, out: Path) -> Path:
    """Write the run's final adapter (or an mlx-lm adapter directory) as a llama.cpp LoRA
    adapter GGUF for the base model in `base_model_dir`.

    mlx-lm computes y = W x + scale * B A x with A stored (in, rank) and B (rank, out);
    llama.cpp wants `lora_a` as (rank, in) and `lora_b` as (out, rank) under the base tensor's
    GGUF name, and applies alpha / rank, so alpha = scale * rank reproduces the trained
    strength. Returns `out`."""
    import gguf

    from mlxlora.backends.mlx_fuse import float_tensors, model_args

    adapter = _adapter_dir(run_or_adapter_dir)
    arch = check_supported(base_model_dir)
    config = model_args(model_config(base_model_dir))
    settings = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if settings.get("fine_tune_type", "lora") != "lora":
        raise ExportError(
            f"{adapter}: a {settings['fine_tune_type']} adapter; llama.cpp applies LoRA only "
            "(export the fused model instead)"
        )
    scale = float(settings["lora_parameters"]["scale"])
    tensors = float_tensors(adapter / "adapters.safetensors")
    modules = sorted({k.rsplit(".", 1)[0] for k in tensors})
    if not modules or any(f"{m}.lora_a" not in tensors or f"{m}.lora_b" not in tensors
                          for m in modules):  # fmt: skip
        raise ExportError(f"{adapter}: adapters.safetensors does not hold lora_a/lora_b pairs")
    names = _name_map(arch, config)
    writer = gguf.GGUFWriter(None, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    ranks = set()
    for module in modules:
        if "embed_tokens" in module:
            raise ExportError(f"{adapter}: a LoRA on the embedding; export the fused model")
        a, b = tensors[f"{module}.lora_a"], tensors[f"{module}.lora_b"]
        ranks.add(a.shape[1])
        name = gguf_name(names, f"{module}.weight")
        b_rows = to_llama_cpp_layout(b.T, f"{module}.weight", arch, config)
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a.T, dtype=np.float32))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b_rows, dtype=np.float32))
    if len(ranks) != 1:
        raise ExportError(f"{adapter}: layers of different ranks {sorted(ranks)}")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, scale * ranks.pop())
    with _atomic_file(out) as tmp:
        _write(writer, tmp)
    return Path(out)
