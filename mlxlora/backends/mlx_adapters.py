"""Adapter weight files (mlx-lm's adapters.safetensors) as float32 numpy arrays and back.

MLX reads what numpy cannot (bfloat16), so the files go through it; the arithmetic on them
(mlxlora.merge) is plain numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlxlora.backends.blas import preload_openblas

preload_openblas()  # must precede the first `import mlx.core`

import mlx.core as mx  # noqa: E402


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(path)).items()}


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    mx.save_safetensors(str(path), {k: mx.array(v.astype(np.float32)) for k, v in arrays.items()})
