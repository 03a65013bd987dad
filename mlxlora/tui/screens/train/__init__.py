"""The Train tab: a new job's form with live validation and memory estimate."""

from mlxlora.tui.screens.train.tab import TrainTab

__all__ = ["TrainTab"]
