"""Which backend `backend: auto | mlx | torch` gives, and the one-line error for a missing one."""

from __future__ import annotations

import pytest

from mlxlora.backends import select
from mlxlora.errors import BackendUnavailable


@pytest.mark.parametrize(
    ("apple", "cuda", "mlx", "torch", "requested", "expected"),
    [
        (True, False, True, True, "auto", "mlx"),  # Apple Silicon: Metal
        (False, True, True, True, "auto", "torch"),  # CUDA and no Metal: torch
        (False, False, True, True, "auto", "mlx"),  # CPU only: MLX's CPU build first
        (False, False, False, True, "auto", "torch"),
        (False, False, True, True, "torch", "torch"),  # forced, on a CPU too
        (True, False, True, True, "torch", "torch"),
    ],
)
def test_resolve_name(monkeypatch, apple, cuda, mlx, torch, requested, expected):
    monkeypatch.setattr(select, "apple_silicon", lambda: apple)
    monkeypatch.setattr(select, "cuda_present", lambda: cuda)
    monkeypatch.setattr(select, "mlx_available", lambda: mlx)
    monkeypatch.setattr(select, "torch_available", lambda: torch)
    assert select.resolve_name(requested) == expected


def test_a_missing_backend_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(select, "torch_available", lambda: False)
    with pytest.raises(BackendUnavailable, match=r"pip install 'mlxlora\[torch\]'"):
        select.resolve_name("torch")
