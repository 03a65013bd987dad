"""Turn a finished run into something other tools load: a fused HF-format model directory
(`fuse.fuse_run`), a GGUF model or a GGUF LoRA adapter for llama.cpp / Ollama (`gguf_writer`).

Imports no mlx or torch at module level: the MLX work lives in `mlxlora.backends.mlx_fuse`
and is imported inside the functions that need it.
"""
