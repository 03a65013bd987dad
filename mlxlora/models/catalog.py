"""Recommended hub models with what the memory estimate needs, so `mlxlora models` can say what
fits before anything is downloaded. Architecture numbers are those of each model's config.json;
download sizes are the approximate total of the MLX repo's weight files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GB = 1000**3


@dataclass(frozen=True)
class CatalogModel:
    id: str  # the MLX repo on the Hub: what `model:` takes
    hf_id: str  # the original weights
    params: int
    quant: str  # "4bit" | "bf16"
    download_bytes: int
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    head_dim: int
    note: str = ""

    def info(self) -> dict:
        """The same shape of dict as `model_info` returns, for the memory estimate."""
        d = asdict(self)
        bits = 4 if self.quant == "4bit" else None
        return {
            **{
                k: d[k]
                for k in (
                    "hidden_size",
                    "num_hidden_layers",
                    "vocab_size",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "intermediate_size",
                    "head_dim",
                    "params",
                )
            },
            "quantization": {"bits": bits, "group_size": 64} if bits else None,
            "weight_bytes": self.download_bytes,
        }


# fmt: off
# id, original, params, quant, download, hidden, layers, vocab, heads, kv heads, intermediate,
# head_dim, note
CATALOG: tuple[CatalogModel, ...] = (
    CatalogModel("mlx-community/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct",
                 134_515_008, "bf16", int(0.27 * GB), 576, 30, 49152, 9, 3, 1536, 64,
                 "smallest real chat model"),
    CatalogModel("mlx-community/SmolLM2-360M-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct",
                 361_821_120, "bf16", int(0.72 * GB), 960, 32, 49152, 15, 5, 2560, 64),
    CatalogModel("mlx-community/Qwen2.5-0.5B-Instruct-4bit", "Qwen/Qwen2.5-0.5B-Instruct",
                 494_032_768, "4bit", int(0.28 * GB), 896, 24, 151936, 14, 2, 4864, 64,
                 "good first model; Japanese too"),
    CatalogModel("mlx-community/Qwen2.5-1.5B-Instruct-4bit", "Qwen/Qwen2.5-1.5B-Instruct",
                 1_543_714_304, "4bit", int(0.87 * GB), 1536, 28, 151936, 12, 2, 8960, 128),
    CatalogModel("mlx-community/Llama-3.2-1B-Instruct-4bit", "meta-llama/Llama-3.2-1B-Instruct",
                 1_235_814_400, "4bit", int(0.70 * GB), 2048, 16, 128256, 32, 8, 8192, 64),
    CatalogModel("mlx-community/gemma-2-2b-it-4bit", "google/gemma-2-2b-it",
                 2_614_341_888, "4bit", int(1.49 * GB), 2304, 26, 256000, 8, 4, 9216, 256),
    CatalogModel("mlx-community/Llama-3.2-3B-Instruct-4bit", "meta-llama/Llama-3.2-3B-Instruct",
                 3_212_749_824, "4bit", int(1.81 * GB), 3072, 28, 128256, 24, 8, 8192, 128),
    CatalogModel("mlx-community/Mistral-7B-Instruct-v0.3-4bit",
                 "mistralai/Mistral-7B-Instruct-v0.3",
                 7_248_023_552, "4bit", int(4.08 * GB), 4096, 32, 32768, 32, 8, 14336, 128),
    CatalogModel("mlx-community/Qwen2.5-7B-Instruct-4bit", "Qwen/Qwen2.5-7B-Instruct",
                 7_615_616_512, "4bit", int(4.28 * GB), 3584, 28, 152064, 28, 4, 18944, 128),
)
# fmt: on


def find(model_id: str) -> CatalogModel | None:
    """The catalog entry for an MLX or original repo id (case-insensitive), if any."""
    key = model_id.lower()
    return next((m for m in CATALOG if key in (m.id.lower(), m.hf_id.lower())), None)
