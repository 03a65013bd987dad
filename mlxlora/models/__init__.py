"""Models: the one resolver from a reference to a local HF-format directory, the builtin tiny
model for offline use, and a catalog of recommended hub models with their memory needs.

Imports no mlx or torch.
"""

from mlxlora.models.info import model_info
from mlxlora.models.resolve import resolve_model

__all__ = ["model_info", "resolve_model"]
