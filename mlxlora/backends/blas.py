"""Use OpenBLAS for MLX's CPU matmuls where the machine has it.

MLX's Linux CPU wheel ships the reference BLAS (about 5 GFLOP/s for a float32 matmul on two
cores); Debian's `libopenblas0-pthread` does the same work about 30x faster. Loading it with
RTLD_GLOBAL before `mlx.core` is imported makes MLX's BLAS symbols resolve to it, so nobody has
to set LD_PRELOAD. No well-kept library does this, hence the few lines here.
"""

from __future__ import annotations

import ctypes
import glob
import sys

OPENBLAS_CANDIDATES = (
    "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/*-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas*.so.0",
)

_loaded: str | None = None


def find_openblas() -> str | None:
    for pattern in OPENBLAS_CANDIDATES:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def preload_openblas() -> str | None:
    """Load OpenBLAS globally (Linux only, before mlx). Returns its path, or None."""
    global _loaded
    if _loaded or not sys.platform.startswith("linux"):
        return _loaded
    if "mlx.core" in sys.modules:  # too late to take effect in this process
        return blas_in_use()
    path = find_openblas()
    if path:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        _loaded = path
    return _loaded


def blas_in_use() -> str:
    """Which BLAS this process has mapped: 'openblas (path)', 'accelerate' or 'reference'."""
    if sys.platform == "darwin":
        return "Accelerate"
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            maps = f.read()
    except OSError:
        return "unknown"
    for line in maps.splitlines():
        if "libopenblas" in line and "scipy" not in line and "numpy" not in line:
            return f"OpenBLAS ({line.split()[-1]})"
    return "reference BLAS (slow: apt-get install libopenblas0-pthread)"
